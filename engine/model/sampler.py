"""Token sampling from a batch of (processed: engine/model/logits_processors.py) logits, each row with
its own SamplingParams: greedy at temperature 0, otherwise temperature, then the distribution cut to
its top-k tokens, its nucleus (top-p) and the tokens at least min-p times as likely as the likeliest.

Sampling uses the exponential race (argmax of p / Exp(1) noise, equivalent to drawing from p), so
a seeded request only needs its own noise row: drawn from a generator seeded with (seed, number of
tokens generated so far), which makes it reproducible whatever else shares the batch and across
preemption/recompute.

A row may instead check a draft model's token against its distribution (speculative sampling:
engine/model/rejection_sampler.py), with draws from another stream of the same (seed, index); a draft
model's runner keeps the distributions it sampled from (`keep_probs`), which such a check needs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.model.rejection_sampler import rejection_sample
from engine.sampling_params import SamplingParams

_SEED_STRIDE = 1_000_003  # spreads (seed, step) pairs over distinct generator seeds
_CHECK_SALT = 0x2C1B_3C6D_5A4E_9F11  # the stream a draft's check draws from, apart from the sampling noise
_DRAFT_SALT = 0x6A09_E667_F3BC_C908  # a draft model's own seed under rejection sampling (engine/draft_model.py)

Proposal = tuple[int, torch.Tensor]  # a draft token and the distribution it was drawn from, [vocab]


class Sampler:
    def __init__(self, keep_probs: bool = False) -> None:
        self.keep_probs = keep_probs
        self.probs: dict[int, torch.Tensor] = {}  # with keep_probs, the last call's sampled rows: row -> [vocab]

    def __call__(
        self, logits: torch.Tensor, params: list[SamplingParams], num_generated: list[int],
        proposals: Sequence[Proposal | None] | None = None,
    ) -> list[int]:
        """logits: float32 [S, vocab]; num_generated[i]: output tokens row i already has; proposals[i]: a
        draft model's token that a sampled row i checks by rejection sampling instead of drawing."""
        greedy_tokens = logits.argmax(dim=-1)
        self.probs = {}
        random_rows = [i for i, p in enumerate(params) if not p.greedy]
        if not random_rows:
            return greedy_tokens.tolist()
        rows_params = [params[i] for i in random_rows]
        generated = [num_generated[i] for i in random_rows]
        probs = distributions(logits[random_rows], rows_params)
        proposed = proposals or [None] * len(params)
        checks = {k: proposal for k, i in enumerate(random_rows) if (proposal := proposed[i]) is not None}
        if not checks:
            sampled = race(probs, rows_params, generated)
        else:
            sampled = torch.empty(len(random_rows), dtype=torch.long, device=logits.device)
            drawn = [k for k in range(len(random_rows)) if k not in checks]
            if drawn:
                sampled[drawn] = race(probs[drawn], [rows_params[k] for k in drawn], [generated[k] for k in drawn])
            checked = list(checks)
            uniform = row_uniforms(len(checked), probs.shape[1] + 1, [rows_params[k].seed for k in checked],
                                   [generated[k] for k in checked], logits.device, _CHECK_SALT)
            sampled[checked] = rejection_sample(
                normalized(probs[checked]), torch.stack([q for _, q in checks.values()]),
                torch.tensor([x for x, _ in checks.values()], device=logits.device), uniform)
        if self.keep_probs:
            kept = normalized(probs)
            self.probs = {i: kept[k] for k, i in enumerate(random_rows)}
        greedy_tokens[random_rows] = sampled
        return greedy_tokens.tolist()


def distributions(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Each row's distribution as it is sampled from: softmax at its temperature, then cut (`truncated`);
    not renormalized (`normalized`)."""
    temperatures = torch.tensor([p.temperature for p in params], device=logits.device)
    probs = torch.softmax(logits / temperatures[:, None], dim=-1)
    cut = [i for i, p in enumerate(params) if p.truncates]
    if cut:
        probs[cut] = truncated(probs[cut], [params[i] for i in cut])
    return probs


def normalized(probs: torch.Tensor) -> torch.Tensor:
    return probs / probs.sum(dim=-1, keepdim=True)


def race(probs: torch.Tensor, params: list[SamplingParams], num_generated: list[int]) -> torch.Tensor:
    """A draw from each row: the argmax of probs / Exp(1) noise."""
    # Exp(1) noise as -log(U): torch's exponential_ took 19 ms for 32 x 32,000 on one core, rand 3.
    uniform = row_uniforms(probs.shape[0], probs.shape[1], [p.seed for p in params], num_generated, probs.device)
    noise = uniform.log_().neg_()
    return (probs / noise).argmax(dim=-1)


def row_uniforms(rows: int, width: int, seeds: list[int | None], indices: list[int], device: torch.device,
                 salt: int = 0) -> torch.Tensor:
    """[rows, width] uniforms in [0, 1): a seeded row's from a generator seeded by (seed, output index,
    salt), so it is the same whatever else shares the batch; the others' from torch's global generator."""
    uniform = torch.empty(rows, width, device=device)
    if any(seed is None for seed in seeds):
        uniform.uniform_()
    for row, (seed, index) in enumerate(zip(seeds, indices, strict=True)):
        if seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(((seed * _SEED_STRIDE + index) % (1 << 63)) ^ salt)
            uniform[row].uniform_(generator=generator)
    return uniform


def draft_seed(seed: int | None) -> int | None:
    """The seed a draft model samples a seeded request's drafts with under rejection sampling: a stream
    of its own, so the drafts are independent of the target's own draws at the same places."""
    return None if seed is None else (seed ^ _DRAFT_SALT) % (1 << 62)


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
