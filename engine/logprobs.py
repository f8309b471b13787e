"""Log-probabilities of sampled tokens (OpenAI's `logprobs`): the chosen token's and the `k` likeliest
alternatives', from the model's own distribution (the logits before temperature and top-p, as vLLM's
default `raw_logprobs`), computed only for the rows of a step that asked for them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the gateway reads these records without loading torch
    import torch


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    logprob: float  # the sampled token's
    top_ids: tuple[int, ...]  # the likeliest tokens, most likely first
    top_logprobs: tuple[float, ...]


def token_logprobs(logits: torch.Tensor, tokens: list[int], top_k: list[int]) -> list[TokenLogprobs]:
    """logits: [rows, vocab] of the rows that asked; tokens: each row's sampled token; top_k: how many
    alternatives each row wants (0 to MAX_TOP_LOGPROBS)."""
    import torch

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(1, torch.tensor(tokens, device=logits.device)[:, None]).squeeze(1).tolist()
    most = max(top_k)
    if most:
        top_values, top_indices = logprobs.topk(most, dim=-1)
        values, indices = top_values.tolist(), top_indices.tolist()
    else:
        values = indices = [[] for _ in tokens]
    return [TokenLogprobs(lp, tuple(ids[:k]), tuple(vals[:k]))
            for lp, ids, vals, k in zip(chosen, indices, values, top_k, strict=True)]
