"""The value types of `pitstop engine`'s options (argparse `type=`): byte sizes, JSON objects, NAME=PATH pairs;
each a clear argparse error for a value it cannot read."""

from __future__ import annotations

import argparse
import json
import re

from engine.config import SpeculativeConfig

_BYTE_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30,
               "ti": 1 << 40}


def parse_bytes(text: str) -> int:
    """`1073741824`, `512MiB`, `2G`, `1.5GB` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?)?b?\s*", text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (try 4GiB or 4294967296)")
    return int(float(match[1]) * _BYTE_UNITS[match[2] or ""])


def speculative_config(text: str) -> SpeculativeConfig:
    """`--speculative-config`'s JSON object -> SpeculativeConfig, with the reason when it is not one."""
    try:
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise ValueError("expected a JSON object")
        return SpeculativeConfig(**fields)
    except (ValueError, TypeError) as error:
        raise argparse.ArgumentTypeError(f"not a speculative config: {error}") from error


def effort_budgets(text: str) -> dict[str, int]:
    """`--reasoning-effort-budgets '{"low": 512}'`: budgets over vLLM's defaults (engine/thinking_budget.py)."""
    from engine.thinking_budget import DEFAULT_EFFORT_BUDGETS

    try:
        budgets = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(budgets, dict) or not set(budgets) <= set(DEFAULT_EFFORT_BUDGETS) or not all(
            isinstance(v, int) and v >= 0 for v in budgets.values()):
        raise argparse.ArgumentTypeError(f"an object of token counts (>= 0) for some of {', '.join(DEFAULT_EFFORT_BUDGETS)}")
    return budgets


def lora_module(text: str) -> tuple[str, str]:
    """`--lora-modules`' NAME=PATH -> (name, path)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"not a LoRA module: {text!r} (expected NAME=PATH)")
    return name, path
