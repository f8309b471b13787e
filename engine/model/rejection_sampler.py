"""Speculative sampling's check of a drafted token (Leviathan et al. 2023; Chen et al. 2023; vLLM's
rejection sampler): a draft x drawn from the draft model's distribution q is kept with probability
min(1, p(x) / q(x)), p being the target's distribution at that place; otherwise the token is drawn from
the residual norm(max(0, p - q)). What comes out is distributed as p exactly, and x is kept with
probability sum_x min(p(x), q(x)) = 1 - TV(p, q), the most any rule that keeps p's distribution can keep.

p and q are the processed distributions (temperature, top-k/top-p/min-p, penalties, `logit_bias`, masks:
engine/model/sampler.py `distributions`), normalized. The caller draws the randomness, so a seeded
request's check is reproducible (engine/model/sampler.py `row_uniforms`)."""

from __future__ import annotations

import torch


def rejection_sample(target: torch.Tensor, draft: torch.Tensor, draft_tokens: torch.Tensor,
                     uniform: torch.Tensor) -> torch.Tensor:
    """target, draft: [rows, vocab] distributions (each row sums to 1); draft_tokens: [rows], each drawn
    from its `draft` row; uniform: [rows, vocab + 1] in [0, 1): column 0 for the accept test, the rest
    the exponential race (argmax of r / Exp(1), a draw from r) over the residual. Returns [rows]: the draft
    where it holds, else the residual's draw, which is never the draft (its mass there is 0)."""
    rows = torch.arange(len(draft_tokens), device=target.device)
    p = target[rows, draft_tokens]
    q = draft[rows, draft_tokens]
    accepted = uniform[:, 0] * q < p  # u < p / q without dividing by q; p >= q always holds
    residual = (target - draft).clamp_(min=0)
    # All zero only where p == q to the last bit, and then every draft holds: p keeps the draw defined.
    residual = torch.where(residual.sum(dim=-1, keepdim=True) > 0, residual, target)
    recovered = (residual / uniform[:, 1:].log().neg()).argmax(dim=-1)
    return torch.where(accepted, draft_tokens, recovered)
