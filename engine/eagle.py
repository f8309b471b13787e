"""Speculative decoding with an EAGLE head (speculative_config method "eagle", as vLLM's): a one-layer draft
that reads the target's own features (engine/eagle_head.py) proposes each decoding request's next k tokens,
checked in the decode step as any drafts are (engine/speculation.py; greedy, coupled or rejection sampling).

It is engine/draft_model.py's proposer with another runner: the head keeps its own paged KV cache and block
manager (prefix caching included), a shadow sequence a request, and proposes for every decoding request in
one batched pass per draft position. Two things differ. The shadow is the request's tokens shifted by one:
the head's row at position j reads token j + 1 and the target's feature at j, so it exists once token j + 1
does; its prefix-cache hashes start from the request's first token (and the request's own seed: a LoRA's
features differ), which its rows depend on through the features. And each row needs the target's feature at
its position: the target runner hands every step's last hidden states to `TargetFeatures.record` (its
`hidden_states_listener`), which keeps, per request, the rows the head has not read yet, normed once; the
rows of drafts the step rejected are cut when the next proposal starts. A draft pass's row reads the head's
own output at the row before (EAGLE's autoregression over features).

Where the target read a prefix from its prefix cache that the head's cache no longer holds (their caches
evict apart), the target computed no features for it: the head reads zeros there, which makes its drafts
worse for that request and changes nothing else (every draft is checked)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.batch import ScheduledBatch
from engine.config import SpeculativeConfig
from engine.draft_model import DraftModelProposer
from engine.eagle_head import EagleRunner, load_eagle_head
from engine.sequence import Sequence
from engine.speculation import SpeculationCounters

if TYPE_CHECKING:
    from engine.torch_runner import TorchModelRunner


@dataclass
class TargetFeatures:
    """The target's features (its last hidden states after its final norm) by request: chunks of
    (first position, [rows, hidden]) in position order, the positions the head has yet to read."""

    target: TorchModelRunner
    chunks: dict[str, list[tuple[int, torch.Tensor]]] = field(default_factory=dict)

    def record(self, batch: ScheduledBatch, hidden: torch.Tensor) -> None:
        """A target step's rows: each sequence's from the position it started at (the rows of an earlier
        step from there on, rejected drafts', are replaced)."""
        normed = self.features_of(hidden)
        offset = 0
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            start = seq.num_computed_tokens
            self.trim(seq.request_id, start)
            self.chunks.setdefault(seq.request_id, []).append((start, normed[offset: offset + n].clone()))
            offset += n

    def features_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """[T, hidden] features of a step's last hidden states: after the target's final norm."""
        with torch.inference_mode():
            return self.target.model.model.norm(hidden)

    def trim(self, request_id: str, end: int) -> None:
        """Drop the rows at `end` and after (not computed for the tokens the request kept)."""
        kept = []
        for start, rows in self.chunks.get(request_id, []):
            if start < end:
                kept.append((start, rows[: end - start]))
        if request_id in self.chunks:
            self.chunks[request_id] = kept

    def prune(self, request_id: str, start: int) -> None:
        """Drop the rows before `start`: the head has read them for good."""
        kept = [(max(s, start), rows[max(0, start - s):]) for s, rows in self.chunks.get(request_id, [])
                if s + len(rows) > start]
        if request_id in self.chunks:
            self.chunks[request_id] = kept

    def drop(self, request_id: str) -> None:
        self.chunks.pop(request_id, None)

    def rows(self, seq: Sequence, start: int, n: int, carried: torch.Tensor | None) -> torch.Tensor:
        """[n, hidden] for positions [start, start + n): the target's rows; past the last of them, the head's
        output at the row before (`carried`, a draft's position); zeros where there is neither."""
        out = torch.zeros(n, self.target.config.hidden_size, device=self.target.device, dtype=self.target.dtype)
        end = start
        for first, rows in self.chunks.get(seq.request_id, []):
            lo, hi = max(first, start), min(first + len(rows), start + n)
            if lo < hi:
                out[lo - start: hi - start] = rows[lo - first: hi - first]
            end = max(end, first + len(rows))
        if carried is not None and end < start + n:
            out[max(end, start) - start:] = carried
        return out


class EagleProposer(DraftModelProposer):
    """The scheduler's drafter over an EAGLE head (engine/scheduler.py `Drafter`)."""

    shift = 1  # the shadow leaves the request's first token out: its row j reads token j + 1
    reads_target_features = True  # its KV comes from the target's weights too (engine/weight_updates.py)

    def __init__(self, runner: EagleRunner, config: SpeculativeConfig, num_blocks: int, block_size: int,
                 enable_prefix_caching: bool = True, counters: SpeculationCounters | None = None,
                 max_catch_up: int = 512) -> None:
        super().__init__(runner, config, num_blocks, block_size, enable_prefix_caching,  # type: ignore[arg-type]
                         counters, max_catch_up)
        self.features = self.features_for(runner)
        runner.feature_rows = self.features.rows
        runner.target.hidden_states_listener = self.features.record

    def features_for(self, runner: EagleRunner) -> TargetFeatures:
        return TargetFeatures(runner.target)

    @classmethod
    def from_target(cls, target: TorchModelRunner, config: SpeculativeConfig, num_blocks: int, block_size: int,
                    enable_prefix_caching: bool = True, counters: SpeculationCounters | None = None,
                    max_catch_up: int = 512) -> EagleProposer:
        """An EAGLE head's proposer for `target`; ValueError where the head does not fit it."""
        assert config.model is not None
        head = load_eagle_head(Path(config.model), target)
        return cls(EagleRunner(head, target, num_blocks, block_size, Path(config.model)), config, num_blocks, block_size,
                   enable_prefix_caching, counters, max_catch_up)

    def forget(self, seq: Sequence) -> None:
        super().forget(seq)
        self.features.drop(seq.request_id)

    def _shadow(self, seq: Sequence) -> Sequence:
        shadow = super()._shadow(seq)
        shadow.hash_seed = hash(("eagle", seq.hash_seed, seq.token_ids[0]))
        return shadow

    def propose(self, requests: list[tuple[Sequence, int]]) -> list[list[int]]:
        for seq, _ in requests:  # the rows past the tokens each request kept were its rejected drafts'
            self.features.trim(seq.request_id, seq.num_computed_tokens)
        self.runner.last_output = {}  # type: ignore[attr-defined]
        drafts = super().propose(requests)
        for seq, _ in requests:
            if (entry := self.shadows.get(seq.request_id)) is not None:
                self.features.prune(seq.request_id, entry[1].num_computed_tokens)
        return drafts
