"""The `hedging:` section: a request slow to get its first byte from one deployment of a model is sent
to another as well, the first answer wins (gateway/hedging.py). Off by default: every hedge is an extra
upstream call (tokens a provider bills, a slot on a replica), worth it only where a model's tail latency
comes from its deployments (a slow replica, a region having a bad minute) rather than from the prompts."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import Field, model_validator

from gateway.strict_config import StrictConfig

log = logging.getLogger("pitstop.config")


class HedgingConfig(StrictConfig):
    enabled: bool = False
    # The delay before a hedge, adaptive: this quantile of the model's recent first-byte latencies (a
    # stream's first chunk, a whole answer's end: kept apart), once `min_samples` of the last `window`
    # successful calls are known, and never under `min_delay_s`. `delay_s` fixes it instead.
    quantile: float = Field(default=0.95, gt=0, lt=1)
    delay_s: float | None = Field(default=None, gt=0)
    min_delay_s: float = Field(default=0.05, ge=0)
    min_samples: int = Field(default=20, ge=1)
    window: int = Field(default=200, ge=1)
    max_hedges: int = Field(default=1, ge=1)  # extra calls a request may make
    # Hedges are at most this share of the model's requests (a token bucket each request fills by the
    # share and each hedge empties by one, as gRPC's retry throttling), so a slow model is not sent twice
    # its load; `burst` hedges may go out back to back (the bucket's size; it starts full).
    max_extra_share: float = Field(default=0.1, gt=0, le=1)
    burst: int = Field(default=5, ge=1)
    models: list[str] | None = Field(default=None, min_length=1)  # None: every model with two deployments

    @model_validator(mode="after")
    def _window_holds_the_samples(self) -> HedgingConfig:
        if self.window < self.min_samples:
            raise ValueError(f"window ({self.window}) must hold min_samples ({self.min_samples})")
        return self


def check_hedging(config: HedgingConfig, is_chat_model: Callable[[str], bool],
                  deployments: Callable[[str], int]) -> None:
    """The models listed are chat models of `model_list`; one with a single deployment has nothing to
    hedge on (logged, not refused: another entry may be left out for want of its API key)."""
    for model in config.models or ():
        if not is_chat_model(model):
            raise ValueError(f"hedging.models: '{model}' is not a chat model_name of model_list")
        if config.enabled and deployments(model) < 2:
            log.warning("hedging.models: '%s' has one deployment; its requests are not hedged", model)
