"""Long-context tiers and 1-hour prompt-cache writes (gateway/pricing.py `rates`, gateway/price_tiers.py): a prompt
above a tier's threshold has all of its tokens billed at the tier's prices, one exactly at it does not; config
tiers replace the map's; 1-hour writes at their price; every estimate (a cancelled hedge, a budget hold) on the
same prices; cache writes in /metrics and the request's span. Over real sockets with the openai SDK and the mock
upstream's usage directives; expected prices are read from litellm's map, and token_cost agrees with litellm's
own cost calculator."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import cast

import pytest

from gateway.backends.base import Backend
from gateway.config import ConfigError
from gateway.deployments import Deployment
from gateway.model_list_config import ModelInfo
from gateway.pricing import TokenUsage, token_cost, usage_of
from tests.engine.otlp import SERVER, collector
from tests.gateway.harness import gateway_config, running_gateway, wait_until
from tests.gateway.test_gateway_pricing import OWN, _info, chat, litellm_prices, unpriced
from tests.gateway.test_hedging_unit import Upstreams, policy
from tests.gateway.upstream import UpstreamProcess

TIERED = "gpt-5.4"  # an OpenAI model litellm's map tiers, reached over OpenAI's API (the mock)


def map_tier(name: str) -> tuple[int, dict[str, float]]:
    """The map's tier of `name`: its threshold and its prices, by their base names."""
    listed = litellm_prices(name)
    found = {re.fullmatch(r"(\w+?)_above_(\d+)k_tokens", key): value for key, value in listed.items()}
    tiers = {(m.group(1), int(m.group(2)) * 1000): value for m, value in found.items() if m}
    (threshold,) = {above for _, above in tiers}
    return threshold, {price: value for (price, _), value in tiers.items()}


