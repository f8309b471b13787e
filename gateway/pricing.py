"""What a call costs, as providers bill it: the one function every path prices its tokens with (chat,
completions, Responses, Messages and embeddings through the outcome row, budget holds, verifiers, hedges,
moderation checks, routing's baseline).

Prompt-cache reads are billed at the model's `cache_read_input_token_cost` (OpenAI's
`usage.prompt_tokens_details.cached_tokens`; Anthropic's `cache_read_input_tokens`, which litellm reports
as both), writes at its `cache_creation_input_token_cost` (Anthropic's `cache_creation_input_tokens`;
litellm's `prompt_tokens_details.cache_creation_tokens`), the rest of the prompt at its input price, the
answer at its output price. Where a model has no cache price, its input price applies (no discount).
1-hour writes (litellm's `prompt_tokens_details.cache_creation_token_details.ephemeral_1h_input_tokens`,
Anthropic's `usage.cache_creation`) at `cache_creation_input_token_cost_above_1hr`, where the split is
reported (else all writes at the 5-minute price). A prompt above a long-context tier's threshold has all of
its tokens, cached, written and answered ones too, billed at the tier's prices (`rates`).
`prompt_tokens` counts all of the prompt, cached and written tokens included (OpenAI's, and litellm's for
Anthropic): the tier is the whole prompt's. Where the prices come from is gateway/model_list_config.py's
`ModelEntry._priced`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from routers.base import PriceStep

if TYPE_CHECKING:
    from gateway.model_list_config import ModelInfo


@dataclass(frozen=True)
class TokenUsage:
    prompt: int = 0  # the whole prompt: cached and cache-written tokens included
    completion: int = 0
    cached: int = 0  # read from the provider's prompt cache
    cache_creation: int = 0  # written to it
    cache_creation_1h: int = 0  # of those, written for an hour (Anthropic's `ttl: 1h`)

    @property
    def uncached(self) -> int:
        return max(0, self.prompt - self.cached - self.cache_creation)


@dataclass(frozen=True)
class Rates:
    """A request's per-token prices, its tier applied."""
    input: float
    output: float
    cache_read: float
    cache_write: float
    cache_write_1h: float


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def usage_of(usage: dict | None) -> TokenUsage:
    """A response's `usage` (OpenAI's shape, with litellm's Anthropic keys where it sets them) as TokenUsage."""
    usage = _dict(usage)
    details = _dict(usage.get("prompt_tokens_details"))
    created = _count(details.get("cache_creation_tokens")) or _count(details.get("cache_write_tokens")) \
        or _count(usage.get("cache_creation_input_tokens"))
    # litellm's split of the writes by ttl; Anthropic's own (`usage.cache_creation`) where a usage is passed on
    by_ttl = _dict(details.get("cache_creation_token_details")) or _dict(usage.get("cache_creation"))
    return TokenUsage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")),
                      _count(details.get("cached_tokens")) or _count(usage.get("cache_read_input_tokens")),
                      created, min(created, _count(by_ttl.get("ephemeral_1h_input_tokens"))))


def rates(info: ModelInfo, prompt_tokens: int) -> Rates:
    """`info`'s prices for a prompt of `prompt_tokens`, as litellm bills them
    (litellm/litellm_core_utils/llm_cost_calc/utils.py `_get_token_base_cost`): each tier whose threshold the
    prompt is above (xAI's: at or above), lowest first, replaces the prices it sets, so the highest such tier
    wins and a price it leaves unset stays the one below; cache reads and writes left unset cost the (tiered)
    input price, 1-hour writes left unset the (tiered) write price."""
    input_, output = info.input_cost_per_token, info.output_cost_per_token
    read, write, write_1h = (info.cache_read_input_token_cost, info.cache_creation_input_token_cost,
                             info.cache_creation_input_token_cost_above_1hr)
    for tier in sorted(info.price_tiers, key=lambda tier: tier.above_tokens):
        if prompt_tokens > tier.above_tokens or (info._tier_at_threshold and prompt_tokens == tier.above_tokens):
            input_ = _or(tier.input_cost_per_token, input_)
            output = _or(tier.output_cost_per_token, output)
            read = _or(tier.cache_read_input_token_cost, read)
            write = _or(tier.cache_creation_input_token_cost, write)
            write_1h = _or(tier.cache_creation_input_token_cost_above_1hr, write_1h)
    write = _or(write, input_)
    return Rates(input_, output, _or(read, input_), write, _or(write_1h, write))


def price_steps(info: ModelInfo) -> tuple[PriceStep, ...]:
    """`info`'s long-context tiers as a router prices them: each from the first prompt length it bills, at
    `rates` there (so a price a tier leaves unset is the one below, as billed)."""
    steps = []
    for tier in sorted(info.price_tiers, key=lambda tier: tier.above_tokens):
        first = tier.above_tokens + (0 if info._tier_at_threshold else 1)
        rate = rates(info, first)
        steps.append(PriceStep(first, rate.input, rate.output))
    return tuple(steps)


def _or(value: float | None, otherwise: Any) -> Any:
    return otherwise if value is None else value


def token_cost(info: ModelInfo, usage: TokenUsage) -> float:
    """What `usage` costs at `info`'s per-token prices, its prompt's tier applied."""
    rate = rates(info, usage.prompt)
    written_1h = min(usage.cache_creation_1h, usage.cache_creation)
    return (rate.input * usage.uncached + rate.cache_read * usage.cached
            + rate.cache_write * (usage.cache_creation - written_1h) + rate.cache_write_1h * written_1h
            + rate.output * usage.completion)


def worst_case_cost(info: ModelInfo, prompt_tokens: int, completion_tokens: int) -> float:
    """The most a call of `prompt_tokens` and `completion_tokens` may cost (a budget hold): its prompt's tier,
    every prompt token at the costliest prompt price (a write costs more than an uncached read)."""
    rate = rates(info, prompt_tokens)
    return max(rate.input, rate.cache_write, rate.cache_write_1h) * prompt_tokens + rate.output * completion_tokens
