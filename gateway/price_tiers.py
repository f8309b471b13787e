"""Long-context price tiers and 1-hour prompt-cache writes, in litellm's names: a model_info (or litellm's price
map) sets `input_cost_per_token_above_200k_tokens`, `output_cost_per_token_above_200k_tokens`,
`cache_read_input_token_cost_above_200k_tokens`, `cache_creation_input_token_cost_above_200k_tokens` (any
threshold litellm's map uses: `_above_128k_tokens`, `_above_272k_tokens`, ...) and
`cache_creation_input_token_cost_above_1hr` (Anthropic's 1-hour cache writes; `..._above_1hr_above_200k_tokens`
above a tier). The flat keys are read into ModelInfo.price_tiers, one PriceTier per threshold; what a tier
changes is gateway/pricing.py's `rates`."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ConfigDict, Field

from gateway.strict_config import StrictConfig

WRITE_1H = "cache_creation_input_token_cost_above_1hr"
# The prices a tier may replace, litellm's names (litellm_core_utils/llm_cost_calc/utils.py's
# _BATCH_RATE_PREFIXES and its TTL-priced cache writes).
TIERED_PRICES = ("input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
                 "cache_creation_input_token_cost", WRITE_1H)
# `{price}_above_{N}k_tokens` (or `_above_{N}_tokens`); service-tier and batch variants (`..._tokens_priority`,
# `..._tokens_batches`) are not matched: the gateway bills standard requests.
TIER_KEY = re.compile(rf"^({'|'.join(TIERED_PRICES)})_above_(\d+)(k?)_tokens$")


class PriceTier(StrictConfig):
    """The prices of a request whose prompt is above `above_tokens`; None: the price below it stands."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    above_tokens: int = Field(gt=0)
    input_cost_per_token: float | None = Field(default=None, ge=0)
    output_cost_per_token: float | None = Field(default=None, ge=0)
    cache_read_input_token_cost: float | None = Field(default=None, ge=0)
    cache_creation_input_token_cost: float | None = Field(default=None, ge=0)
    cache_creation_input_token_cost_above_1hr: float | None = Field(default=None, ge=0)


def tier_of(key: str) -> tuple[str, int] | None:
    """(price, threshold in tokens) of a flat tier key; None for any other key."""
    found = TIER_KEY.match(key)
    if found is None:
        return None
    price, number, thousands = found.groups()
    return price, int(number) * (1000 if thousands else 1)


def fold_tier_keys(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with its flat tier keys moved into `price_tiers` (a list of PriceTier fields, by threshold), as
    ModelInfo takes them; any `price_tiers` already there is kept, a flat key adding to its threshold's."""
    tiers: dict[int, dict[str, Any]] = {}
    for given in data.get("price_tiers") or ():
        if isinstance(given, dict) and isinstance(given.get("above_tokens"), int):
            tiers[given["above_tokens"]] = dict(given)
        else:
            return data  # not a list of tiers: ModelInfo's validation names what is wrong
    rest: dict[str, Any] = {}
    for key, value in data.items():
        if (tiered := tier_of(key)) is None:
            rest[key] = value
        elif isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            tiers.setdefault(tiered[1], {"above_tokens": tiered[1]})[tiered[0]] = value
        else:  # named as set, not as the tier it is read into
            raise ValueError(f"{key}: a price per token, at least 0 (got {value!r})")
    if tiers:
        rest["price_tiers"] = [tiers[above] for above in sorted(tiers)]
    return rest


def listed_tiers(listing: dict[str, Any]) -> tuple[PriceTier, ...]:
    """The tiers a price map listing sets (its numeric flat tier keys)."""
    flat = {key: float(value) for key, value in listing.items() if tier_of(key) is not None
            and isinstance(value, int | float) and not isinstance(value, bool) and value >= 0}
    return tuple(PriceTier(**tier) for tier in fold_tier_keys(flat).get("price_tiers", ()))
