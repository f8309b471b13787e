"""What a realtime response cost: its `response.done` event's `usage` (OpenAI's Realtime shape: input and
output tokens, each split into text, audio and image tokens, the input's cached ones split the same way),
priced as litellm's realtime cost calculator prices it (litellm/litellm_core_utils/llm_cost_calc/utils.py
`generic_cost_per_token`): text at the model's per-token prices, audio at its `input_cost_per_audio_token` /
`output_cost_per_audio_token`, cached text and audio at their cache-read prices (the input price where none is
set), images at `input_cost_per_image_token`. A price model_info sets wins; else, where model_info sets no
per-token price, litellm's price map's for the deployment's model (gateway/price_map.py: `gpt-realtime` lists
audio at 8x text); else the text price."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.deployments import Deployment
from gateway.price_map import price_map


@dataclass(frozen=True)
class RealtimeTokens:
    """One response's tokens, by modality."""

    input_text: int = 0
    input_audio: int = 0
    input_image: int = 0
    cached_text: int = 0
    cached_audio: int = 0
    cached_image: int = 0
    output_text: int = 0
    output_audio: int = 0

    @property
    def prompt(self) -> int:
        return self.input_text + self.input_audio + self.input_image

    @property
    def completion(self) -> int:
        return self.output_text + self.output_audio

    @property
    def cached(self) -> int:
        return self.cached_text + self.cached_audio + self.cached_image

    def as_usage(self) -> dict[str, Any]:
        """The outcome row's usage, OpenAI's chat shape (its tokens, all modalities together)."""
        return {"prompt_tokens": self.prompt, "completion_tokens": self.completion,
                "total_tokens": self.prompt + self.completion, "prompt_tokens_details": {"cached_tokens": self.cached}}

    def by_modality(self) -> dict[str, int]:
        """For the row's extra.realtime: what the tokens were."""
        return {name: value for name, value in vars(self).items() if value}


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def realtime_tokens(usage: Any) -> RealtimeTokens:
    """`response.usage` read; input or output tokens without details count as text (an older or partial usage)."""
    usage = _dict(usage)
    inp, out = _dict(usage.get("input_token_details")), _dict(usage.get("output_token_details"))
    cached = _dict(inp.get("cached_tokens_details"))
    in_audio, in_image = _count(inp.get("audio_tokens")), _count(inp.get("image_tokens"))
    in_text = _count(inp.get("text_tokens")) if "text_tokens" in inp else \
        max(0, _count(usage.get("input_tokens")) - in_audio - in_image)
    cached_audio, cached_image = _count(cached.get("audio_tokens")), _count(cached.get("image_tokens"))
    cached_text = _count(cached.get("text_tokens")) if "text_tokens" in cached else \
        max(0, _count(inp.get("cached_tokens")) - cached_audio - cached_image)
    out_audio = _count(out.get("audio_tokens"))
    out_text = _count(out.get("text_tokens")) if "text_tokens" in out else \
        max(0, _count(usage.get("output_tokens")) - out_audio)
    return RealtimeTokens(in_text, in_audio, in_image, min(cached_text, in_text), min(cached_audio, in_audio),
                          min(cached_image, in_image), out_text, out_audio)


@dataclass(frozen=True)
class RealtimePrices:
    text_in: float
    text_out: float
    text_cached: float
    audio_in: float
    audio_out: float
    audio_cached: float
    image_in: float
    image_cached: float

    def cost(self, tokens: RealtimeTokens) -> float:
        return ((tokens.input_text - tokens.cached_text) * self.text_in + tokens.cached_text * self.text_cached
                + (tokens.input_audio - tokens.cached_audio) * self.audio_in + tokens.cached_audio * self.audio_cached
                + (tokens.input_image - tokens.cached_image) * self.image_in + tokens.cached_image * self.image_cached
                + tokens.output_text * self.text_out + tokens.output_audio * self.audio_out)


def _listed(provider_model: str) -> dict[str, Any]:
    table = price_map()
    bare = provider_model.split("/", 1)[-1]
    for name in (provider_model, bare):
        if isinstance(listed := table.get(name), dict):
            return listed
    return {}


def _price(own: float | None, listed: dict[str, Any], field: str, otherwise: float) -> float:
    if own is not None:
        return own
    value = listed.get(field)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else otherwise


def realtime_prices(deployment: Deployment) -> RealtimePrices:
    """The deployment's realtime prices (reads litellm's map on first use: call once a session)."""
    info = deployment.info
    # Prices a config sets are never mixed with the map's list prices (as ModelEntry._priced): its audio too.
    listed = {} if info.price_source == "config" else _listed(deployment.provider_model)
    text_in, text_out = info.input_cost_per_token, info.output_cost_per_token
    text_cached = info.cache_read_input_token_cost if info.cache_read_input_token_cost is not None else text_in
    audio_in = _price(info.input_cost_per_audio_token, listed, "input_cost_per_audio_token", text_in)
    image_in = _price(None, listed, "input_cost_per_image_token", text_in)
    return RealtimePrices(
        text_in, text_out, text_cached, audio_in,
        _price(info.output_cost_per_audio_token, listed, "output_cost_per_audio_token", text_out),
        _price(info.cache_read_input_audio_token_cost, listed, "cache_read_input_audio_token_cost", audio_in),
        image_in, _price(None, listed, "cache_read_input_image_token_cost", image_in))
