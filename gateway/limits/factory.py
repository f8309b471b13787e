"""Choose the limiter from configuration: in-process by default, Redis when a URL is configured."""

from __future__ import annotations

from gateway.limits.base import Limiter
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis import RedisLimiter


def make_limiter(
    redis_url: str | None = None,
    *,
    prefix: str = "default",
    fail_open: bool = False,
    window_s: float = 60.0,
) -> Limiter:
    if redis_url is None:
        return MemoryLimiter(window_s=window_s)
    return RedisLimiter.from_url(redis_url, prefix=prefix, fail_open=fail_open, window_s=window_s)
