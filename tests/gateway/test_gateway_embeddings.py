"""POST /v1/embeddings over a real socket, driven by the openai SDK against real upstream processes:
the direct HTTP transport and litellm's, floats and base64 (the SDK's default), retries across a
model's deployments, billing and the outcome row; bad requests are 400s naming the field, and
training exports leave embeddings out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.config import ConfigError, parse_settings
from storage.db import create_engine
from storage.export import iter_training_rows
from tests.gateway.harness import PRICE_IN, Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess, embedding_of

EMBEDDING = {"mode": "embedding"}


def embedding_model(name: str, api_base: str, transport: str = "auto") -> dict:
    entry = model_entry(name, api_base, provider="hosted_vllm", transport=transport)
    entry["model_info"] |= EMBEDDING
    return entry


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, b = upstream_processes
    models = [embedding_model("emb", a.api_base),  # direct HTTP; two deployments, `a` listed (so tried) first
              embedding_model("emb", b.api_base),
              embedding_model("emb-litellm", a.api_base, transport="litellm"),
              model_entry("mixed", a.api_base),  # a Pitstop engine (no embeddings) and a vLLM server
              model_entry("mixed", b.api_base, provider="hosted_vllm", transport="auto"),
              model_entry("chat", a.api_base)]
    groups = [{"name": "grp", "models": ["chat"], "router": "tier-prior"}]
    with running_gateway(gateway_config(tmp_path_factory.mktemp("embeddings"), models, groups)) as gateway:
        yield gateway


def expected(inputs: list[str], instance: str) -> list[list[float]]:
    return [embedding_of(text, instance, i) for i, text in enumerate(inputs)]


@pytest.mark.parametrize("model", ["emb", "emb-litellm"])
@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_sdk_embeddings_arrive_unchanged_and_are_billed_for_their_input(gw: Gateway, upstreams: tuple, model: str,
                                                                         encoding: str) -> None:
    inputs = ["one two three", "four"]
    with gw.openai() as client:  # the SDK asks for base64 unless told otherwise, and decodes it
        raw = client.embeddings.with_raw_response.create(
            model=model, input=inputs, **({"encoding_format": "float"} if encoding == "float" else {}))
    answer = raw.parse()
    assert [item.embedding for item in answer.data] == expected(inputs, "a")
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (4, 4)
    assert raw.headers["x-pitstop-model"] == model
    assert upstreams[0].stats()["bodies"][-1]["encoding_format"] == encoding
    row = gw.row(raw.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["status"], row["model"], row["route_group"]) == ("embedding", "ok", model, None)
    assert (row["prompt_tokens"], row["completion_tokens"], row["finish_reason"]) == (4, 0, None)
    assert row["cost_usd"] == pytest.approx(4 * PRICE_IN)
    assert row["prompt"] == inputs and row["completion"] is None and row["deployment"] == f"{model}#0"


def test_token_id_inputs_and_one_string_pass_through(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        ids = client.embeddings.create(model="emb", input=[[1, 2, 3], [4]], encoding_format="float")
        one = client.embeddings.create(model="emb", input="five words are right here", encoding_format="float")
    assert [item.embedding for item in ids.data] == [embedding_of([1, 2, 3], "a", 0), embedding_of([4], "a", 1)]
    assert [item.embedding for item in one.data] == [embedding_of("five words are right here", "a", 0)]
    assert upstreams[0].stats()["bodies"][-2]["input"] == [[1, 2, 3], [4]]


def test_the_direct_transport_serves_the_upstreams_bytes_as_they_came(gw: Gateway, upstreams: tuple) -> None:
    """Not parsed and written out again (bench/gateway_embeddings.py: a batch of floats is mostly that)."""
    body = {"model": "emb", "input": ["one", "two words"], "encoding_format": "float"}
    with gw.http() as http:
        through = http.post("/v1/embeddings", json=body)
    direct = httpx.post(f"{upstreams[0].api_base}/embeddings", json=body)
    assert through.status_code == direct.status_code == 200
    assert through.content == direct.content


def test_a_failing_deployment_is_retried_on_the_next_and_engines_are_skipped(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        retried = client.embeddings.with_raw_response.create(model="emb", input=["[fail:500@a] x"],
                                                             encoding_format="float")
        mixed = client.embeddings.with_raw_response.create(model="mixed", input="y", encoding_format="float")
    assert retried.parse().data[0].embedding == embedding_of("[fail:500@a] x", "b", 0)
    assert gw.row(retried.headers["x-pitstop-request-id"])["deployment"] == "emb#1"
    assert upstreams[0].stats()["requests"] == 1  # `a` was tried, failed, and `b` answered
    # `mixed`'s first deployment is a Pitstop engine, which has no embeddings endpoint: never tried.
    assert mixed.parse().data[0].embedding == embedding_of("y", "b", 0)
    assert gw.row(mixed.headers["x-pitstop-request-id"])["deployment"] == "mixed#1"


BAD_BODIES = [
    ({"model": "emb"}, 400, "input"),
    ({"model": "emb", "input": ""}, 400, "input"),
    ({"model": "emb", "input": []}, 400, "input"),
    ({"model": "emb", "input": ["a", 1]}, 400, "input"),
    ({"model": "emb", "input": ["a", ""]}, 400, "input"),
    ({"model": "emb", "input": [[]]}, 400, "input"),
    ({"model": "emb", "input": [1, -2]}, 400, "input"),
    ({"model": "emb", "input": [True]}, 400, "input"),
    ({"model": "emb", "input": ["x"] * 2049}, 400, "input"),
    ({"model": "emb", "input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
    ({"model": "emb", "input": "x", "dimensions": 0}, 400, "dimensions"),
    ({"model": "emb", "input": "x", "dimensions": True}, 400, "dimensions"),
    ({"model": "emb", "input": "x", "priority": "high"}, 400, "priority"),
    ({"input": "x"}, 400, "model"),
    ({"model": "grp", "input": "x"}, 400, "model"),  # a route group routes chats
    ({"model": "chat", "input": "x"}, 400, "model"),  # a Pitstop engine not marked mode: embedding
    ({"model": "nope", "input": "x"}, 404, "model"),
]


def test_bad_embeddings_requests_are_4xx_naming_the_field_and_leave_rows(gw: Gateway, upstreams: tuple) -> None:
    with gw.http() as http:
        answers = [http.post("/v1/embeddings", json=body) for body, _, _ in BAD_BODIES]
        answers.append(http.post("/v1/embeddings", json=["not", "an", "object"]))
    for (body, status, param), response in zip(BAD_BODIES, answers[:-1], strict=True):
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["param"] == param, body
    assert answers[-1].status_code == 400
    rows = gw.rows([r.headers["x-pitstop-request-id"] for r in answers])
    assert len(rows) == len(answers) and {r["status"] for r in rows} == {"error"}
    assert sum(u.stats()["requests"] for u in upstreams) == 0


def test_a_chat_to_an_embedding_model_is_a_400(gw: Gateway) -> None:
    with gw.openai() as client, pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="emb", messages=[{"role": "user", "content": "hi"}])
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "model_not_supported"
    assert "/v1/embeddings" in refused.value.body["message"]


def test_training_exports_leave_embeddings_out(gw: Gateway, upstreams: tuple) -> None:
    with gw.http() as http:
        embedded = http.post("/v1/embeddings", json={"model": "emb", "input": "x"})
        chatted = http.post("/v1/chat/completions", json={"model": "grp", "messages": [{"role": "user",
                                                                                        "content": "hi"}]})
    ids = {r.headers["x-pitstop-request-id"] for r in (embedded, chatted)}
    assert embedded.status_code == chatted.status_code == 200
    gw.flush()
    engine = create_engine(gw.storage_url)
    try:
        exported = {row["request_id"] for row in iter_training_rows(engine)}
    finally:
        engine.dispose()
    assert exported & ids == {chatted.headers["x-pitstop-request-id"]}
    assert {r["endpoint"] for r in gw.rows(sorted(ids))} == {"embedding", "chat"}


@pytest.mark.parametrize("where, message", [
    ("group", "route_groups.0.models: 'emb' is an embedding model"),
    ("verifier", "route_groups.0.verify.verifiers: 'emb' is an embedding model"),
])
def test_embedding_models_stay_out_of_route_groups(tmp_path: Path, where: str, message: str) -> None:
    models = [embedding_model("emb", "http://127.0.0.1:9/v1"), model_entry("chat", "http://127.0.0.1:9/v1")]
    group: dict = {"name": "grp", "models": ["emb" if where == "group" else "chat"]}
    if where == "verifier":
        group["verify"] = {"verifiers": ["emb"]}
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_settings(gateway_config(tmp_path, models, [group]))


def test_an_upstream_without_usage_is_billed_the_estimate(tmp_path: Path) -> None:
    """An embeddings server that reports no usage: the client is told, and the row charged, the estimate."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.engine.serving import serve_in_thread

    async def embed(request: object) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}]})

    with serve_in_thread(Starlette(routes=[Route("/v1/embeddings", embed, methods=["POST"])])) as url, \
            running_gateway(gateway_config(tmp_path, [embedding_model("bare", url + "/v1")])) as gateway, \
            gateway.http() as http:
        response = http.post("/v1/embeddings", json={"model": "bare", "input": "sixteen chars!!!"})
        assert response.status_code == 200 and response.json()["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
        row = gateway.row(response.headers["x-pitstop-request-id"])
    assert row["extra"]["usage_estimated"] is True and row["cost_usd"] == pytest.approx(4 * PRICE_IN)


def test_embeddings_need_a_key_where_keys_are_required(tmp_path: Path, upstreams: tuple) -> None:
    raw = gateway_config(tmp_path, [embedding_model("emb", upstreams[0].api_base)],
                         auth={"require_keys": True, "master_key": "sk-master"})
    with running_gateway(raw) as gateway, gateway.http() as http:
        refused = http.post("/v1/embeddings", json={"model": "emb", "input": "x"})
        allowed = http.post("/v1/embeddings", json={"model": "emb", "input": "x"},
                            headers={"authorization": "Bearer sk-master"})
    assert refused.status_code == 401 and allowed.status_code == 200
