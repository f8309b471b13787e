"""The config's `deployment_limits:` section: how the deployments' rpm / tpm windows are shared by the
gateway's replicas through `redis_url` (gateway/deployment_limits_sync.py); without `redis_url` unused."""

from __future__ import annotations

from pydantic import Field

from gateway.strict_config import StrictConfig


class DeploymentLimitsConfig(StrictConfig):
    # How often each replica writes its counts to Redis and reads the others': the replicas may pass a
    # quota by what the others start in two intervals.
    sync_interval_s: float = Field(default=0.25, gt=0, le=10)
    redis_prefix: str = Field(default="default", min_length=1)  # pitstop:<prefix>:deployment_limits:...
