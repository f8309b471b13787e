"""Token sampling from a batch of (processed: engine/model/logits_processors.py) logits, each row with
its own SamplingParams: greedy at temperature 0, otherwise temperature, then the distribution cut to
its top-k tokens, its nucleus (top-p) and the tokens at least min-p times as likely as the likeliest.

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
        cut = [i for i, p in enumerate(params) if p.truncates]
        if cut:
            probs[cut] = truncated(probs[cut], [params[i] for i in cut])
        # Exp(1) noise as -log(U): torch's exponential_ took 19 ms for 32 x 32,000 on one core, rand 3.
        uniform = torch.empty_like(probs)
        seeds = {row: p.seed for row, p in enumerate(params) if p.seed is not None}
        if len(seeds) < len(params):
            uniform.uniform_()
        for row, seed in seeds.items():
            generator = torch.Generator(device=device)
            generator.manual_seed((seed * _SEED_STRIDE + num_generated[row]) % (1 << 63))
            uniform[row].uniform_(generator=generator)
        noise = uniform.log_().neg_()
        return (probs / noise).argmax(dim=-1)


def truncated(probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Each row's distribution cut as vLLM cuts it, each cut on what the one before left: min-p (below
    min_p times the top token's probability), then top-k, then top-p (the smallest set whose mass
    reaches top_p). The top token always stays; what remains is not renormalized (sampling needs not)."""
    device, vocab = probs.device, probs.shape[1]
    top_ks = [p.top_k if p.top_k > 0 else vocab for p in params]
    if max(top_ks) < vocab:  # every row has a top-k: the k likeliest are all that can stay, no full sort
        sorted_probs, order = probs.topk(max(top_ks), dim=-1)
    else:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
    rank = torch.arange(sorted_probs.shape[1], device=device)
    top_k = torch.tensor(top_ks, device=device)
    top_p = torch.tensor([p.top_p for p in params], device=device)
    min_p = torch.tensor([p.min_p for p in params], device=device)
    keep = (rank[None, :] < top_k[:, None]) & (sorted_probs >= min_p[:, None] * sorted_probs[:, :1])
    kept = sorted_probs * keep
    kept_mass_before = kept.cumsum(dim=-1) - kept
    keep &= kept_mass_before < top_p[:, None] * kept.sum(dim=-1, keepdim=True)
    keep[:, 0] = True
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs * keep)
