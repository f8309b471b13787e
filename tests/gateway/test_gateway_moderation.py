"""POST /v1/moderations over a real socket with the openai SDK's `client.moderations.create`, answered by a
`mode: moderation` model on the fake upstream processes (tests/gateway/upstream_moderation.py: a text's
`[flag:violence]` is what it is flagged for): a string, a list, multimodal parts, the default model, the
answer passed back as the upstream gave it, the outcome row (no text kept, extra.flagged and its
categories, billed as embeddings), a failing deployment retried on the other and both deployments used,
a malformed answer a 502, bad bodies and models 4xx in OpenAI's shape naming the field, keys' models,
budgets and rates, the metrics; and the config keeping moderation models out of chats."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.config import ConfigError, parse_settings
from rankers.work import CHARS_PER_TOKEN
from storage.db import create_engine
from storage.export import iter_training_rows
from storage.keys import KeyStore
from tests.gateway.harness import PRICE_IN, Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess
from tests.gateway.upstream_moderation import moderation_result

MODEL = "omni-moderation-latest"


def moderation_entry(name: str, api_base: str, **params: str) -> dict:
    """An OpenAI moderation model at `api_base`: `openai/` with an api_base goes over the direct transport
    (`transport: litellm` through litellm's `amoderation`)."""
    return {"model_name": name, "litellm_params": {"model": f"openai/{MODEL}", "api_base": api_base, "api_key": "k",
                                                   **params},
            "model_info": {"mode": "moderation", "input_cost_per_token": PRICE_IN}}


def estimated_cost(*texts: str) -> float:
    """What a moderation is billed: OpenAI reports no usage, so the prompt's estimate at the input price."""
    return math.ceil(sum(map(len, texts)) / CHARS_PER_TOKEN) * PRICE_IN


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, b = upstream_processes
    models = [moderation_entry(MODEL, a.api_base), moderation_entry(MODEL, b.api_base),
              moderation_entry("mod-litellm", a.api_base, transport="litellm"), model_entry("chat", a.api_base)]
    tmp = tmp_path_factory.mktemp("moderation")
    storage = {"url": f"sqlite:///{tmp / 'gateway.db'}", "spool_path": str(tmp / "spool.jsonl"), "store_text": True}
    with running_gateway(gateway_config(tmp, models, [{"name": "grp", "models": ["chat"]}], storage=storage)) as g:
        yield g


def test_a_string_is_moderated_and_the_upstreams_answer_passed_back(gw: Gateway, upstreams: tuple) -> None:
    text = "I will hurt them [flag:violence]"
    with gw.openai() as client:
        answer = client.moderations.with_raw_response.create(input=text)  # no model: OpenAI's default
    body = answer.parse()
    assert body.id == "modr-a-1" and body.model == MODEL  # the first deployment's, as it said
    assert body.results[0].model_dump(by_alias=True, exclude_none=True) == moderation_result(text)
    assert body.results[0].flagged and body.results[0].categories.violence
    assert upstreams[0].stats()["bodies"] == [{"model": MODEL, "input": text}]  # as sent, no gateway fields
    row = gw.row(answer.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["status"], row["model"], row["deployment"]) == ("moderation", "ok", MODEL, f"{MODEL}#0")
    assert row["prompt"] is None and row["completion"] is None  # no text kept, store_text or not
    assert row["extra"]["flagged"] is True and row["extra"]["categories"] == ["violence"]
    assert row["extra"]["usage_estimated"] is True and row["completion_tokens"] == 0
    assert row["cost_usd"] == pytest.approx(estimated_cost(text))


def test_a_list_and_multimodal_parts(gw: Gateway, upstreams: tuple) -> None:
    texts = ["fine", "self harm [flag:self-harm/intent]", "hateful [flag:hate=0.3]"]
    parts = [{"type": "text", "text": "look [flag:sexual]"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    with gw.openai() as client:
        listed = client.moderations.create(model=MODEL, input=texts)
        mixed = client.moderations.create(model=MODEL, input=parts)  # type: ignore[arg-type]
    assert [r.model_dump(by_alias=True, exclude_none=True) for r in listed.results] == [
        moderation_result(t) for t in texts]
    assert [r.flagged for r in listed.results] == [False, True, False]  # 0.3 is under the model's own cut
    assert len(mixed.results) == 1 and mixed.results[0].categories.sexual
    assert mixed.results[0].category_applied_input_types.sexual == ["text", "image"]
    assert upstreams[0].stats()["bodies"][1]["input"] == parts  # the parts as sent, image and all
    row = gw.row(gw.request_ids[-1])
    assert row["extra"]["categories"] == ["sexual"] and row["cost_usd"] == pytest.approx(estimated_cost(parts[0]["text"]))


def test_the_litellm_path_and_the_bare_path(gw: Gateway, upstreams: tuple) -> None:
    """Through litellm's `amoderation` (OpenAI's client at the fake's api_base) the answer is OpenAI's as
    well: its categories under OpenAI's names, not the SDK's field names; /moderations answers as /v1 does."""
    text = "threat [flag:harassment/threatening]"
    with gw.openai() as client, gw.http() as http:
        through = client.moderations.create(model="mod-litellm", input=[text, "calm"])
        bare = http.post("/moderations", json={"model": MODEL, "input": text})
    assert [r.model_dump(by_alias=True, exclude_none=True) for r in through.results] == [
        moderation_result(text), moderation_result("calm")]
    assert bare.status_code == 200 and bare.json()["results"] == [moderation_result(text)]
    row = gw.row(gw.request_ids[-2])
    assert (row["model"], row["deployment"], row["extra"]["categories"]) == (
        "mod-litellm", "mod-litellm#0", ["harassment/threatening"])


def test_a_failing_deployment_is_retried_on_the_other_and_both_are_used(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    with gw.openai() as client, gw.http() as http:
        retried = client.moderations.with_raw_response.create(model=MODEL, input="[fail:500@a] x [flag:hate]")
        asked = (a.stats()["requests"], b.stats()["requests"])
        bad = http.post("/v1/moderations", json={"model": MODEL, "input": "[malformed]"})
        short = http.post("/v1/moderations", json={"model": MODEL, "input": ["a", "[short] b"]})

        async def four() -> list:
            async_client = gw.async_openai()
            try:
                return await asyncio.gather(*(async_client.moderations.create(model=MODEL, input=f"[delay:0.3] {i}")
                                              for i in range(4)))
            finally:
                await async_client.close()

        together = asyncio.run(four())
    assert retried.parse().id.startswith("modr-b-") and retried.parse().results[0].categories.hate
    assert asked == (1, 1)  # the first deployment failed, the second answered
    row = gw.row(retried.headers["x-pitstop-request-id"])
    assert (row["deployment"], row["status"]) == (f"{MODEL}#1", "ok")
    for malformed in (bad, short):  # a result that is not one, or one result short: retried, then a 502
        assert malformed.status_code == 502 and malformed.json()["error"]["code"] == "bad_upstream_response"
    assert {answer.id.split("-")[1] for answer in together} == {"a", "b"}  # least outstanding: both take some


BAD = [
    ([], 400, None),
    ({"model": MODEL}, 400, "input"),
    ({"model": MODEL, "input": ""}, 400, "input"),
    ({"model": MODEL, "input": []}, 400, "input"),
    ({"model": MODEL, "input": 7}, 400, "input"),
    ({"model": MODEL, "input": ["a", 7]}, 400, "input[1]"),
    ({"model": MODEL, "input": ["a", ""]}, 400, "input[1]"),
    ({"model": MODEL, "input": ["a"] * 2049}, 400, "input"),
    ({"model": MODEL, "input": [{"type": "text", "text": "a"}, "b"]}, 400, "input[1]"),
    ({"model": MODEL, "input": [{"type": "audio", "text": "a"}]}, 400, "input[0]"),
    ({"model": MODEL, "input": [{"type": "image_url", "image_url": "http://x/y.png"}]}, 400, "input[0]"),
    ({"model": 5, "input": "a"}, 400, "model"),
    ({"model": MODEL, "input": "a", "priority": "high"}, 400, "priority"),
    ({"model": "nope", "input": "a"}, 404, "model"),
    ({"model": "chat", "input": "a"}, 400, "model"),  # a chat model
    ({"model": "grp", "input": "a"}, 400, "model"),  # a route group
]


def test_bad_requests_are_4xx_in_openais_shape_naming_the_field(gw: Gateway, upstreams: tuple) -> None:
    with gw.http() as http:
        answers = [http.post("/v1/moderations", json=body) for body, _, _ in BAD]
        answers.append(http.post("/v1/moderations", content=b"{not json"))
        chat = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        embeddings = http.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
    for (body, status, param), answer in zip(BAD, answers[:-1], strict=True):
        assert answer.status_code == status, (body, answer.text)
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, (body, error)
        assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error") and error["message"]
    assert answers[-1].status_code == 400
    for answer in answers[-3:-1]:  # told which models moderate
        assert answer.json()["error"]["code"] == "model_not_supported" and MODEL in answer.json()["error"]["message"]
    for refused in (chat, embeddings):  # and a moderation model takes nothing else
        assert refused.status_code == 400 and "/v1/moderations" in refused.json()["error"]["message"]
    rows = gw.rows([a.headers["x-pitstop-request-id"] for a in answers])
    assert len(rows) == len(answers) and {(r["status"], r["endpoint"]) for r in rows} == {("error", "moderation")}
    assert upstreams[0].stats()["requests"] == upstreams[1].stats()["requests"] == 0


def test_metrics_count_moderations_and_training_exports_leave_them_out(gw: Gateway, upstreams: tuple) -> None:
    def requests_ok(http: httpx.Client) -> float:
        text = http.get("/metrics").text
        found = re.search(rf'^pitstop_requests_total\{{model="{MODEL}",route_group="",status="ok"\}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    with gw.http() as http, gw.openai() as client:
        before = requests_ok(http)
        answer = client.moderations.with_raw_response.create(input="hello")
        assert requests_ok(http) == before + 1
    gw.flush()
    engine = create_engine(gw.storage_url)
    try:
        exported = {row["request_id"] for row in iter_training_rows(engine)}
    finally:
        engine.dispose()
    assert answer.headers["x-pitstop-request-id"] not in exported


def test_keys_models_budgets_and_rates_apply(upstreams: tuple, tmp_path: Path) -> None:
    a = upstreams[0]
    raw = gateway_config(tmp_path, [moderation_entry(MODEL, a.api_base), moderation_entry("other", a.api_base)],
                         auth={"require_keys": True, "master_key": "master"})
    text = "x" * 400  # 100 tokens estimated
    with running_gateway(raw) as gateway:
        keys = KeyStore(gateway.storage_url)
        budget_id, budget = keys.create("budget", budget_usd=1.5 * estimated_cost(text), models=[MODEL])
        _, rated = keys.create("rated", rpm_limit=1)
        with gateway.openai() as anonymous, gateway.openai(api_key=budget) as client, \
                gateway.openai(api_key=rated) as limited:
            with pytest.raises(openai.AuthenticationError):
                anonymous.moderations.create(input=text)
            client.moderations.create(input=text)
            client.moderations.create(input=text)  # the second starts with half a moderation left
            with pytest.raises(openai.RateLimitError) as over:
                client.moderations.create(input=text)
            with pytest.raises(openai.PermissionDeniedError) as other:
                client.moderations.create(model="other", input=text)
            limited.moderations.create(input=text)
            with pytest.raises(openai.RateLimitError) as rate:
                limited.moderations.create(input=text)
        gateway.flush()  # the spend goes into the key's row with the outcome rows' batch
        assert keys.get(budget_id).spent_usd == pytest.approx(2 * estimated_cost(text))  # type: ignore[union-attr]
    assert isinstance(over.value.body, dict) and over.value.body["code"] == "budget_exceeded"
    assert isinstance(other.value.body, dict) and other.value.body["param"] == "model"
    assert isinstance(rate.value.body, dict) and rate.value.body["code"] == "rate_limit_exceeded"


def test_a_wildcards_moderation_model(upstreams: tuple, tmp_path: Path) -> None:
    """A name a `mode: moderation` wildcard matches moderates, and is kept out of chats once it is a model."""
    wildcard = moderation_entry("mod-*", upstreams[0].api_base)
    wildcard["litellm_params"]["model"] = "openai/omni-moderation-*"
    with running_gateway(gateway_config(tmp_path, [wildcard, model_entry("chat", upstreams[0].api_base)])) as gateway, \
            gateway.openai() as client, gateway.http() as http:
        answer = client.moderations.create(model="mod-latest", input="[flag:hate]")
        chat = http.post("/v1/chat/completions", json={"model": "mod-latest", "messages": [{"role": "user",
                                                                                            "content": "x"}]})
        other = http.post("/v1/moderations", json={"model": "chat", "input": "x"})
    assert answer.results[0].categories.hate
    assert upstreams[0].stats()["bodies"] == [{"model": "omni-moderation-latest", "input": "[flag:hate]"}]
    assert chat.status_code == 400 and "/v1/moderations" in chat.json()["error"]["message"]
    assert other.status_code == 400 and "mod-latest" in other.json()["error"]["message"]


@pytest.mark.parametrize("change, message", [
    ("engine", "Pitstop's engines and encoders serve no /moderations"),
    ("provider", "anthropic/ does not serve"),
    ("group", "route_groups.0.models: 'mod' is a moderation model"),
    ("fallback", "fallbacks: 'mod' is a moderation model"),
    ("mixed", "'mod' has entries marked model_info.mode: moderation and entries not"),
])
def test_the_config_keeps_moderation_models_out_of_chats(tmp_path: Path, change: str, message: str) -> None:
    base = "http://127.0.0.1:9/v1"
    mod = moderation_entry("mod", base)
    if change in ("engine", "provider"):
        mod["litellm_params"]["model"] = "pitstop-engine/m" if change == "engine" else "anthropic/claude"
    models = [mod, model_entry("chat", base)]
    if change == "mixed":
        models.append(model_entry("mod", base))
    groups = [{"name": "grp", "models": ["mod" if change == "group" else "chat"]}]
    sections = {"fallbacks": {"on_error": {"chat": ["mod"]}}} if change == "fallback" else {}
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_settings(gateway_config(tmp_path, models, groups, **sections))


def test_usage_reports_moderations_apart_from_embeddings(gw: Gateway, upstreams: tuple) -> None:
    start = int(time.time()) - 3_600
    with gw.openai() as client:
        client.moderations.create(input="count me too [flag:violence]")
    # Usage counts what was answered, and the failures that cost (a malformed answer's estimated tokens).
    rows = [r for r in gw.rows() if r["endpoint"] == "moderation" and (r["status"] == "ok" or r["cost_usd"] > 0)]
    with gw.http() as http:
        page = http.get("/v1/organization/usage/moderations", params={"start_time": start, "group_by[]": "model"})
        embedded = http.get("/v1/organization/usage/embeddings", params={"start_time": start}).json()
    assert page.status_code == 200, page.text
    got = {r["model"]: r for bucket in page.json()["data"] for r in bucket["results"]}
    expected: dict[str, tuple[int, int]] = {}
    for row in rows:
        requests, tokens = expected.get(row["model"], (0, 0))
        expected[row["model"]] = (requests + 1, tokens + row["prompt_tokens"])
    assert {model: (r["num_model_requests"], r["input_tokens"]) for model, r in got.items()} == expected
    assert all(r["object"] == "organization.usage.moderations.result" for r in got.values()) and MODEL in got
    assert not [r for bucket in embedded["data"] for r in bucket["results"]]  # nothing of the moderations there
