"""A route group's section of the config: its models and router, and how it calibrates, explores and
verifies (validated where the file is read, so errors name the field)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from gateway.strict_config import StrictConfig
from routers.exploration import Exploration
from routers.registry import ROUTERS


class GroupCalibration(StrictConfig):
    """Tie a route group's cost preference to a budget on its own traffic (routers/calibration.py):
    the smallest preference at which its recent requests would average at most `avg_cost_usd` a
    request (predicted cost of the chosen model), or send at most `model_share` of them to `model`.
    Recalibrated every `interval_s` and whenever the group's router is reloaded."""

    avg_cost_usd: float | None = Field(default=None, gt=0)
    model_share: float | None = Field(default=None, ge=0, le=1)
    model: str | None = None  # for model_share: one of the group's models (default: its costliest)
    # "outcomes": the group's own requests in the outcome log (needs storage.store_text); or held-out
    # traffic: a data set name (its test split) or "outcomes:<export file>".
    traffic: str = Field(default="outcomes", min_length=1)
    window: int = Field(default=2000, gt=0)  # the most recent requests
    min_requests: int = Field(default=100, gt=0)  # fewer: keep the current preference
    interval_s: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _one_target(self) -> GroupCalibration:
        if (self.avg_cost_usd is None) == (self.model_share is None):
            raise ValueError("give exactly one target: avg_cost_usd or model_share")
        if self.model is not None and self.model_share is None:
            raise ValueError("'model' goes with a model_share target")
        return self


class GroupVerify(StrictConfig):
    """Check the router's pick before serving it (routers/verify.py): where its answer is a short one (a
    choice letter or a number), `count` of the `verifiers` are asked the same request; if every one gives
    the same answer the pick's is served, else `escalate_to`'s. Free-text answers are served unchecked."""

    verifiers: list[str] = Field(min_length=1)  # model names, in order of preference
    escalate_to: str | None = None  # default: the group's model with the highest output price
    count: int = Field(default=1, ge=1)  # how many verifiers are asked (and must agree)
    below: float = Field(default=1.0, ge=0)  # verify only picks whose predicted quality is below this
    # A stream is held back while its reply is at most this many characters (a short answer is 1-2 on
    # RouterBench); past that it streams on unchecked. 0: streams are never verified.
    hold_chars: int = Field(default=32, ge=0)

    @model_validator(mode="after")
    def _enough_verifiers(self) -> GroupVerify:
        if self.count > len(self.verifiers):
            raise ValueError(f"count {self.count} is more than the {len(self.verifiers)} verifiers given")
        return self


class RouteGroup(StrictConfig):
    name: str = Field(min_length=1)
    models: list[str] = Field(min_length=1)
    router: str = "tier-prior"
    router_artifact: str | None = None
    cost_preference: float = Field(default=0.0, ge=0)
    # Hot reload: the artifact file is checked this often and a replaced file is swapped in.
    reload_interval_s: float = Field(default=5.0, gt=0)
    # When the artifact is missing at start, train it in a background process from this data set
    # (`pitstop train router --data ...`); the group routes by the tier prior until it is ready.
    train_data: str | None = None
    # Epsilon-greedy exploration: this share of requests goes to a uniformly drawn model, and the outcome
    # row records the served model's propensity so retraining can reweight logged traffic.
    explore_epsilon: float = Field(default=0.0, ge=0, le=1)
    # Draw only among this many models with the best utilities (the router's choice among them) rather
    # than all: exploration's outcomes land where other routers would differ (routers/exploration.py).
    # More than the group has (say, API models left out for want of a key) means all of them.
    explore_among: int | None = Field(default=None, ge=2)
    # Keep the cost preference at a budget on the group's own traffic (the preference above is where
    # it starts, and what it keeps while there is too little traffic).
    calibrate: GroupCalibration | None = None
    # Verify a cheap pick's short answer before paying for the strongest model (gateway/verify.py).
    verify: GroupVerify | None = None

    @property
    def exploration(self) -> Exploration:
        return Exploration(self.explore_epsilon, self.explore_among)

    @field_validator("router")
    @classmethod
    def _known_router(cls, name: str) -> str:
        # Checked here, not when the app is built, so the error names the field and fails at load.
        if name not in ROUTERS:
            raise ValueError(f"unknown router {name!r}; known: {sorted(ROUTERS)}")
        return name
