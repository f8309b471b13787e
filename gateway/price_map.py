"""litellm's bundled price map (`model_prices_and_context_window_backup.json`, what litellm itself reads with
LITELLM_LOCAL_MODEL_COST_MAP set: gateway/backends/litellm_backend.py), read as JSON without importing
litellm: a config's prices are resolved when it is parsed, in about 20 ms the first time, where importing
litellm would take seconds of every start (tests/test_start_up_imports.py).

A model is looked up as litellm lists it: its whole model string (`gemini/gemini-2.5-pro`, `azure/gpt-4o`),
else the name after its provider (`openai/gpt-4o` as `gpt-4o`) where the map lists that name for the same
provider: a self-hosted `hosted_vllm/` model never takes a provider's list price by sharing its name."""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

from gateway.price_tiers import WRITE_1H, listed_tiers

log = logging.getLogger("pitstop.prices")

MAP_FILE = "model_prices_and_context_window_backup.json"
# The per-token prices of a model_info, litellm's names: input, output, prompt-cache reads and writes (1-hour
# writes apart), and the long-context tiers (ModelInfo.price_tiers: gateway/price_tiers.py).
TOKEN_PRICES = ("input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
                "cache_creation_input_token_cost", WRITE_1H, "price_tiers")


@functools.cache
def price_map() -> dict[str, Any]:
    """The map, read once; empty where litellm is not installed (nothing is priced from it)."""
    spec = importlib.util.find_spec("litellm")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / MAP_FILE
    try:
        listed = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("litellm's price map %s could not be read: models without prices in model_info cost nothing",
                    path)
        return {}
    return listed if isinstance(listed, dict) else {}


def _listing(provider_model: str) -> dict[str, Any] | None:
    table = price_map()
    provider, _, bare = provider_model.partition("/")
    whole = table.get(provider_model)
    if isinstance(whole, dict):
        return whole
    by_name = table.get(bare) if bare else None
    if isinstance(by_name, dict) and str(by_name.get("litellm_provider", "")).startswith(provider):
        return by_name
    return None


def listed_prices(provider_model: str) -> dict[str, Any] | None:
    """The map's per-token prices of `provider_model` (those of TOKEN_PRICES it lists, its tiers as
    `price_tiers`), or None where it lists neither an input nor an output price for it."""
    listing = _listing(provider_model) or {}
    prices: dict[str, Any] = {
        name: float(value) for name in TOKEN_PRICES
        if isinstance(value := listing.get(name), int | float) and not isinstance(value, bool) and value >= 0}
    if tiers := listed_tiers(listing):
        prices["price_tiers"] = tiers
    return prices if {"input_cost_per_token", "output_cost_per_token"} & prices.keys() else None
