"""The realtime relay's pure parts: reading an event's type from a frame's head, a response's usage by
modality, and its price (model_info's, litellm's map's, never mixed) (gateway/realtime_session.py,
gateway/realtime_usage.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_settings
from gateway.deployments import Deployment
from gateway.model_list_config import ModelEntry
from gateway.realtime_session import event_type
from gateway.realtime_target import is_realtime, target_of
from gateway.realtime_usage import RealtimeTokens, realtime_prices, realtime_tokens
from tests.gateway.harness import gateway_config, model_entry
from tests.gateway.realtime_upstream import USAGE


def deployment(model: str, **info: float) -> Deployment:
    entry = ModelEntry.model_validate({"model_name": "v", "litellm_params": {"model": model},
                                       "model_info": {"mode": "realtime", **info}})._priced()
    return Deployment("v#0", "v", None, entry.model_info, model)  # type: ignore[arg-type]


def test_an_events_type_is_read_from_its_head_whatever_follows() -> None:
    audio = json.dumps({"event_id": "e1", "type": "response.output_audio.delta", "delta": "A" * 100_000})
    assert event_type(audio) == "response.output_audio.delta"
    late = json.dumps({"event_id": "e" * 300, "type": "response.done"})  # short: read whole
    assert event_type(late) == "response.done"
    assert event_type("not json{") is None


def test_usage_by_modality_and_without_details() -> None:
    tokens = realtime_tokens(USAGE)
    assert tokens == RealtimeTokens(input_text=15, input_audio=25, cached_text=4, cached_audio=6, output_text=8,
                                    output_audio=42)
    assert tokens.as_usage()["prompt_tokens"] == 40 and tokens.as_usage()["prompt_tokens_details"]["cached_tokens"] == 10
    assert realtime_tokens({"input_tokens": 7, "output_tokens": 3}) == RealtimeTokens(input_text=7, output_text=3)
    assert realtime_tokens(None) == RealtimeTokens()


def test_prices_come_from_litellms_map_or_wholly_from_the_config() -> None:
    listed = realtime_prices(deployment("openai/gpt-realtime"))
    assert (listed.text_in, listed.audio_in, listed.audio_out, listed.audio_cached) == (4e-6, 3.2e-5, 6.4e-5, 4e-7)
    tokens = RealtimeTokens(input_text=10, input_audio=100, cached_audio=50, output_audio=20)
    assert listed.cost(tokens) == pytest.approx(10 * 4e-6 + 50 * 3.2e-5 + 50 * 4e-7 + 20 * 6.4e-5)
    # A config's negotiated text price is never mixed with the map's audio list price: audio at its own or text's.
    own = realtime_prices(deployment("openai/gpt-realtime", input_cost_per_token=1e-6, output_cost_per_token=2e-6,
                                     output_cost_per_audio_token=5e-6))
    assert (own.audio_in, own.audio_cached, own.audio_out) == (1e-6, 1e-6, 5e-6)


def test_which_entries_are_realtime_and_where_they_connect() -> None:
    def entry(model: str, mode: str | None = None, **params: str) -> ModelEntry:
        return ModelEntry.model_validate({"model_name": "v", "litellm_params": {"model": model, **params},
                                          "model_info": {"mode": mode} if mode else {}})

    assert is_realtime(entry("openai/gpt-realtime")) and is_realtime(entry("azure/voice", "realtime"))
    assert not is_realtime(entry("openai/gpt-4o")) and not is_realtime(entry("anthropic/claude-realtime", "realtime"))
    plain = target_of(entry("openai/gpt-realtime", api_key="k"))
    assert (plain.url, plain.headers) == ("wss://api.openai.com/v1/realtime?model=gpt-realtime",
                                          {"authorization": "Bearer k"})
    azure = target_of(entry("azure/dep", "realtime", api_base="https://x.openai.azure.com/", api_key="a"))
    assert azure.url == "wss://x.openai.azure.com/openai/realtime?api-version=2024-10-01-preview&deployment=dep"


@pytest.mark.parametrize(("change", "message"), [
    ("group", "route_groups.0.models: 'voice' is a realtime model"),
    ("fallback", "fallbacks: 'chat' -> ['voice'] mixes realtime models"),
    ("engine", "serve no audio, images, videos or realtime sessions")])
def test_the_config_keeps_realtime_models_out_of_chats(tmp_path: Path, change: str, message: str) -> None:
    voice = {"model_name": "voice", "litellm_params": {"model": "openai/gpt-realtime", "api_key": "k"},
             "model_info": {"mode": "realtime"}}
    if change == "engine":
        voice["litellm_params"] = {"model": "pitstop-local/voice", "model_dir": "m"}
    chat = model_entry("chat", "http://127.0.0.1:9/v1")
    groups = [{"name": "grp", "models": ["voice" if change == "group" else "chat"]}]
    sections = {"fallbacks": {"on_error": {"chat": ["voice"]}}} if change == "fallback" else {}
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_settings(gateway_config(tmp_path, [voice, chat], groups, **sections))
