"""What a call costs, as providers bill it: the one function every path prices its tokens with (chat,
completions, Responses, Messages and embeddings through the outcome row, budget holds, verifiers, hedges,
moderation checks, routing's baseline).

Prompt-cache reads are billed at the model's `cache_read_input_token_cost` (OpenAI's
`usage.prompt_tokens_details.cached_tokens`; Anthropic's `cache_read_input_tokens`, which litellm reports
as both), writes at its `cache_creation_input_token_cost` (Anthropic's `cache_creation_input_tokens`;
litellm's `prompt_tokens_details.cache_creation_tokens`), the rest of the prompt at its input price, the
answer at its output price. Where a model has no cache price, its input price applies (no discount).
`prompt_tokens` counts all of the prompt, cached and written tokens included (OpenAI's, and litellm's for
Anthropic). Where the prices come from is gateway/model_list_config.py's `ModelEntry._priced`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.model_list_config import ModelInfo


@dataclass(frozen=True)
class TokenUsage:
    prompt: int = 0  # the whole prompt: cached and cache-written tokens included
    completion: int = 0
    cached: int = 0  # read from the provider's prompt cache
    cache_creation: int = 0  # written to it

    @property
    def uncached(self) -> int:
        return max(0, self.prompt - self.cached - self.cache_creation)


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0


def usage_of(usage: dict | None) -> TokenUsage:
    """A response's `usage` (OpenAI's shape, with litellm's Anthropic keys where it sets them) as TokenUsage."""
    usage = usage or {}
    details = usage.get("prompt_tokens_details") or {}
    if not isinstance(details, dict):
        details = {}
    return TokenUsage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")),
                      _count(details.get("cached_tokens")) or _count(usage.get("cache_read_input_tokens")),
                      _count(details.get("cache_creation_tokens")) or _count(usage.get("cache_creation_input_tokens")))


def token_cost(info: ModelInfo, usage: TokenUsage) -> float:
    """What `usage` costs at `info`'s per-token prices."""
    read = info.cache_read_input_token_cost
    write = info.cache_creation_input_token_cost
    return (info.input_cost_per_token * usage.uncached
            + (info.input_cost_per_token if read is None else read) * usage.cached
            + (info.input_cost_per_token if write is None else write) * usage.cache_creation
            + info.output_cost_per_token * usage.completion)
