"""Deployments of each model: least outstanding requests first; a deployment that keeps failing
cools down for a while (litellm's allowed_fails / cooldown_time semantics)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.admission import AdmissionQueue
from gateway.backends.base import Backend
from gateway.model_list_config import ModelInfo


@dataclass(eq=False)
class Deployment:
    name: str  # unique: model name plus index, e.g. "tiny-small#0"
    model_name: str
    backend: Backend
    info: ModelInfo
    provider_model: str  # litellm_params.model, for the outcome row
    outstanding: int = 0
    failures: int = 0
    cooldown_until: float = 0.0
    admission: AdmissionQueue | None = None  # model_info.max_concurrency (gateway/admission.py)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return self.info.input_cost_per_token * prompt_tokens + self.info.output_cost_per_token * completion_tokens

    @property
    def uses_rank(self) -> bool:
        """Whether a request's place here depends on its rank: its admission queue or its engine orders by it."""
        return self.admission is not None or self.backend.uses_rank


@dataclass
class DeploymentPool:
    allowed_fails: int = 3
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    by_model: dict[str, list[Deployment]] = field(default_factory=dict)

    def add(self, deployment: Deployment) -> None:
        self.by_model.setdefault(deployment.model_name, []).append(deployment)

    def __contains__(self, model_name: str) -> bool:
        return model_name in self.by_model

    def uses_rank(self, model_name: str) -> bool:
        return any(d.uses_rank for d in self.by_model.get(model_name, ()))

    @property
    def deployments(self) -> list[Deployment]:
        return [d for group in self.by_model.values() for d in group]

    def pick(self, model_name: str, exclude: set[str] = frozenset(), prefer: str | None = None) -> Deployment | None:
        """`prefer` (a deployment name) wins when it is available: session affinity."""
        now = self.clock()
        options = [d for d in self.by_model.get(model_name, ()) if d.name not in exclude]
        if not options:
            return None
        ready = [d for d in options if d.cooldown_until <= now]
        if prefer is not None:
            for d in ready:
                if d.name == prefer:
                    return d
        if ready:
            return min(ready, key=lambda d: d.outstanding)
        return min(options, key=lambda d: d.cooldown_until)  # all cooling: the one back soonest

    def ready(self, model_name: str, exclude: set[str] = frozenset()) -> list[Deployment]:
        """The model's deployments not cooling down, less `exclude`: where a hedge may go."""
        now = self.clock()
        return [d for d in self.by_model.get(model_name, ()) if d.cooldown_until <= now and d.name not in exclude]

    def cooling(self, model_name: str) -> bool:
        """Whether every deployment of the model is cooling down (a fallback may go straight on)."""
        now = self.clock()
        deployments = self.by_model.get(model_name, ())
        return bool(deployments) and all(d.cooldown_until > now for d in deployments)

    def mark_failure(self, deployment: Deployment) -> None:
        deployment.failures += 1
        if deployment.failures >= self.allowed_fails:
            deployment.cooldown_until = self.clock() + self.cooldown_s
            deployment.failures = 0

    def mark_success(self, deployment: Deployment) -> None:
        deployment.failures = 0
