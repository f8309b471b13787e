"""The router interface: one method that predicts each candidate's quality for a request.

Choosing is shared by every router (routers/choice.py): predicted quality minus the cost preference
times the request's predicted cost, normalised by a reference cost (see routers/choice.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class PriceStep:
    """Per-token prices from a prompt length on: a long-context tier (Gemini's and Claude's above 200k tokens)."""

    from_prompt_tokens: int
    input_cost_per_token: float
    output_cost_per_token: float


@dataclass(frozen=True)
class Candidate:
    model: str
    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0
    tier: str = "medium"
    price_steps: tuple[PriceStep, ...] = ()  # by prompt length, ascending: the last one a prompt reaches applies

    def rates(self, prompt_tokens: int) -> tuple[float, float]:
        """(input, output) per-token prices for a prompt of `prompt_tokens`."""
        rates = (self.input_cost_per_token, self.output_cost_per_token)
        for step in self.price_steps:
            if prompt_tokens >= step.from_prompt_tokens:
                rates = (step.input_cost_per_token, step.output_cost_per_token)
        return rates


@dataclass(frozen=True)
class RoutingRequest:
    prompt: str
    prompt_tokens: int
    session_id: str | None = None


@dataclass(frozen=True)
class QualityEstimate:
    quality: dict[str, float]  # model -> predicted quality in [0, 1]
    output_tokens: dict[str, float] = field(default_factory=dict)  # model -> predicted answer length
    # The costliest candidate's cost on a typical request (USD), from the router's training traffic;
    # None: normalise by this request's costliest candidate instead.
    reference_cost_usd: float | None = None


class Router(Protocol):
    name: str
    version: str

    def estimate(self, request: RoutingRequest, candidates: list[Candidate]) -> QualityEstimate: ...
