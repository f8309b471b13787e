"""New weights for every engine of a model through the gateway (gateway/weight_admin.py), over real
sockets: two in-process engines and one `pitstop engine serve --allow-weight-updates` behind one model
all answer as the new folder's weights do after one call, the model's cached answers are dropped; an
engine that refuses keeps its weights and the answer says which; the master key only; a model with
deployments that are not Pitstop engines, and bad bodies, are 4xx before anything changes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.async_engine import AsyncEngine
from engine.build import build_engine
from engine.sampling_params import SamplingParams
from engine.server.app import create_app
from engine.tiny_model import make_tiny_model
from tests.engine.serving import serve_in_thread
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway

MASTER = "sk-master-weights"
PROMPT = "The weights change"
ASK = {"max_tokens": 8, "temperature": 0, "ignore_eos": True, "return_token_ids": True}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gateway-weights")
    return {"a": make_tiny_model(root / "a", seed=0), "b": make_tiny_model(root / "b", seed=1)}


@pytest.fixture(scope="module")
def engine_url(models: dict[str, Path]) -> Iterator[str]:
    app = create_app(build_engine(models["a"], num_blocks=64, device="cpu"), "m", allow_weight_updates=True)
    with serve_in_thread(app) as url:
        yield url


def local(model_dir: Path) -> dict:
    return {"model_name": "m", "litellm_params": {"model": "pitstop-local/m", "model_dir": str(model_dir),
                                                  "num_blocks": 64}}


def ids_from(gateway: Gateway, headers: dict | None = None) -> tuple[list[int], str]:
    """A greedy answer's token ids, and the deployment that gave it (its outcome row's)."""
    with gateway.http() as http:
        response = http.post("/v1/completions", headers={"authorization": f"Bearer {MASTER}", **(headers or {})},
                             json={"model": "m", "prompt": PROMPT, **ASK})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["token_ids"], gateway.row(response.headers["x-pitstop-request-id"])["deployment"]


def each_engine(gateway: Gateway, engine_url: str) -> list[list[int]]:
    """What each engine behind `m` answers, asked directly: the two in the gateway's process, then the one
    over HTTP (the gateway itself keeps a prompt on one engine: prefix affinity)."""
    assert gateway.state is not None
    answers = []
    params = SamplingParams(temperature=0, max_tokens=ASK["max_tokens"], ignore_eos=True)

    async def greedy(engine: AsyncEngine) -> list[int]:
        return [t async for out in engine.generate(PROMPT, params) for t in out.new_token_ids]

    for deployment in gateway.state.pool.by_model["m"][:2]:
        answers.append(asyncio.run(greedy(deployment.backend.engine)))  # type: ignore[attr-defined]
    response = httpx.post(f"{engine_url}/v1/completions", json={"model": "m", "prompt": PROMPT, **ASK}, timeout=60)
    return [*answers, response.json()["choices"][0]["token_ids"]]


def fresh_answer(model_dir: Path) -> list[int]:
    with serve_in_thread(create_app(build_engine(model_dir, num_blocks=64, device="cpu"), "m")) as url:
        response = httpx.post(f"{url}/v1/completions", json={"model": "m", "prompt": PROMPT, **ASK}, timeout=60)
    return response.json()["choices"][0]["token_ids"]


def update(gateway: Gateway, body: dict, key: str | None = MASTER) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with gateway.http() as http:
        return http.post("/update_weights_from_disk", json=body, headers=headers, timeout=120)


def test_every_engine_of_the_model_takes_the_new_weights(models: dict[str, Path], engine_url: str,
                                                         tmp_path: Path) -> None:
    on_a, on_b = fresh_answer(models["a"]), fresh_answer(models["b"])
    assert on_a != on_b
    entries = [local(models["a"]), local(models["a"]), model_entry("m", engine_url + "/v1")]
    raw = gateway_config(tmp_path, entries, auth={"master_key": MASTER}, cache={"requests": "opt_in"},
                         server={"allowed_fails": 1000})
    with running_gateway(raw) as gateway:
        assert ids_from(gateway, {"x-pitstop-cache": "use-cache"})[0] == on_a  # kept: the update must drop it
        assert each_engine(gateway, engine_url) == [on_a] * 3
        response = update(gateway, {"model": "m", "model_path": str(models["b"])})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["success"] is True and len(answer["engines"]) == 3
        assert all(engine["success"] for engine in answer["engines"])
        assert answer["cache_deleted"]["deleted"] >= 1  # the answers of a's weights, cached above
        assert each_engine(gateway, engine_url) == [on_b] * 3
        assert ids_from(gateway, {"x-pitstop-cache": "use-cache"})[0] == on_b  # not the cached answer of a's


def test_an_engine_that_refuses_keeps_its_weights_and_the_answer_says_so(models: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    refusing = create_app(build_engine(models["a"], num_blocks=64, device="cpu"), "m")  # no --allow-weight-updates
    with serve_in_thread(refusing) as url, running_gateway(gateway_config(
            tmp_path, [local(models["a"]), model_entry("m", url + "/v1")], auth={"master_key": MASTER})) as gateway:
        response = update(gateway, {"model": "m", "model_path": str(models["b"])})
        assert response.status_code == 502, response.text
        answer = response.json()
        assert answer["success"] is False and answer["error"]["code"] == "weight_update_failed"
        assert "m#1" in answer["error"]["message"]
        by_deployment = {engine["deployments"][0]: engine for engine in answer["engines"]}
        assert by_deployment["m#0"]["success"] is True
        assert by_deployment["m#1"]["success"] is False and by_deployment["m#1"]["status"] == 403


def test_the_master_key_bad_bodies_and_other_deployments(models: dict[str, Path], tmp_path: Path) -> None:
    entries = [local(models["a"]), model_entry("api", "http://127.0.0.1:9/v1", provider="hosted_vllm"),
               local(models["a"]) | {"model_name": "mixed"},
               model_entry("mixed", "http://127.0.0.1:9/v1", provider="hosted_vllm")]
    with running_gateway(gateway_config(tmp_path, entries, auth={"master_key": MASTER})) as gateway:
        good = {"model": "m", "model_path": str(models["b"])}
        assert update(gateway, good, key=None).status_code == 401
        assert update(gateway, good, key="sk-not-the-master").status_code == 401
        for body, status, param in (({"model_path": str(models["b"])}, 400, "model"),
                                    ({"model": "m"}, 400, "model_path"),
                                    ({**good, "abort_all_requests": "yes"}, 400, "abort_all_requests"),
                                    ({**good, "model": "nope"}, 404, "model"),
                                    ({**good, "model": "api"}, 400, "model"),
                                    ({**good, "model": "mixed"}, 400, "model")):
            response = update(gateway, body)
            assert response.status_code == status, (body, response.text)
            assert response.json()["error"]["param"] == param
        other = update(gateway, {**good, "model_path": str(tmp_path)})  # not a model folder: the engine's 400
        assert other.status_code == 502 and other.json()["engines"][0]["status"] == 400
    with running_gateway(gateway_config(tmp_path / "open", [local(models["a"])])) as gateway:
        assert update(gateway, {"model": "m", "model_path": str(models["b"])}).status_code == 403  # no master key
