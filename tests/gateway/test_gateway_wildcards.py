"""Wildcard models (gateway/wildcards.py), litellm's `model_name: "provider/*"`: a name a pattern matches is
served by it, sent upstream as its `litellm_params.model` with the matched part, priced by the pattern's
model_info or litellm's price map, listed, limited to the keys allowed it; the most specific pattern wins;
what no pattern matches is a 404; bad configs are refused."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from gateway.config import ConfigError, parse_settings
from gateway.wildcards import WildcardModels, name_matches
from tests.gateway.harness import gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.upstream import UpstreamProcess

MASTER = "master-secret-for-wildcards"


def wildcard(name: str, model: str, api_base: str, **info: float) -> dict:
    entry: dict = {"model_name": name, "litellm_params": {"model": model, "api_base": api_base}}
    if info:
        entry["model_info"] = info
    return entry


def models(a: UpstreamProcess, b: UpstreamProcess) -> list[dict]:
    special = wildcard("up/special-*", "hosted_vllm/*", b.api_base, input_cost_per_token=1e-6,
                       output_cost_per_token=3e-6)  # more specific than up/*: through litellm to b, its own prices
    special["litellm_params"]["transport"] = "litellm"
    return [model_entry("listed", a.api_base),
            wildcard("up/*", "openai/*", a.api_base),  # direct HTTP; litellm's prices for openai/<name>
            special,
            wildcard("*", "openai/catch-*", b.api_base)]


def ask(client: openai.OpenAI, model: str) -> str:
    """The answer's text (its `model` is what the upstream says it ran)."""
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi there"}])
    return answer.choices[0].message.content or ""


