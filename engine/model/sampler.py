"""Token sampling from a batch of logits, each row with its own SamplingParams: greedy at
temperature 0, otherwise temperature + top-p (nucleus).

Sampling uses the exponential race (argmax of p / Exp(1) noise, equivalent to drawing from p), so
a seeded request only needs its own noise row: drawn from a generator seeded with (seed, number of
tokens generated so far), which makes it reproducible whatever else shares the batch and across
preemption/recompute."""

from __future__ import annotations

import torch

from engine.sampling_params import SamplingParams

_SEED_STRIDE = 1_000_003  # spreads (seed, step) pairs over distinct generator seeds


class Sampler:
    def __call__(
        self, logits: torch.Tensor, params: list[SamplingParams], num_generated: list[int]
    ) -> list[int]:
        """logits: float32 [S, vocab]; num_generated[i]: output tokens row i already has."""
        greedy_tokens = logits.argmax(dim=-1)
        random_rows = [i for i, p in enumerate(params) if not p.greedy]
        if not random_rows:
            return greedy_tokens.tolist()
        sampled = self._sample(logits[random_rows], [params[i] for i in random_rows],
                               [num_generated[i] for i in random_rows])
        greedy_tokens[random_rows] = sampled
        return greedy_tokens.tolist()

    def _sample(
        self, logits: torch.Tensor, params: list[SamplingParams], num_generated: list[int]
    ) -> torch.Tensor:
        device = logits.device
        temperatures = torch.tensor([p.temperature for p in params], device=device)
        probs = torch.softmax(logits / temperatures[:, None], dim=-1)
        top_ps = [p.top_p for p in params]
        if min(top_ps) < 1.0:
            probs = _apply_top_p(probs, torch.tensor(top_ps, device=device))
        noise = torch.empty_like(probs).exponential_()
        for row, p in enumerate(params):
            if p.seed is not None:
                generator = torch.Generator(device=device)
                generator.manual_seed((p.seed * _SEED_STRIDE + num_generated[row]) % (1 << 63))
                noise[row].exponential_(generator=generator)
        return (probs / noise).argmax(dim=-1)


def _apply_top_p(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zeroes every token outside the smallest set whose mass reaches top_p (the top token always stays)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p[:, None], 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
