"""What a request's sampling parameters do to its logits before a token is chosen, in vLLM's order:
`allowed_token_ids` and `bad_words` mask tokens (engine/banned_tokens.py), `min_tokens` masks the stop
tokens, `logit_bias` adds to chosen tokens, then the penalties:

- repetition penalty (vLLM's and Hugging Face's, CTRL's rule): a token seen in the prompt or the output
  has its logit divided by the penalty when positive, multiplied when negative;
- presence and frequency penalties (OpenAI): logit[t] -= frequency * count[t] + presence * (count[t] > 0),
  counting the tokens generated so far.

Rows that ask for none of this cost nothing, and a batch where none does returns its logits untouched.
The rest is a few batched tensor operations per step, whatever the number of rows asking, on the
tokens concerned only: the penalties touch the tokens a row has seen, never the whole vocabulary.
Log-probabilities are taken from the logits before this (vLLM's default `raw_logprobs`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from itertools import chain
from typing import Protocol

import torch

from engine.banned_tokens import banned_next
from engine.sampling_params import SamplingParams


class History(Protocol):
    """What processing reads of a sequence (engine.sequence.Sequence is one)."""

    params: SamplingParams
    token_ids: list[int]
    num_prompt_tokens: int


def needs_processing(row: History) -> bool:
    p = row.params
    return bool(p.logit_bias) or p.penalized or p.masks_tokens or \
        len(row.token_ids) - row.num_prompt_tokens < p.min_tokens


def process_logits(logits: torch.Tensor, rows: Sequence[History], eos_token_ids: tuple[int, ...]) -> torch.Tensor:
    """logits: [len(rows), vocab]. A new tensor when any row is processed, else `logits` itself."""
    active = [i for i, row in enumerate(rows) if needs_processing(row)]
    if not active:
        return logits
    logits = logits.clone()
    vocab = logits.shape[1]
    masking = [i for i in active if rows[i].params.masks_tokens]
    _keep_allowed(logits, masking, rows)
    # The allowed tokens before bad words and min_tokens take their share: the fallback of a row they
    # would leave with nothing to sample (a bad word completed at every allowed token), which would then
    # draw a token outside allowed_token_ids. Requests that do so from their first step are refused.
    allowed_only = logits[masking] if masking else None
    _ban_bad_words(logits, masking, rows)
    masked: list[tuple[int, list[int]]] = []
    biased: list[tuple[int, tuple[int, float]]] = []
    for i in active:
        row = rows[i]
        p = row.params
        if len(row.token_ids) - row.num_prompt_tokens < p.min_tokens:
            masked.append((i, [t for t in (*p.stop_token_ids, *(() if p.ignore_eos else eos_token_ids)) if t < vocab]))
        if p.logit_bias:
            biased.append((i, p.logit_bias))
    if masked:
        logits[_rows_of(masked), list(chain.from_iterable(ids for _, ids in masked))] = -torch.inf
    if biased:
        ids, values = zip(*(_bias(bias, vocab) for _, bias in biased), strict=True)
        row_index = _rows_of([(i, ids[k]) for k, (i, _) in enumerate(biased)])
        logits.index_put_((row_index, torch.cat(ids).to(logits.device)),
                          torch.cat(values).to(logits.device, logits.dtype), accumulate=True)
    penalized = [i for i in active if rows[i].params.penalized]
    if penalized:
        _penalize(logits, penalized, rows)
    if allowed_only is not None:
        left = logits[masking]  # without a host sync: a row keeps its logits where one is still finite
        logits[masking] = torch.where(torch.isfinite(left).any(dim=1, keepdim=True), left, allowed_only)
    return logits


def _keep_allowed(logits: torch.Tensor, masked: list[int], rows: Sequence[History]) -> None:
    """In place: -inf for the tokens outside a row's allowed_token_ids."""
    vocab = logits.shape[1]
    for i in masked:
        p = rows[i].params
        if p.allowed_token_ids is not None:
            allowed = _allowed(p.allowed_token_ids, vocab).to(logits.device)
            kept = logits[i, allowed]
            logits[i] = -torch.inf
            logits[i, allowed] = kept


def _ban_bad_words(logits: torch.Tensor, masked: list[int], rows: Sequence[History]) -> None:
    """In place: -inf for the tokens a row's bad words ban next."""
    vocab = logits.shape[1]
    for i in masked:
        p = rows[i].params
        if p.bad_words_token_ids:
            banned = [t for t in banned_next(p.bad_words_token_ids, rows[i].token_ids[rows[i].num_prompt_tokens:])
                      if t < vocab]
            if banned:
                logits[i, banned] = -torch.inf


@lru_cache(maxsize=256)
def _allowed(allowed_token_ids: tuple[int, ...], vocab: int) -> torch.Tensor:
    return torch.tensor([t for t in allowed_token_ids if t < vocab], dtype=torch.long)


def _rows_of(entries: Sequence[tuple[int, Sequence[int]]]) -> torch.Tensor:
    """The row index of each flattened entry: row i repeated once per item of its list."""
    return torch.tensor([i for i, items in entries for _ in range(len(items))], dtype=torch.long)


@lru_cache(maxsize=1024)
def _bias(logit_bias: tuple[tuple[int, float], ...], vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A request's bias as tensors, made once: every step of every request with the same bias reuses them."""
    kept = [(t, b) for t, b in logit_bias if t < vocab]
    return (torch.tensor([t for t, _ in kept], dtype=torch.long), torch.tensor([b for _, b in kept]))


def _seen(row: History) -> list[int]:
    """The tokens the repetition penalty counts: a prompt sent as embeddings has only placeholder ids
    (engine/prompt_embeds.py), so only its output's."""
    return row.token_ids[row.num_prompt_tokens:] if getattr(row, "prompt_embeds", None) is not None else row.token_ids


def _penalize(logits: torch.Tensor, penalized: list[int], rows: Sequence[History]) -> None:
    """In place, in vLLM's order: the repetition penalty, then frequency and presence. Only the tokens a
    row has seen are touched: gathered, changed and written back, never a vocab-wide pass per row."""
    vocab, device = logits.shape[1], logits.device
    repeated = [(i, rows[i].params.repetition_penalty, {t for t in _seen(rows[i]) if t < vocab})
                for i in penalized if rows[i].params.repetition_penalty != 1.0]
    if repeated:
        index = (_rows_of([(i, seen) for i, _, seen in repeated]).to(device),
                 torch.tensor([t for _, _, seen in repeated for t in seen], dtype=torch.long, device=device))
        penalty = torch.tensor([r for _, r, seen in repeated for _ in seen], device=device, dtype=logits.dtype)
        values = logits[index]
        logits[index] = torch.where(values > 0, values / penalty, values * penalty)
    counted = []
    for i in penalized:
        p = rows[i].params
        if p.frequency_penalty or p.presence_penalty:
            counts = Counter(t for t in rows[i].token_ids[rows[i].num_prompt_tokens:] if t < vocab)
            counted.append((i, p, counts))
    if counted:
        index = (_rows_of([(i, counts) for i, _, counts in counted]).to(device),
                 torch.tensor([t for _, _, counts in counted for t in counts], dtype=torch.long, device=device))
        delta = torch.tensor([p.frequency_penalty * n + p.presence_penalty for _, p, counts in counted
                              for n in counts.values()], device=device, dtype=logits.dtype)
        logits.index_put_(index, -delta, accumulate=True)