def test_names_the_patterns_match_are_served_sent_and_priced_as_they_say(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, b = upstreams
    with running_gateway(gateway_config(tmp_path, models(a, b))) as gateway, gateway.openai() as client:
        answered = [ask(client, model) for model in ("up/gpt-4o", "up/special-one", "whatever-model", "up/gpt-4o")]
        assert all(answered)
        listed = {m.id: m for m in client.models.list().data}
        assert client.models.retrieve("up/gpt-4o-mini").id == "up/gpt-4o-mini"  # a name it matches is a model
        rows = gateway.rows()
        assert gateway.state is not None
        deployments = {d.model_name: d for d in gateway.state.pool.deployments}
    assert sorted(row["model"] for row in rows) == ["up/gpt-4o", "up/gpt-4o", "up/special-one", "whatever-model"]
    assert [body["model"] for body in a.stats()["bodies"]] == ["gpt-4o", "gpt-4o"]
    assert [body["model"] for body in b.stats()["bodies"]] == ["one", "catch-whatever-model"]
    # one deployment a name, made on its first request and reused
    assert sorted(deployments) == ["listed", "up/gpt-4o", "up/gpt-4o-mini", "up/special-one", "whatever-model"]
    assert deployments["up/special-one"].provider_model == "hosted_vllm/one"  # its `*`: what up/special-* left
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    assert len(by_model["up/gpt-4o"]) == 2
    for row in by_model["up/gpt-4o"]:  # litellm's price map: openai/gpt-4o at 2.5 and 10 dollars a million tokens
        assert row["cost_usd"] == pytest.approx(row["prompt_tokens"] * 2.5e-6 + row["completion_tokens"] * 1e-5)
        assert row["cost_usd"] > 0
    special = by_model["up/special-one"][0]
    assert special["cost_usd"] == pytest.approx(special["prompt_tokens"] * 1e-6 + special["completion_tokens"] * 3e-6)
    assert by_model["whatever-model"][0]["cost_usd"] == 0.0  # openai/catch-whatever-model: no price known
    assert {"up/*", "up/special-*", "*", "up/gpt-4o", "listed"} <= set(listed)
    assert listed["up/*"].model_extra["pitstop"] == {"wildcard": True, "sent_as": "openai/*"}


def test_without_a_catch_all_an_unknown_name_is_a_404_and_routing_stays_as_it_was(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, b = upstreams
    config = gateway_config(tmp_path, models(a, b)[:2])
    with running_gateway(config) as gateway, gateway.openai() as client:
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="elsewhere/x", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="up/", messages=[{"role": "user", "content": "hi"}])  # `*` is 1+ chars
        assert client.chat.completions.create(model="listed", messages=[{"role": "user", "content": "hi"}]).model \
            == "listed"
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_keys_may_be_limited_to_a_wildcard(tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, b = upstreams
    config = gateway_config(tmp_path, models(a, b)[:3], auth={"require_keys": True, "master_key": MASTER})
    admin = {"authorization": f"Bearer {MASTER}"}
    with running_gateway(config) as gateway, gateway.http() as http:
        made = http.post("/v1/keys", headers=admin, json={"name": "team", "models": ["up/*"]})
        narrower = http.post("/v1/keys", headers=admin, json={"name": "minis", "models": ["up/gpt-4o-mini"]})
        typo = http.post("/v1/keys", headers=admin, json={"name": "typo", "models": ["down/*"]})
        assert made.status_code == narrower.status_code == 201, (made.text, narrower.text)
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=made.json()["secret"], max_retries=0)
        assert ask(client, "up/gpt-4o") and ask(client, "up/special-x")
        with pytest.raises(openai.PermissionDeniedError):
            ask(client, "listed")
        ids = {m.id for m in client.models.list().data}
    assert typo.status_code == 400 and "'down/*' is neither a model nor a route group" in typo.text
    assert "listed" not in ids and {"up/*", "up/special-*", "up/gpt-4o"} <= ids


def test_a_wildcard_models_first_request_holds_its_keys_budget(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    """The model is made a deployment before the budget hold is priced: the first request to up/gpt-4o holds
    its worst case at litellm's price (4,096 answer tokens at $10 a million, $0.04), so a second request of a
    key with a $0.01 budget waits for it to settle."""
    a, b = upstreams
    config = gateway_config(tmp_path, models(a, b)[:2], auth={"require_keys": True, "master_key": MASTER})
    with running_gateway(config) as gateway, gateway.http() as http:
        made = http.post("/v1/keys", headers={"authorization": f"Bearer {MASTER}"},
                         json={"name": "thrifty", "budget_usd": 0.01})
        headers = {"authorization": f"Bearer {made.json()['secret']}"}

        def send(text: str) -> httpx.Response:
            return http.post("/v1/chat/completions", headers=headers,
                             json={"model": "up/gpt-4o", "messages": [{"role": "user", "content": text}]})

        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(send, "[delay:1.5] a slow one")
            wait_until(lambda: a.stats()["requests"] == 1, what="the first request reached the upstream")
            second = send("the next")
            assert first.result().status_code == 200
    assert second.status_code == 429 and second.json()["error"]["code"] == "budget_held", second.text


def test_bad_wildcard_configs_are_refused(tmp_path: Path) -> None:
    def settings(entries: list[dict], **sections: object) -> None:
        parse_settings(gateway_config(tmp_path, entries, **sections))

    with pytest.raises(ConfigError, match=r"model_list.0.model_name: a wildcard has one '\*'"):
        settings([wildcard("a/*/*", "openai/*", "http://x/v1")])
    with pytest.raises(ConfigError, match=r"litellm_params.model: a '\*' takes the matched part"):
        settings([wildcard("a", "openai/*", "http://x/v1")])
    with pytest.raises(ConfigError, match="an engine in this process serves its one model folder"):
        settings([{"model_name": "local/*", "litellm_params": {"model": "pitstop-local/*", "model_dir": "m"}}])
    with pytest.raises(ConfigError, match=r"route_groups.0.models: 'a/\*' is a wildcard"):
        settings([model_entry("b", "http://x/v1"), wildcard("a/*", "openai/*", "http://x/v1")],
                 route_groups=[{"name": "g", "models": ["b", "a/*"]}])


def test_the_most_specific_pattern_wins_and_adoption_is_bounded() -> None:
    entries = parse_settings({"model_list": [wildcard("*", "openai/*", "http://x/v1"),
                                             wildcard("a/*", "openai/a-*", "http://x/v1"),
                                             wildcard("a/b*", "openai/ab-*", "http://x/v1"),
                                             wildcard("*-mini", "openai/*-small", "http://x/v1")]}).wildcards
    table = WildcardModels(entries, max_models=3)
    sent = {name: table.match(name).litellm_params.model for name in ("a/bc", "a/x", "zz-mini")}  # type: ignore[union-attr]
    assert sent == {"a/bc": "openai/ab-c", "a/x": "openai/a-x", "zz-mini": "openai/zz-small"}
    assert table.match("a/x") is table.adopted["a/x"]  # adopted once
    with pytest.raises(Exception, match="already serves 3 models"):
        table.match("fourth")
    assert name_matches("anthropic/*", "anthropic/claude") and not name_matches("anthropic/*", "anthropic/")
    assert name_matches("a*c", "abbc") and not name_matches("a.c", "abc") and name_matches("x", "x")


def test_a_wildcard_only_config_serves_chat_and_embeddings(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, _ = upstreams
    with running_gateway(gateway_config(tmp_path, [wildcard("*", "openai/*", a.api_base)])) as gateway, \
            gateway.openai() as client:
        assert ask(client, "m1")
        vectors = client.embeddings.create(model="e1", input="hello")
    assert len(vectors.data) == 1 and vectors.data[0].embedding
    assert [body["model"] for body in a.stats()["bodies"]] == ["m1", "e1"]


def test_a_fallback_chain_may_name_a_model_a_wildcard_serves(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, b = upstreams
    config = gateway_config(tmp_path, [model_entry("main", b.api_base), wildcard("up/*", "openai/*", a.api_base)],
                            fallbacks={"on_error": {"main": ["up/spare"]}})
    with running_gateway(config) as gateway, gateway.http() as http:
        answer = http.post("/v1/chat/completions", json={"model": "main", "messages": [
            {"role": "user", "content": "[fail:500@b] hello"}]})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-pitstop-fallback-from"] == "main" and answer.headers["x-pitstop-model"] == "up/spare"
    assert [body["model"] for body in a.stats()["bodies"]] == ["spare"]
    with pytest.raises(ConfigError, match="fallbacks: 'down/x' is not a chat model_name"):
        parse_settings(gateway_config(tmp_path, [model_entry("main", b.api_base), wildcard("up/*", "openai/*", "x")],
                                      fallbacks={"on_error": {"main": ["down/x"]}}))
