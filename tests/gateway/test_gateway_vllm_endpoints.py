"""vLLM's own endpoints through the gateway over real sockets with httpx (the openai SDK has no call for them):
/classify and /score (gateway/vllm_endpoints.py) and /tokenize and /detokenize (gateway/vllm_tokenize.py).
Tiny random Llama classifiers (3 labels for /classify, 1 for /score) and a tiny chat model are served by
`pitstop engine serve`'s apps in threads, reached as a vLLM server (`hosted_vllm/`) and as a Pitstop engine
(`pitstop-engine/`), and run in the gateway's process (`pitstop-local/`). Each answer equals the engine's own
endpoint's for the same body; classify and score leave one row billed at their input tokens, tokenize none;
keys' model access, bad bodies, unknown models and a dead deployment (retried on the other) are covered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.build import build_engine
from engine.classifier_config import classifier_head
from engine.server.classifier_app import create_classifier_app
from engine.tiny_classifier import make_tiny_classifier
from engine.tiny_model import make_tiny_model
from gateway.config import ConfigError, parse_settings
from gateway.deployment_build import make_backend
from storage.keys import KeyStore
from tests.engine.serving import engine_server, serve_in_thread
from tests.gateway.harness import PRICE_IN, Gateway, gateway_config, running_gateway

CLASSIFY = {"mode": "classify", "input_cost_per_token": PRICE_IN, "output_cost_per_token": 0.0}
RERANK = {**CLASSIFY, "mode": "rerank"}
CHAT = {"input_cost_per_token": PRICE_IN, "output_cost_per_token": 0.0}
DEAD = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
MASTER = {"authorization": "Bearer master"}
INPUTS = ["the cat sat on the mat", "a dog ran", [5, 9, 12, 7]]
# A blocklist reads classify's inputs and score's texts as it reads an embeddings request's.
GUARDRAILS = [{"name": "no-codename", "kind": "blocklist", "patterns": ["bluebird"], "models": ["cls-vllm", "sc-vllm"]}]
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


def remote(name: str, provider: str, api_base: str, info: dict, **params: object) -> dict:
    return {"model_name": name, "model_info": info,
            "litellm_params": {"model": f"{provider}/served", "api_base": api_base, **params}}


def local(name: str, folder: Path, info: dict) -> dict:
    return {"model_name": name, "model_info": info,
            "litellm_params": {"model": f"pitstop-local/{name}", "model_dir": str(folder), "max_model_len": 64,
                               "num_blocks": 32}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gw-vllm")
    return {"three": make_tiny_classifier(root / "three", "llama", 3, layers=1, seed=3, labels=["neg", "neu", "pos"]),
            "one": make_tiny_classifier(root / "one", "llama", 1, layers=1, seed=2),
            "chat": make_tiny_model(root / "chat", layers=1)}


async def _short_answer(request: Request) -> JSONResponse:
    """A broken vLLM: /classify answers one result short, /score a result with no score."""
    usage = {"prompt_tokens": 3, "total_tokens": 3, "completion_tokens": 0}
    data = [] if request.url.path == "/classify" else [{"index": 0, "object": "score"}]
    return JSONResponse({"id": "x", "object": "list", "created": 0, "model": "served", "data": data, "usage": usage})


@pytest.fixture(scope="module")
def servers(folders: dict[str, Path]) -> Iterator[dict[str, str]]:
    def classifier(folder: Path) -> object:
        return create_classifier_app(build_engine(folder, num_blocks=32, max_model_len=64), folder,
                                     classifier_head(folder), "served")

    with serve_in_thread(classifier(folders["three"])) as three, serve_in_thread(classifier(folders["one"])) as one, \
            engine_server(folders["chat"], "served", num_blocks=32, max_model_len=64) as chat, \
            serve_in_thread(Starlette(routes=[Route(p, _short_answer, methods=["POST"])
                                              for p in ("/classify", "/v1/score")])) as broken:  # type: ignore[arg-type]
        yield {"three": three, "one": one, "chat": chat, "broken": broken}


@pytest.fixture(scope="module")
def gw(folders: dict[str, Path], servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    three, one, chat = (f"{servers[k]}/v1" for k in ("three", "one", "chat"))
    models = [remote("cls-vllm", "hosted_vllm", three, CLASSIFY), remote("cls-engine", "pitstop-engine", three, CLASSIFY),
              local("cls-local", folders["three"], CLASSIFY),
              remote("cls-pair", "hosted_vllm", DEAD, CLASSIFY), remote("cls-pair", "hosted_vllm", three, CLASSIFY),
              remote("cls-litellm", "hosted_vllm", three, CLASSIFY, transport="litellm"),
              remote("sc-vllm", "hosted_vllm", one, RERANK), local("sc-local", folders["one"], RERANK),
              remote("chat-http", "pitstop-engine", chat, CHAT), local("chat-local", folders["chat"], CHAT),
              remote("chat-litellm", "openai", "http://127.0.0.1:9/v1", CHAT),
              remote("cls-broken", "hosted_vllm", f"{servers['broken']}/v1", CLASSIFY),
              remote("sc-broken", "hosted_vllm", f"{servers['broken']}/v1", RERANK)]
    raw = gateway_config(tmp_path_factory.mktemp("gw-vllm-config"), models,
                         auth={"require_keys": True, "master_key": "master"}, guardrails=GUARDRAILS)
    with running_gateway(raw) as gateway:
        yield gateway


def own(url: str, path: str, body: dict) -> dict:
    """The engine's own endpoint's answer."""
    answer = httpx.post(url + path, json={**body, "model": "served"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.parametrize("model, path", [("cls-vllm", "/classify"), ("cls-engine", "/v1/classify"),
                                         ("cls-local", "/classify")])
def test_classify_answers_as_the_engine_and_bills_its_tokens(gw: Gateway, servers: dict[str, str], model: str,
                                                             path: str) -> None:
    body = {"model": model, "input": INPUTS, "truncate_prompt_tokens": 3}
    expected = own(servers["three"], "/classify", body)
    with gw.http(headers=MASTER) as http:
        answer = http.post(path, json=body)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["object"] == "list" and got["usage"] == expected["usage"]
    assert [(d["index"], d["label"], d["num_classes"]) for d in got["data"]] == \
        [(d["index"], d["label"], d["num_classes"]) for d in expected["data"]]
    assert [d["probs"] for d in got["data"]] == [pytest.approx(d["probs"], abs=1e-5) for d in expected["data"]]
    assert {d["label"] for d in got["data"]} <= {"neg", "neu", "pos"}
    row = gw.row(answer.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["status"], row["model"]) == ("classify", "ok", model)
    assert row["prompt_tokens"] == expected["usage"]["prompt_tokens"] == 9  # 3 inputs truncated to 3 tokens
    assert row["cost_usd"] == pytest.approx(9 * PRICE_IN)


@pytest.mark.parametrize("model", ["sc-vllm", "sc-local"])
def test_score_answers_as_the_engine_and_bills_its_tokens(gw: Gateway, servers: dict[str, str], model: str) -> None:
    body = {"model": model, "text_1": "what is a cat", "text_2": ["a small feline", "a large truck"]}
    expected = own(servers["one"], "/score", body)
    with gw.http(headers=MASTER) as http:
        answer = http.post("/v1/score", json=body)
        one_to_one = http.post("/score", json={**body, "text_1": ["a", "b"]})
    assert answer.status_code == one_to_one.status_code == 200, answer.text
    got = answer.json()
    assert [d["score"] for d in got["data"]] == pytest.approx([d["score"] for d in expected["data"]], abs=1e-5)
    assert got["usage"] == expected["usage"] and len(one_to_one.json()["data"]) == 2
    row = gw.row(answer.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["status"], row["model"]) == ("score", "ok", model)
    assert row["prompt_tokens"] == expected["usage"]["prompt_tokens"] > 0
    assert row["cost_usd"] == pytest.approx(row["prompt_tokens"] * PRICE_IN)


@pytest.mark.parametrize("model", ["chat-http", "chat-local"])
def test_tokenize_and_detokenize_answer_as_the_engine_and_leave_no_row(gw: Gateway, servers: dict[str, str],
                                                                      model: str) -> None:
    chat = {"model": model, "messages": MESSAGES, "add_generation_prompt": True}
    prompt = {"model": model, "prompt": "hello world", "return_token_strs": True}
    rows = len(gw.rows())
    with gw.http(headers=MASTER) as http:
        answers = [http.post("/tokenize", json=body) for body in (chat, prompt)]
        tokens = answers[0].json()["tokens"]
        text = http.post("/detokenize", json={"model": model, "tokens": tokens})
    assert [a.status_code for a in answers] == [200, 200], answers[0].text
    assert [a.json() for a in answers] == [own(servers["chat"], "/tokenize", body) for body in (chat, prompt)]
    assert answers[1].json()["token_strs"] and answers[0].json()["count"] == len(tokens) > 0
    assert text.status_code == 200 and text.json() == own(servers["chat"], "/detokenize", {"tokens": tokens})
    assert "x-pitstop-request-id" not in text.headers and len(gw.rows()) == rows  # no row: nothing computed


def test_keys_model_access_applies_to_every_endpoint(gw: Gateway) -> None:
    keys = KeyStore(gw.storage_url)
    _, key = keys.create("cls-only", models=["cls-vllm"])
    asked = {"/classify": {"model": "cls-engine", "input": "hi"},
             "/score": {"model": "sc-vllm", "text_1": "a", "text_2": "b"},
             "/tokenize": {"model": "chat-http", "prompt": "hi"},
             "/detokenize": {"model": "chat-http", "tokens": [1]}}
    with gw.http(headers={"authorization": f"Bearer {key}"}) as http:
        allowed = http.post("/classify", json={"model": "cls-vllm", "input": "hi"})
        refused = {path: http.post(path, json=body) for path, body in asked.items()}
    _, rated = keys.create("rated", rpm_limit=1)  # tokenize costs nothing, but takes a rate slot
    with gw.http(headers={"authorization": f"Bearer {rated}"}) as http:
        rates = [http.post("/tokenize", json={"model": "chat-http", "prompt": "hi"}) for _ in range(2)]
    with gw.http() as http:
        anonymous = http.post("/tokenize", json={"model": "chat-http", "prompt": "hi"})
    assert [r.status_code for r in rates] == [200, 429] and rates[1].json()["error"]["code"] == "rate_limit_exceeded"
    assert allowed.status_code == 200, allowed.text
    assert {path: (r.status_code, r.json()["error"]["param"]) for path, r in refused.items()} == \
        dict.fromkeys(asked, (403, "model"))
    assert anonymous.status_code == 401


@pytest.mark.parametrize("path, body, status, param", [
    ("/classify", [1, 2], 400, None),
    ("/classify", {"input": "hi"}, 400, "model"),
    ("/classify", {"model": "cls-vllm"}, 400, "input"),
    ("/classify", {"model": "cls-vllm", "input": []}, 400, "input"),
    ("/classify", {"model": "cls-vllm", "input": [[1, -2]]}, 400, "input"),
    ("/classify", {"model": "cls-vllm", "input": "hi", "truncate_prompt_tokens": "x"}, 400,
     "truncate_prompt_tokens"),
    ("/classify", {"model": "nope", "input": "hi"}, 404, "model"),
    ("/classify", {"model": "sc-vllm", "input": "hi"}, 400, "model"),  # a reranker: /score, not /classify
    ("/classify", {"model": "chat-http", "input": "hi"}, 400, "model"),
    ("/classify", {"model": "cls-litellm", "input": "hi"}, 400, "model"),
    ("/v1/score", {"model": "sc-vllm", "text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, 400, "text_1"),
    ("/v1/score", {"model": "sc-vllm", "text_1": "a"}, 400, "text_2"),
    ("/v1/score", {"model": "sc-vllm", "text_1": "a", "text_2": ["b", "a bluebird"]}, 400, "text_2[1]"),
    ("/classify", {"model": "cls-vllm", "input": ["ok", "a bluebird"]}, 400, "input[1]"),
    ("/v1/score", {"model": "cls-vllm", "text_1": "a", "text_2": "b"}, 400, "model"),
    ("/v1/score", {"model": "nope", "text_1": "a", "text_2": "b"}, 404, "model"),
    ("/tokenize", {"prompt": "hi"}, 400, "model"),
    ("/tokenize", {"model": "nope", "prompt": "hi"}, 404, "model"),
    ("/tokenize", {"model": "chat-litellm", "prompt": "hi"}, 400, "model"),
    ("/tokenize", {"model": "cls-vllm", "prompt": "hi"}, 400, "model"),
    ("/tokenize", {"model": "chat-local"}, 400, "prompt"),
    ("/detokenize", {"model": "chat-local", "tokens": "abc"}, 400, "tokens"),
    ("/detokenize", {"model": "chat-http", "tokens": [-1]}, 400, "tokens"),
    ("/v1/chat/completions", {"model": "cls-vllm", "messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
])
def test_bad_requests_are_openai_shaped_4xx(gw: Gateway, path: str, body: object, status: int,
                                             param: str | None) -> None:
    with gw.http(headers=MASTER) as http:
        answer = http.post(path, json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] in ("invalid_request_error",
                                                                              "not_found_error")


def test_a_dead_deployment_is_retried_on_the_other(gw: Gateway) -> None:
    with gw.http(headers=MASTER) as http:
        answer = http.post("/classify", json={"model": "cls-pair", "input": "hi"})
    assert answer.status_code == 200, answer.text
    row = gw.row(answer.headers["x-pitstop-request-id"])
    assert (row["status"], row["deployment"]) == ("ok", "cls-pair#1")
    assert gw.state is not None
    dead, live = gw.state.pool.by_model["cls-pair"]  # the first listed is tried first (least outstanding, tied)
    assert (dead.failures, live.failures) == (1, 0)


@pytest.mark.parametrize("change, message", [
    ("group", "route_groups.0.models: 'cls' is a classifier"),
    ("fallback", "fallbacks: 'cls' is a classifier"),
    ("mixed", "'cls' has entries marked model_info.mode: classify and entries not"),
])
def test_the_config_keeps_classifiers_out_of_chats(tmp_path: Path, change: str, message: str) -> None:
    models = [remote("cls", "hosted_vllm", DEAD, CLASSIFY), remote("chat", "hosted_vllm", DEAD, CHAT)]
    if change == "mixed":
        models.append(remote("cls", "hosted_vllm", DEAD, CHAT))
    groups = [{"name": "grp", "models": ["cls" if change == "group" else "chat"]}]
    sections = {"fallbacks": {"on_error": {"chat": ["cls"]}}} if change == "fallback" else {}
    with pytest.raises(ConfigError, match=message):
        parse_settings(gateway_config(tmp_path, models, groups, **sections))


def test_a_classifier_in_this_process_needs_a_classifiers_folder(folders: dict[str, Path], tmp_path: Path) -> None:
    settings = parse_settings(gateway_config(tmp_path, [local("cls", folders["chat"], CLASSIFY)]))
    with pytest.raises(ConfigError, match="mode: classify on pitstop-local/ needs a decoder classifier"):
        make_backend(settings.model_list[0], settings)


@pytest.mark.parametrize("path, body", [("/classify", {"model": "cls-broken", "input": "hi"}),
                                        ("/score", {"model": "sc-broken", "text_1": "a", "text_2": "b"})])
def test_a_malformed_answer_is_a_502_with_its_row(gw: Gateway, path: str, body: dict) -> None:
    with gw.http(headers=MASTER) as http:
        answer = http.post(path, json=body)
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["code"] == "bad_upstream_response"
    row = gw.row(answer.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["status"]) == (path.strip("/"), "error")