def test_a_prompt_above_the_maps_tier_is_billed_wholly_at_the_tier_and_one_at_it_is_not(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, _ = upstreams
    threshold, tier = map_tier(TIERED)
    base = litellm_prices(TIERED)
    assert tier["input_cost_per_token"] > base["input_cost_per_token"]
    config = gateway_config(tmp_path, [unpriced("long", f"openai/{TIERED}", a.api_base)])
    with running_gateway(config) as gateway, gateway.openai() as client:
        for prompt in (threshold, threshold + 1):
            chat(client, "long", f"[prompt:{prompt}] [cached:{threshold // 2}] [words:7] prompt {prompt}")
        rows = {row["prompt_tokens"]: row["cost_usd"] for row in gateway.rows()}

    def billed(prices: dict[str, float], prompt: int) -> float:
        cached = threshold // 2
        return (prompt - cached) * prices["input_cost_per_token"] + cached * prices["cache_read_input_token_cost"] \
            + 7 * prices["output_cost_per_token"]
    assert rows[threshold] == pytest.approx(billed(base, threshold), rel=1e-9)  # "above": not at
    assert rows[threshold + 1] == pytest.approx(billed(base | tier, threshold + 1), rel=1e-9)


@pytest.mark.parametrize("model", ["gemini/gemini-2.5-pro", "anthropic/claude-sonnet-4-5", "xai/grok-4.3",
                                   f"openai/{TIERED}", "anthropic/claude-haiku-5-5"])
def test_token_cost_is_litellms_own_around_every_threshold(tmp_path: Path, model: str) -> None:
    """litellm's cost calculator as the reference: tiers (xAI's from the threshold on), cache reads, 5-minute
    and 1-hour writes, at 1 token either side of each threshold the map lists for the model."""
    from litellm.litellm_core_utils.llm_cost_calc.utils import generic_cost_per_token
    from litellm.types.utils import CacheCreationTokenDetails, PromptTokensDetailsWrapper, Usage

    info = _info(tmp_path, model)
    provider, _, name = model.partition("/")
    thresholds = {tier.above_tokens for tier in info.price_tiers} or {200_000}
    for prompt in sorted({n + d for n in thresholds for d in (-1, 0, 1)}):
        details = PromptTokensDetailsWrapper(cached_tokens=50_000, cache_creation_tokens=20_000,
                                             cache_creation_token_details=CacheCreationTokenDetails(
                                                 ephemeral_5m_input_tokens=5_000, ephemeral_1h_input_tokens=15_000))
        usage = Usage(prompt_tokens=prompt, completion_tokens=300, prompt_tokens_details=details)
        listed = model if provider in ("gemini", "xai") else name
        expected = sum(generic_cost_per_token(model=listed, usage=usage, custom_llm_provider=provider))
        assert token_cost(info, TokenUsage(prompt, 300, 50_000, 20_000, 15_000)) == pytest.approx(expected, rel=1e-9), \
            prompt


def test_config_tiers_replace_the_maps_and_set_any_threshold(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, _ = upstreams
    own = unpriced("own", f"openai/{TIERED}", a.api_base)
    own["model_info"] = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6,
                         "input_cost_per_token_above_1k_tokens": 3e-6, "output_cost_per_token_above_1k_tokens": 5e-6}
    base_only = _info(tmp_path, f"openai/{TIERED}", input_cost_per_token=1e-6)
    assert base_only.price_source == "config" and base_only.price_tiers == ()  # no map tier under a config price
    with running_gateway(gateway_config(tmp_path, [own])) as gateway, gateway.openai() as client:
        chat(client, "own", "[prompt:1000] [words:4] at the threshold")
        chat(client, "own", "[prompt:1001] [words:4] above it")
        rows = {row["prompt_tokens"]: row["cost_usd"] for row in gateway.rows()}
    assert rows[1000] == pytest.approx(1000 * 1e-6 + 4 * 2e-6, rel=1e-9)
    assert rows[1001] == pytest.approx(1001 * 3e-6 + 4 * 5e-6, rel=1e-9)


def test_one_hour_writes_are_billed_at_their_price_and_seen_in_metrics_and_the_span(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, _ = upstreams
    entry = unpriced("own", "openai/own-model", a.api_base)
    entry["model_info"] = OWN | {"cache_creation_input_token_cost_above_1hr": 4e-6}
    turn = "[prompt:1000] [cached:600] [created:300] [created1h:200] [words:4]"
    with collector() as (received, endpoint):
        config = gateway_config(tmp_path, [entry], tracing={"otlp_endpoint": endpoint, "service_name": "gw"})
        with running_gateway(config) as gateway, gateway.openai() as client, gateway.http() as http:
            chat(client, "own", f"{turn} a long-lived prefix")
            answer = http.post("/v1/messages", json={"model": "own", "max_tokens": 50,
                                                     "messages": [{"role": "user", "content": f"{turn} as Claude"}]})
            metrics = http.get("/metrics").text
            rows = gateway.rows()
        wait_until(lambda: len([s for s in received.spans if s.kind == SERVER]) >= 2, what="both server spans")
    billed = 100 * 2e-6 + 600 * 2e-7 + 100 * 2.5e-6 + 200 * 4e-6 + 4 * 8e-6
    assert [row["cost_usd"] for row in rows] == [pytest.approx(billed, rel=1e-9)] * 2
    assert answer.json()["usage"]["cache_creation"] == {"ephemeral_5m_input_tokens": 100,
                                                        "ephemeral_1h_input_tokens": 200}
    written = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(
        "pitstop_tokens_total{") and 'model="own"' in line and 'kind="cache_creation"' in line]
    assert written == [600]
    spans = [s for s in received.spans if s.kind == SERVER]
    assert [s.attributes["gen_ai.usage.cache_creation.input_tokens"] for s in spans] == [300, 300]
    assert [s.attributes["gen_ai.usage.cache_read.input_tokens"] for s in spans] == [600, 600]


def test_a_cancelled_hedge_is_estimated_at_its_prompts_tier() -> None:
    """The race's prompt (100 tokens) is above the deployments' 99-token tier: its cancelled call's lower bound
    is at the tier's input price."""
    up = Upstreams(a=None, b=0.0)
    tiered = ModelInfo(input_cost_per_token=1e-6, input_cost_per_token_above_99_tokens=1e-5)  # type: ignore[call-arg]
    up.deployments = [Deployment(d.name, "m", cast(Backend, None), tiered, "hosted_vllm/m") for d in up.deployments]
    won = asyncio.run(up.race(policy(delay_s=0.02)).run())
    assert won.hedge is not None and won.hedge["cancelled"] == ["a"]
    assert won.hedge["cancelled_cost_usd"] == pytest.approx(100 * 1e-5)


def test_a_bad_tier_price_is_named_and_both_shapes_of_the_1_hour_split_are_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"input_cost_per_token_above_200k_tokens: a price per token, at least 0"):
        _info(tmp_path, "openai/m", input_cost_per_token_above_200k_tokens=-1.0)
    litellms = {"prompt_tokens": 900, "prompt_tokens_details": {"cache_creation_tokens": 300,
                "cache_creation_token_details": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}}}
    anthropics = {"prompt_tokens": 900, "cache_creation_input_tokens": 300,
                  "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}}
    assert usage_of(litellms) == usage_of(anthropics) == TokenUsage(900, 0, 0, 300, 200)


def test_a_route_groups_router_prices_a_long_prompt_at_its_tier(tmp_path: Path) -> None:
    """The router's predicted cost is what the request would be billed: below a model's long-context tier its
    base prices, above it the tier's, so a model cheap for short prompts stops being picked for long ones."""
    from gateway.config import parse_settings
    from gateway.pricing import rates
    from gateway.routing import build_group
    from routers.base import RoutingRequest

    tiered = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6,
              "input_cost_per_token_above_200k_tokens": 4e-6, "output_cost_per_token_above_200k_tokens": 8e-6}
    flat = {"input_cost_per_token": 2.5e-6, "output_cost_per_token": 5e-6}
    models = [{"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": "http://127.0.0.1:9/v1"},
               "model_info": info} for name, info in (("tiered", tiered), ("flat", flat))]
    group = {"name": "auto", "models": ["tiered", "flat"], "router": "tier-prior"}
    settings = parse_settings(gateway_config(tmp_path, models, route_groups=[group]))
    router = build_group(settings, settings.route_groups[0])
    info = settings.model_list[0].model_info
    (tiered_candidate,) = [c for c in router.candidates if c.model == "tiered"]
    for prompt in (1000, 200_000, 200_001, 500_000):  # the router's prices are the bill's, at the threshold too
        billed = rates(info, prompt)
        assert tiered_candidate.rates(prompt) == (billed.input, billed.output)
    picks = {}
    for prompt in (100_000, 300_000):
        decision = router.decide(RoutingRequest("x", prompt), cost_preference=1.0)
        picks[prompt] = decision.model
        assert decision.predicted_cost_usd["tiered"] == pytest.approx(
            rates(info, prompt).input * prompt + rates(info, prompt).output * 256)
    assert picks == {100_000: "tiered", 300_000: "flat"}
