"""A request body's fields read with their types checked: each wrong one a 400 naming it, in OpenAI's
error shape. bool is never a number here, as it is never one to a client."""

from __future__ import annotations

import math
from typing import Any

from engine.server.errors import bad_request


def read_object(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}", unknown[0], "unknown_field")
    return body


def field(body: dict, name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to Python, never a number to a client.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise bad_request(f"'{name}' must be {what}", name, "invalid_type")
    return value


def string(body: dict, name: str) -> str | None:
    return field(body, name, str, "a string")


def boolean(body: dict, name: str) -> bool:
    return bool(field(body, name, bool, "a boolean"))


def integer(body: dict, name: str) -> int | None:
    return field(body, name, int, "an integer")


def number(body: dict, name: str) -> float | None:
    value = field(body, name, (int, float), "a number")
    if value is not None and not math.isfinite(value):
        raise bad_request(f"'{name}' must be a finite number", name)
    return None if value is None else float(value)


def int_list(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise bad_request(f"'{name}' must be a list of integers", name, "invalid_type")
    return value
