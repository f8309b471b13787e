from __future__ import annotations

from typing import Protocol

from engine.batch import ScheduledBatch


class ModelRunner(Protocol):
    """Computes one engine step. The torch runner runs a real model on a paged KV cache of
    `num_blocks` blocks of `block_size` tokens; the simulated runner only advances a clock.

    `execute` computes KV for every scheduled token (writing it into the blocks of each sequence's
    `block_table`, at positions `num_computed_tokens .. num_computed_tokens + n - 1`) and returns one
    sampled token id per sequence for which `batch.samples(i)` is true, in batch order. It must not
    mutate the sequences: the engine applies the results.

    Before the forward pass, `execute` performs `batch.kv_transfers` in order: block copies between the
    KV cache, its host tier of `num_host_blocks` blocks (engine/host_cache.py) and its disk tier of
    `num_disk_blocks` slots (engine/disk_cache.py); the simulated runner prices them. A runner without
    `num_host_blocks` has no host tier. One with a disk tier also keeps its files (`disk_entries`,
    `persist_disk`, `flush_disk`: engine/disk_store.py) and reads slots ahead of the step that loads them
    (`read_ahead`, `read_ahead_done`, `disk_read_ahead_blocks`: engine/disk_tier.py).

    A runner with `verifies_drafts` (both runners) may be given draft tokens
    (`batch.draft_token_ids`, engine/speculation.py): they are that sequence's input after its last
    token, and it returns one more sampled token after each, right after the sequence's own.

    A runner that computes log-probabilities (the torch runner) also has `step_logprobs`: after each
    `execute`, the TokenLogprobs of the sampled rows whose params asked, keyed by their place among
    the sampled rows. One without it serves no `logprobs` (the engine refuses such requests).
    """

    eos_token_ids: tuple[int, ...]

    def execute(self, batch: ScheduledBatch) -> list[int]: ...
