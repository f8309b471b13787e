"""Fusing pure-decode steps for runners that can run several at once (the simulated runner).

Between outside events (arrivals, pin deadlines) nothing a scheduler decides can change while every
running request is decoding and the free blocks cover their growth: no request finishes, no pin
gives way, and a waiting request that could not be admitted still cannot (memory only shrinks). Running those k steps in one call gives exactly the result of k single
steps (tests compare both) at a fraction of the Python cost per simulated token."""

from __future__ import annotations

from typing import Protocol

from engine.batch import ScheduledBatch
from engine.config import EngineConfig


class FusingRunner(Protocol):
    def plan_decode_steps(self, batch: ScheduledBatch, max_steps: int, horizon: float) -> int:
        """How many of up to `max_steps` decode steps start before `horizon` (at least one)."""
        ...

    def execute_decode_steps(self, batch: ScheduledBatch, steps: int) -> list[list[int]]:
        """Run `steps` decode steps; return each sequence's new tokens."""
        ...


def _blocks_needed(batch: ScheduledBatch, block_size: int, steps: int) -> int:
    # After `steps` steps a sequence of T tokens has computed T - 1 + steps of them.
    return sum(max(0, -(-(len(seq.token_ids) - 1 + steps) // block_size) - len(seq.block_table))
               for seq in batch.seqs)


def max_fused_steps(batch: ScheduledBatch, config: EngineConfig, free_blocks: int) -> int:
    """How many decode steps the batch can take before something the scheduler cares about happens:
    a request finishing, or KV blocks running short of what is free now (no pin may give way)."""
    steps = 1 << 30
    for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True):
        num_tokens = len(seq.token_ids)
        if num_new != 1 or seq.num_computed_tokens < seq.num_prompt_tokens or seq.params.stop_token_ids \
                or seq.thinking is not None:
            return 1
        steps = min(steps, seq.params.max_tokens - (num_tokens - seq.num_prompt_tokens),  # may finish on the last
                    config.max_model_len - num_tokens)
    low, high = 1, max(1, steps)
    while low < high:  # the most steps whose new blocks fit in the free ones
        middle = (low + high + 1) // 2
        if _blocks_needed(batch, config.block_size, middle) <= free_blocks:
            low = middle
        else:
            high = middle - 1
    return low
