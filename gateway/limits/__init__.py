"""Per-key request-rate and budget limits (policy); Redis atomics live in `storage.redis_state`."""

from gateway.limits.base import Admission, Limiter, LimitReason, LimitsUnavailableError
from gateway.limits.factory import make_limiter
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis import RedisLimiter

__all__ = [
    "Admission",
    "LimitReason",
    "Limiter",
    "LimitsUnavailableError",
    "MemoryLimiter",
    "RedisLimiter",
    "make_limiter",
]
