"""The `health_checks:` section: self-hosted deployments probed between requests (gateway/health_checks.py).
Off without it, as litellm's background health checks are."""

from __future__ import annotations

from pydantic import Field, model_validator

from gateway.strict_config import StrictConfig


class HealthCheckConfig(StrictConfig):
    interval_s: float = Field(default=5.0, gt=0)  # from one round's end to the next one's start
    timeout_s: float = Field(default=2.0, gt=0)  # a probe not answered by then failed
    unhealthy_after: int = Field(default=2, ge=1)  # failed probes in a row that take a deployment out
    healthy_after: int = Field(default=1, ge=1)  # passed probes in a row that bring it back
    # Calls in flight on a deployment taken out sent to another one (gateway/health_rescue.py).
    rescue_in_flight: bool = True

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> HealthCheckConfig:
        if self.timeout_s > self.interval_s:
            raise ValueError(f"timeout_s ({self.timeout_s}) must not be longer than interval_s ({self.interval_s})")
        return self
