"""A key's expiry over HTTP: `expires_at` (Unix seconds; null lifts it) or LiteLLM's `duration` ("30d",
"12h", "90m", "45s" from now) on POST and PATCH /v1/keys (gateway/key_admin.py). An expired key is a 401
`expired_api_key` at its next request, checked at each one (gateway/auth.py), not only at lookup."""

from __future__ import annotations

import re
import time
from typing import Any

from engine.server.errors import bad_request

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(text: Any, field: str = "duration") -> int:
    """`30d`, `12h`, `90m` or `45s` in seconds; a 400 naming `field` for anything else."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None or int(match[1]) == 0:
        raise bad_request(f"'{field}' must be a positive duration such as '30d', '12h', '90m' or '45s', "
                          f"got {text!r}", field, "invalid_value")
    return int(match[1]) * _UNIT_S[match[2]]


def with_expiry(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with a `duration` turned into `expires_at` (now + duration); a 400 for both at once."""
    if "duration" not in body:
        return body
    if "expires_at" in body:
        raise bad_request("give 'expires_at' or 'duration', not both", "duration", "invalid_value")
    body = dict(body)
    duration = body.pop("duration")
    body["expires_at"] = None if duration is None else int(time.time()) + duration_s(duration)
    return body
