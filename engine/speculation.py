"""Speculative decoding with n-gram drafts (prompt lookup), checked in the decode step itself.

A decoding request whose last tokens occurred earlier in its prompt or output (an agent quoting a file,
a tool result, its own earlier call, code being rewritten) is likely to go on as it went on then. The
scheduler asks `NgramProposer` for up to k such tokens; the step computes the request's last token and
the k drafts in one forward pass, as a prefill chunk of k + 1 tokens; the runner samples a token at every
one of those positions as if the drafts before it were already accepted; `accepted_tokens` keeps them up
to the first that differs from its draft. One pass then yields 1 to k + 1 tokens.

Why the output is the one plain decoding gives: the token at position j is sampled from exactly the
distribution plain decoding would use there, given the drafts before it (penalties and `min_tokens` see
them too), with the noise of the output index it would take (a seeded request's generator is seeded by
that index, engine/model/sampler.py). For a draft that is a single proposed token, "accept it when the
sample equals it, else keep the sample" is speculative sampling's rule (accept with probability p(draft),
else draw from p without the draft), so greedy and seeded requests give the same tokens with or without
speculation, and unseeded ones the same distribution. Rejected drafts' KV is simply overwritten later: the
block manager publishes a block to the prefix cache only once every token in it is accepted. An answer
held to a grammar keeps only the drafts its grammar allows, and each of its rows is masked as the grammar
stands after the drafts before it (engine/structured_output.py, `mask_disallowed`).

A draft model's drafts for a sampled request come with the distributions they were drawn from
(`DraftProposal`); under rejection sampling (SpeculativeConfig.acceptance_method) the runner's token at
such a row is the draft where speculative sampling keeps it and a draw from the residual where not
(engine/model/rejection_sampler.py), never the draft then, so `accepted_tokens` applies as it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.config import SpeculativeConfig
from engine.sequence import Sequence

if TYPE_CHECKING:
    import torch


class TokenArray:
    """A sequence's token ids as a growing numpy array, kept in step with `Sequence.token_ids`
    (which only grows): each lookup converts only the tokens added since the last one."""

    __slots__ = ("buffer", "size")

    def __init__(self) -> None:
        self.buffer = np.empty(256, dtype=np.int64)
        self.size = 0

    def synced(self, token_ids: list[int]) -> np.ndarray:
        new = len(token_ids) - self.size
        if new > 0:
            if len(token_ids) > len(self.buffer):
                grown = np.empty(max(len(token_ids), 2 * len(self.buffer)), dtype=np.int64)
                grown[: self.size] = self.buffer[: self.size]
                self.buffer = grown
            self.buffer[self.size: len(token_ids)] = token_ids[self.size:]
            self.size = len(token_ids)
        return self.buffer[: self.size]


def lookup_draft(tokens: np.ndarray, k: int, n_min: int, n_max: int) -> list[int]:
    """Up to `k` tokens that followed the latest earlier occurrence of the longest suffix of `tokens`
    of `n_max` down to `n_min` tokens; [] when none occurred.

    One vectorised pass finds the earlier places of the last token; the longer suffixes only filter
    those few candidates, so a lookup costs one comparison over the sequence."""
    length = len(tokens)
    if length <= n_min or k < 1:
        return []
    # e: the last index of an earlier window (e <= length - 2, so something follows it)
    ends = np.flatnonzero(tokens[: length - 1] == tokens[length - 1])
    best = -1
    for n in range(1, min(n_max, length - 1) + 1):
        if n > 1:
            ends = ends[ends >= n - 1]
            ends = ends[tokens[ends - (n - 1)] == tokens[length - n]]
        if not len(ends):
            break
        if n >= n_min:
            best = int(ends[-1])  # the latest occurrence of the longest suffix matched so far
    if best < 0:
        return []
    return tokens[best + 1: best + 1 + k].tolist()


class NgramProposer:
    """The scheduler's drafter (`engine.scheduler.Scheduler`): prompt-lookup drafts for a decoding request."""

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config

    def propose(self, requests: list[tuple[Sequence, int]]) -> list[list[int]]:
        """Drafts for each (decoding request, the most tokens it may take: the room its budget and limits
        leave), in order."""
        return [self._propose(seq, room) for seq, room in requests]

    def forget(self, seq: Sequence) -> None:
        """Nothing to free: a lookup keeps its state on the sequence."""

    def _propose(self, seq: Sequence, max_tokens: int) -> list[int]:
        k = min(self.config.num_speculative_tokens, max_tokens)
        if k < 1:
            return []
        if seq.lookup is None:
            seq.lookup = TokenArray()
        return lookup_draft(seq.lookup.synced(seq.token_ids), k, self.config.prompt_lookup_min,
                            self.config.prompt_lookup_max)


def accepted_tokens(drafts: list[int], sampled: list[int]) -> list[int]:
    """The tokens a verified step yields: `sampled[j]` was sampled after the drafts before j; each is
    kept while the one before it agreed with its draft. 1 to len(drafts) + 1 tokens."""
    assert len(sampled) == len(drafts) + 1
    kept = []
    for draft, token in zip(drafts, sampled, strict=False):
        kept.append(token)
        if token != draft:
            return kept
    kept.append(sampled[-1])
    return kept


@dataclass
class SpeculationCounters:
    """Speculative decoding so far (vLLM's spec_decode counters): decode steps that carried drafts, the
    draft tokens checked, and those accepted. Accepted / draft tokens is the acceptance rate; a drafted
    step yields 1 + accepted / drafted steps tokens on average."""

    drafted_steps: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    draft_passes: int = 0  # forward passes of a draft model (engine/draft_model.py), each over every drafting request


@dataclass
class DraftProposal:
    """A draft model's drafts for a sampled request checked by rejection sampling (engine/draft_model.py):
    the tokens, the distribution each was drawn from, and the sequence length they follow. Kept on the
    sequence until a step samples it (engine/step_rows.py `proposed_drafts`)."""

    position: int
    tokens: list[int]
    probs: torch.Tensor  # [len(tokens), vocab], on the runner's device
