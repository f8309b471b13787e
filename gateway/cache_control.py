"""A request's say over the response cache (gateway/response_cache.py), as litellm's proxy reads it:
the body field `cache` or, on any API (the Responses and Messages APIs too), the header
`x-pitstop-cache` with the same directives, comma-separated (`no-cache, ttl=600`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from engine.server.errors import bad_request

CACHE_FIELD = "cache"  # the request's own say (litellm's name), never sent upstream
CACHE_HEADER = "x-pitstop-cache"  # the same directives on any API; on the answer: hit, coalesced, partial or miss
_FLAGS = ("use-cache", "no-cache", "no-store")
_SECONDS = ("ttl", "s-maxage")
_HEADER_FLAGS = {"true": True, "false": False}


@dataclass(frozen=True)
class CacheControl:
    """A request's say over the cache: None where it said nothing."""

    use: bool | None = None
    no_cache: bool = False  # do not serve a kept answer (the fresh one is still kept)
    no_store: bool = False  # do not keep this answer
    ttl_s: float | None = None  # keep it this long instead of cache.ttl_s
    max_age_s: float | None = None  # serve a kept answer only if it is younger than this

    @classmethod
    def of(cls, body_field: Any, header: str | None) -> CacheControl:
        """From the body's `cache` object and the header's comma-separated directives (the header wins);
        a 400 naming `cache` for anything else."""
        values: dict[str, Any] = {}
        if body_field is not None:
            if not isinstance(body_field, dict):
                raise bad_request("'cache' must be an object such as {\"no-cache\": true}", CACHE_FIELD, "invalid_type")
            values.update(body_field)
        if header:
            for part in filter(None, (p.strip() for p in header.split(","))):
                name, _, value = part.partition("=")
                value = value.strip().lower()
                values[name.strip().lower()] = _HEADER_FLAGS.get(value, value) if value else True
        return cls._checked(values, CACHE_HEADER if header else CACHE_FIELD)

    @classmethod
    def _checked(cls, values: dict[str, Any], where: str) -> CacheControl:
        unknown = sorted(set(values) - {*_FLAGS, *_SECONDS})
        if unknown:
            raise bad_request(f"'{where}' has unknown directives {unknown}; known: {[*_FLAGS, *_SECONDS]}", where,
                              "invalid_value")
        for name in _FLAGS:
            if name in values and not isinstance(values[name], bool):
                raise bad_request(f"'{where}': {name} must be true or false", where, "invalid_type")
        seconds: dict[str, float | None] = {}
        for name in _SECONDS:
            value = values.get(name)
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    value = math.nan
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value) or value < 0 or (name == "ttl" and value == 0)):
                raise bad_request(f"'{where}': {name} must be a number of seconds"
                                  f"{' above 0' if name == 'ttl' else ''}", where, "invalid_value")
            seconds[name] = None if value is None else float(value)
        return cls(use=values.get("use-cache"), no_cache=values.get("no-cache", False),
                   no_store=values.get("no-store", False), ttl_s=seconds["ttl"], max_age_s=seconds["s-maxage"])
