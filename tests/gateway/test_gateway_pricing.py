"""What requests cost, priced as providers bill them (gateway/pricing.py, gateway/price_map.py): a listed model
without prices takes litellm's price map's (its budget binds), one the map does not know costs nothing;
prompt-cache reads and writes are billed at their prices on chat, completions, Responses and Messages; routing's baseline and the
Costs API agree with the rows. Over real sockets, with the openai SDK and the mock upstream's [prompt:N],
[cached:N] and [created:N] usage directives. Expected prices are read from litellm's own map."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.config import parse_settings
from gateway.model_list_config import ModelInfo
from gateway.pricing import TokenUsage, token_cost
from tests.gateway.harness import gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess

MASTER = "master-secret-for-pricing"
# Set on a model: input, output, cache read (a tenth of input), cache write (125% of input), Anthropic's ratios.
OWN = {"input_cost_per_token": 2e-6, "output_cost_per_token": 8e-6, "cache_read_input_token_cost": 2e-7,
       "cache_creation_input_token_cost": 2.5e-6}


def litellm_prices(name: str) -> dict[str, Any]:
    import litellm  # what litellm itself bills by (its bundled map: LITELLM_LOCAL_MODEL_COST_MAP)

    return litellm.model_cost[name]


def unpriced(name: str, model: str, api_base: str) -> dict:
    return {"model_name": name, "litellm_params": {"model": model, "api_base": api_base}}


def chat(client: openai.OpenAI, model: str, text: str, **kwargs: Any) -> str:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kwargs)
    return answer.id


def test_a_listed_model_without_prices_is_billed_at_litellms_map_and_its_budget_binds(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess], caplog: pytest.LogCaptureFixture) -> None:
    a, _ = upstreams
    models = [unpriced("mini", "openai/gpt-4o-mini", a.api_base),  # direct HTTP to the mock, billed as gpt-4o-mini
              unpriced("own", "hosted_vllm/pricing-test-own-model", a.api_base)]  # no listing: costs nothing
    config = gateway_config(tmp_path, models, auth={"require_keys": True, "master_key": MASTER})
    with caplog.at_level(logging.INFO, logger="pitstop.prices"), running_gateway(config) as gateway, \
            gateway.http() as http:
        made = http.post("/v1/keys", headers={"authorization": f"Bearer {MASTER}"},
                         json={"name": "capped", "budget_usd": 0.001})
        with gateway.openai(api_key=made.json()["secret"]) as client:
            chat(client, "own", "[prompt:50000] free")
            # 20,000 prompt tokens, 18,000 of them cached: a few tenths of a cent at gpt-4o-mini's prices
            chat(client, "mini", "[prompt:20000] [cached:18000] [words:7] an agent turn", max_tokens=10)
            with pytest.raises(openai.RateLimitError, match="spent its budget"):
                chat(client, "mini", "one more", max_tokens=10)
        rows = {row["model"]: row for row in gateway.rows()}
    listed = litellm_prices("gpt-4o-mini")
    assert listed["cache_read_input_token_cost"] < listed["input_cost_per_token"]
    expected = 2_000 * listed["input_cost_per_token"] + 18_000 * listed["cache_read_input_token_cost"] \
        + 7 * listed["output_cost_per_token"]
    assert rows["mini"]["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert rows["mini"]["cached_tokens"] == 18_000 and rows["mini"]["prompt_tokens"] == 20_000
    assert rows["own"]["cost_usd"] == 0.0
    assert "no price known for hosted_vllm/pricing-test-own-model" in caplog.text


def test_cache_reads_and_writes_are_billed_at_their_prices_on_every_api(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, _ = upstreams
    entry = model_entry("own", a.api_base)
    entry["model_info"] = dict(OWN)
    plain = model_entry("plain", a.api_base, price_in=2e-6, price_out=8e-6)  # no cache prices: no discount
    with running_gateway(gateway_config(tmp_path, [entry, plain])) as gateway, gateway.openai() as client, \
            gateway.http() as http:
        ids = [chat(client, "own", "[prompt:1000] [cached:600] [created:300] [words:4] read and write"),
               chat(client, "plain", "[prompt:1000] [cached:600] [created:300] [words:4] at full price")]
        turn = "[prompt:1000] [cached:600] [created:300] [words:4] as a"
        responded = client.responses.create(model="own", input=f"{turn} response")
        client.completions.create(model="own", prompt=f"{turn} completion")
        answer = http.post("/v1/messages", json={
            "model": "own", "max_tokens": 50,
            "messages": [{"role": "user", "content": "[prompt:1000] [cached:600] [created:300] [words:4] as Claude"}]})
        assert answer.status_code == 200, answer.text
        rows = gateway.rows()
    assert answer.json()["usage"] == {"input_tokens": 100, "cache_creation_input_tokens": 300,
                                      "cache_read_input_tokens": 600, "output_tokens": 4, "cache_creation": {
                                          "ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 0}}
    billed = 100 * 2e-6 + 600 * 2e-7 + 300 * 2.5e-6 + 4 * 8e-6
    by_endpoint = {(row["model"], row["endpoint"]): row for row in rows}
    assert by_endpoint["own", "chat"]["cost_usd"] == pytest.approx(billed, rel=1e-9)
    for endpoint in ("messages", "responses", "completion"):
        assert by_endpoint["own", endpoint]["cost_usd"] == pytest.approx(billed, rel=1e-9), endpoint
    assert responded.usage is not None and responded.usage.input_tokens_details.cached_tokens == 600
    assert by_endpoint["own", "chat"]["extra"]["cache_creation_tokens"] == 300
    assert by_endpoint["own", "chat"]["cached_tokens"] == 600
    assert by_endpoint["plain", "chat"]["cost_usd"] == pytest.approx(1000 * 2e-6 + 4 * 8e-6, rel=1e-9)
    assert len(ids) == 2


def test_routings_baseline_and_the_costs_api_price_the_same_tokens(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    """The router picks the cheap model; the baseline is the same tokens, cache reads at the costly one's own
    cache price (a tenth of its input, where the cheap one's is a half): not the cheap call's cost scaled."""
    a, b = upstreams
    cheap = model_entry("cheap", a.api_base, tier="weak")
    cheap["model_info"] |= {"input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6,
                            "cache_read_input_token_cost": 5e-7}
    costly = model_entry("costly", b.api_base, tier="strong")
    costly["model_info"] |= OWN
    group = {"name": "auto", "models": ["cheap", "costly"], "router": "tier-prior", "cost_preference": 1.0}
    config = gateway_config(tmp_path, [cheap, costly], [group], auth={"require_keys": True, "master_key": MASTER})
    start = int(time.time()) - 3_600
    with running_gateway(config) as gateway:
        with gateway.openai(api_key=MASTER) as client:
            chat(client, "auto", "[prompt:10000] [cached:9000] [words:20] a routed agent turn")
            chat(client, "costly", "[prompt:4000] [cached:3000] [words:5] asked by name")
        rows = gateway.rows()
        costs = httpx.get(f"{gateway.url}/v1/organization/costs", headers={"authorization": f"Bearer {MASTER}"},
                          params={"start_time": start, "group_by[]": "route_group"}).json()
    routed = next(row for row in rows if row["route_group"] == "auto")
    assert routed["model"] == "cheap"
    assert routed["cost_usd"] == pytest.approx(1_000 * 1e-6 + 9_000 * 5e-7 + 20 * 4e-6, rel=1e-9)
    assert routed["baseline_cost_usd"] == pytest.approx(1_000 * 2e-6 + 9_000 * 2e-7 + 20 * 8e-6, rel=1e-9)
    lines = {r["route_group"]: r for bucket in costs["data"] for r in bucket["results"]}
    for group_name, line in lines.items():
        mine = [row for row in rows if row["route_group"] == group_name]
        assert line["amount"]["value"] == pytest.approx(sum(row["cost_usd"] for row in mine), rel=1e-9)
        assert line["baseline_amount"]["value"] == pytest.approx(sum(row["baseline_cost_usd"] for row in mine),
                                                                 rel=1e-9)
    assert set(lines) == {"auto", None}


def _info(tmp_path: Path, model: str, **model_info: float) -> ModelInfo:
    entry: dict = {"model_name": "m", "litellm_params": {"model": model, "api_base": "http://127.0.0.1:9/v1"}}
    if model_info:
        entry["model_info"] = model_info
    return parse_settings(gateway_config(tmp_path, [entry])).model_list[0].model_info


@pytest.mark.parametrize(("model", "listed"), [("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"),
                                               ("gemini/gemini-2.5-pro", "gemini/gemini-2.5-pro"),
                                               ("openai/gpt-4o", "gpt-4o")])
def test_map_prices_are_litellms_cache_writes_included(tmp_path: Path, model: str, listed: str) -> None:
    info, prices = _info(tmp_path, model), litellm_prices(listed)
    assert info.price_source == "litellm"
    usage = TokenUsage(prompt=20_000, completion=500, cached=15_000, cache_creation=3_000)
    write = prices.get("cache_creation_input_token_cost", prices["input_cost_per_token"])
    expected = 2_000 * prices["input_cost_per_token"] + 15_000 * prices["cache_read_input_token_cost"] \
        + 3_000 * write + 500 * prices["output_cost_per_token"]
    assert token_cost(info, usage) == pytest.approx(expected, rel=1e-9)
    if model.startswith("anthropic/"):  # Anthropic bills writes at 125% of input
        assert write == pytest.approx(1.25 * prices["input_cost_per_token"])


def test_a_config_price_is_never_mixed_with_the_maps_and_self_hosted_names_take_no_list_price(
        tmp_path: Path) -> None:
    own = _info(tmp_path, "openai/gpt-4o", input_cost_per_token=1e-6)  # a negotiated price: no map output price
    assert (own.price_source, own.input_cost_per_token, own.output_cost_per_token) == ("config", 1e-6, 0.0)
    assert own.cache_read_input_token_cost is None  # reads at the input price: no discount unless configured
    free = _info(tmp_path, "openai/gpt-4o", input_cost_per_token=0.0, output_cost_per_token=0.0)
    assert free.price_source == "config" and token_cost(free, TokenUsage(100, 100)) == 0.0
    vllm = _info(tmp_path, "hosted_vllm/gpt-4o")  # a self-hosted model of the same name is not OpenAI's
    assert (vllm.price_source, vllm.input_cost_per_token) == ("none", 0.0)
