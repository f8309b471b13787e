"""Which rows of a step's flat batch do what beyond computing KV: the positions whose logits score a
prompt (`prompt_logprobs`), and the sampled rows, one per sampling sequence and one after each of its
draft tokens (engine/speculation.py), with the history logits processing reads at each and the draft
model's token each checks by rejection sampling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.batch import ScheduledBatch
from engine.model.logits_processors import needs_processing
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

if TYPE_CHECKING:
    import torch

    from engine.logprobs import TokenLogprobs
    from engine.model.sampler import Proposal

# Scored prompt tokens whose vocab-sized logits exist at once (a 128k vocabulary: 128 MiB of float32).
_SCORE_ROWS_PER_SLICE = 256


@dataclass(frozen=True)
class ScoredPrompt:
    """Prompt tokens one sequence scores in a step: the batch rows whose logits predict them."""

    batch_index: int
    rows: list[int]  # flat token indices in the step's input
    targets: list[int]  # the prompt token each row predicts
    top_k: int


def scored_prompt_positions(batch: ScheduledBatch) -> list[ScoredPrompt]:
    """Position p's logits predict prompt token p + 1: for each sequence that scores its prompt, the
    positions of this step's chunk whose token that has not been scored yet (a recompute after
    preemption scores nothing twice)."""
    scored, flat_start = [], 0
    for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
        if seq.needs_prompt_logits:
            start = seq.num_computed_tokens
            assert len(seq.prompt_logprobs) >= start, "a prompt being scored is computed from its start"
            first, last = max(start, len(seq.prompt_logprobs)), min(start + n, seq.num_prompt_tokens - 1)
            if first < last:
                scored.append(ScoredPrompt(i, [flat_start + p - start for p in range(first, last)],
                                           seq.token_ids[first + 1: last + 1], seq.params.prompt_logprobs or 0))
        flat_start += n
    return scored


@dataclass(frozen=True)
class DraftedRow:
    """What logits processing reads of a sequence at a sampled row after `j` of its drafts (as if they
    were accepted): its tokens with those drafts, so penalties and `min_tokens` see them."""

    params: SamplingParams
    token_ids: list[int]
    num_prompt_tokens: int
    grammar: None = None  # a grammar's masks for these rows come with the sequence's own row's


def sampled_rows(batch: ScheduledBatch) -> tuple[list[Sequence | DraftedRow], list[int], list[list[int]]]:
    """Each sampled row's history, the number of tokens it would follow, and the drafts whose rows
    follow it: one row per sampling sequence, then one after each of its drafts (engine/speculation.py)."""
    rows: list[Sequence | DraftedRow] = []
    generated: list[int] = []
    drafts_after: list[list[int]] = []
    for i in batch.sampling_indices:
        seq = batch.seqs[i]
        rows.append(seq)
        generated.append(seq.num_output_tokens)
        drafts = batch.draft_token_ids[i]
        drafts_after += [drafts] + [[]] * len(drafts)
        processed = needs_processing(seq)  # else no row of it is processed: its tokens need no copy
        for j in range(1, len(drafts) + 1):
            rows.append(DraftedRow(seq.params, seq.token_ids + drafts[:j] if processed else seq.token_ids,
                                   seq.num_prompt_tokens))
            generated.append(seq.num_output_tokens + j)
    return rows, generated, drafts_after


def proposed_drafts(batch: ScheduledBatch) -> list[Proposal | None] | None:
    """Each sampled row's (draft token, its distribution) to check by rejection sampling, in
    `sampled_rows`' order; None when no sequence has a proposal (engine/speculation.py `DraftProposal`).

    Row j of a sequence checks its proposal's j-th token: its drafts, and then, at the row that samples
    after them, the first draft the step did not take, if any. What the scheduler cuts (a grammar's first
    disallowed draft, the step's budget, blocks) depends on the drafts; checking that draft where a fresh
    draw would otherwise be made keeps every place the rule's own, so the output is still the target's."""
    if not any(batch.seqs[i].draft_proposal is not None for i in batch.sampling_indices):
        return None
    proposals: list[Proposal | None] = []
    for i in batch.sampling_indices:
        seq, drafts = batch.seqs[i], batch.draft_token_ids[i]
        proposal = seq.draft_proposal
        if proposal is not None and proposal.position != seq.num_tokens:
            proposal = None  # drafted after other tokens (not expected: a sampling step clears it)
        assert proposal is None or proposal.tokens[: len(drafts)] == drafts, "drafts are a prefix of the proposal"
        for j in range(len(drafts) + 1):
            checked = proposal is not None and j < len(proposal.tokens)
            proposals.append((proposal.tokens[j], proposal.probs[j]) if proposal is not None and checked else None)
    return proposals


def score_prompts(compute_logits: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor,
                  scored: list[ScoredPrompt]) -> dict[int, list[TokenLogprobs]]:
    """Log-probabilities of the prompt tokens each scored sequence computes this step (by batch index), the
    vocab-sized logits made a slice of rows at a time so a long prompt does not hold them all."""
    import torch

    from engine.logprobs import token_logprobs

    rows = [row for s in scored for row in s.rows]
    targets = [t for s in scored for t in s.targets]
    top_k = [s.top_k for s in scored for _ in s.rows]
    results: list[TokenLogprobs] = []
    for start in range(0, len(rows), _SCORE_ROWS_PER_SLICE):
        end = start + _SCORE_ROWS_PER_SLICE
        logits = compute_logits(hidden[torch.tensor(rows[start:end], device=hidden.device)])
        results += token_logprobs(logits, targets[start:end], top_k[start:end])
    out, at = {}, 0
    for s in scored:
        out[s.batch_index] = results[at: at + len(s.rows)]
        at += len(s.rows)
    return out
