"""The config's sections on who may use the gateway, how much, and whom it tells: keys (`auth`), their
limits (`limits`), budget alerts (`alerts`) and webhook delivery (`webhooks`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gateway.strict_config import StrictConfig


class AuthConfig(StrictConfig):
    require_keys: bool = False
    master_key: str | None = None


class TeamDefaults(StrictConfig):
    """The limits of a team that sets none of its own (each field apart), as `default_*` are a key's."""

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    budget_usd: float | None = Field(default=None, ge=0)
    budget_period: Literal["day", "week", "month"] | None = None


class LimitsConfig(StrictConfig):
    fail_open: bool = False
    default_rpm: int | None = Field(default=None, gt=0)
    default_tpm: int | None = Field(default=None, gt=0)  # tokens (prompt + completion) a minute
    default_budget_usd: float | None = Field(default=None, ge=0)
    # A key's budget counts its spend since the start of this UTC period (where the key names none).
    default_budget_period: Literal["day", "week", "month"] | None = None
    team_defaults: TeamDefaults = Field(default_factory=TeamDefaults)


class AlertsConfig(StrictConfig):
    """Budget alerts (gateway/budget_alerts.py): a key's spend crossing a share of its budget is an event,
    `budget.threshold_crossed`, for the webhook endpoints that take it and for `webhook_url`."""

    # POSTed each event as it is, unsigned (its `text` line lets a Slack incoming webhook show it); None:
    # only to webhook endpoints (/v1/webhook_endpoints)
    webhook_url: str | None = None
    budget_thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.8, 1.0], min_length=1)

    @field_validator("budget_thresholds")
    @classmethod
    def _shares(cls, thresholds: list[float]) -> list[float]:
        if not all(0 < t <= 1 for t in thresholds):
            raise ValueError("each threshold is a share of the budget, above 0 and at most 1")
        return sorted(set(thresholds))


class WebhooksConfig(StrictConfig):
    """How webhook events are sent (gateway/webhooks.py); the endpoints are made over HTTP
    (`/v1/webhook_endpoints`). A delivery that fails is tried again after `first_retry_s`, then after twice
    as long each time up to `max_retry_s`, until `give_up_after_s` from its event (OpenAI's: 72 hours)."""

    timeout_s: float = Field(default=10.0, gt=0)  # an endpoint's answer must start within this
    first_retry_s: float = Field(default=5.0, gt=0)
    max_retry_s: float = Field(default=3600.0, gt=0)
    give_up_after_s: float = Field(default=72 * 3600.0, gt=0)
    poll_s: float = Field(default=1.0, gt=0)  # how often a replica looks for due deliveries
    concurrency: int = Field(default=16, ge=1, le=256)  # deliveries a replica sends at once
    keep_s: float = Field(default=3 * 86400.0, ge=0)  # how long finished deliveries are kept, to look at
