"""An RL trainer's calls to its rollout engines through the gateway (gateway/rl_admin.py), over real sockets:
a model on an engine in the gateway's process and one `pitstop engine serve --allow-weight-updates
--enable-sleep-mode`. A pause holds the model's requests in the gateway (none reaches an engine, none
counts on a deployment) until the resume, the model stays ready and no deployment is marked failed; a
level 2 round (sleep, weights, update, KV cache) answers with the new weights, the refusals of engines
leaving the hold in place; a model with other deployments, bad bodies and callers without the master key
are refused before anything changes; an engine that cannot be reached is a 502 naming it, and a request
held past its timeout a 503 `model_paused`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from engine.async_engine import AsyncEngine
from engine.build import build_engine
from engine.server.app import create_app
from engine.tiny_model import make_tiny_model
from tests.engine.serving import serve_in_thread
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.test_gateway_weight_updates import ASK, MASTER, PROMPT, fresh_answer, local
from tests.storage.pg_cluster import free_port


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gateway-rl")
    return {"a": make_tiny_model(root / "a", seed=0), "b": make_tiny_model(root / "b", seed=1)}


@contextmanager
def rollout_server(model_dir: Path) -> Iterator[tuple[str, AsyncEngine]]:
    app = create_app(build_engine(model_dir, num_blocks=64, device="cpu"), "m", allow_weight_updates=True,
                     enable_sleep_mode=True)
    with serve_in_thread(app) as url:
        yield url, app.state.pitstop.engine


@contextmanager
def two_engines(models: dict[str, Path], tmp_path: Path) -> Iterator[tuple[Gateway, list[AsyncEngine]]]:
    """Model m on an engine in the gateway and one over HTTP: the gateway, and both engines."""
    with rollout_server(models["a"]) as (url, remote), running_gateway(gateway_config(
            tmp_path, [local(models["a"]), model_entry("m", url + "/v1")], auth={"master_key": MASTER},
            server={"request_timeout_s": 60})) as gateway:
        assert gateway.state is not None
        yield gateway, [gateway.state.pool.by_model["m"][0].backend.engine, remote]  # type: ignore[attr-defined]


def admin(gateway: Gateway | httpx.Client, method: str, path: str, body: dict | None = None,
          key: str | None = MASTER) -> httpx.Response:
    """A call with the master key (or `key`), on a client of its own or the one given."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if isinstance(gateway, httpx.Client):
        return gateway.request(method, path, json=body, headers=headers, timeout=120)
    with gateway.http() as http:
        return http.request(method, path, json=body, headers=headers, timeout=120)


def token_ids(gateway: Gateway, prompt: str = PROMPT) -> list[int]:
    with gateway.http() as http:
        response = http.post("/v1/completions", headers={"authorization": f"Bearer {MASTER}"},
                             json={"model": "m", "prompt": prompt, **ASK}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["token_ids"]


def asked_while_held(gateway: Gateway, engines: list[AsyncEngine]) -> tuple[threading.Thread, list]:
    """A completion sent now, once the gateway holds it: it reached no engine and no deployment."""
    assert gateway.state is not None
    got: list = []
    thread = threading.Thread(target=lambda: got.append(token_ids(gateway)))
    thread.start()
    wait_until(lambda: gateway.state.dispatcher.holds.waiting.get("m") == 1, what="the request held")  # type: ignore[union-attr]
    assert not any(engine._parked for engine in engines)
    assert all(d.outstanding == 0 for d in gateway.state.pool.by_model["m"])
    return thread, got


def untouched(gateway: Gateway) -> bool:
    assert gateway.state is not None
    return all(d.failures == 0 and d.cooldown_until == 0 for d in gateway.state.pool.deployments)


def test_a_pause_holds_the_models_requests_in_the_gateway_until_the_resume(models: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    on_a = fresh_answer(models["a"])
    with two_engines(models, tmp_path) as (gateway, engines):
        paused = admin(gateway, "POST", "/pause", {"model": "m", "mode": "wait"})
        assert paused.status_code == 200, paused.text
        assert [e["success"] for e in paused.json()["engines"]] == [True, True]
        assert all(engine.is_paused for engine in engines)
        asked = admin(gateway, "GET", "/is_paused?model=m").json()
        assert asked["is_paused"] is True and asked["held"] == "paused"
        thread, got = asked_while_held(gateway, engines)
        ready = admin(gateway, "GET", "/readyz")
        assert ready.status_code == 200 and ready.json()["held_models"] == {"m": "paused"}
        metrics = admin(gateway, "GET", "/metrics").text
        assert 'pitstop_model_held{model="m",reason="paused"} 1.0' in metrics
        assert 'pitstop_held_requests{model="m"} 1.0' in metrics
        resumed = admin(gateway, "POST", "/resume", {"model": "m"})
        assert resumed.status_code == 200, resumed.text
        thread.join(60)
        assert got == [on_a] and not any(engine.is_paused for engine in engines) and untouched(gateway)
        assert admin(gateway, "GET", "/is_paused?model=m").json()["is_paused"] is False
        token_ids(gateway, PROMPT * 8)  # a prompt of whole blocks: the engine that answers caches them
        reset = admin(gateway, "POST", "/reset_prefix_cache", {"model": "m"}).json()
        assert reset["success"] and sum(e["forgotten_blocks"] for e in reset["engines"]) > 0


def test_a_level_2_round_answers_with_the_new_weights(models: dict[str, Path], tmp_path: Path) -> None:
    on_b = fresh_answer(models["b"])
    with two_engines(models, tmp_path) as (gateway, engines):
        assert token_ids(gateway) != on_b
        slept = admin(gateway, "POST", "/sleep", {"model": "m", "level": 2})
        assert slept.status_code == 200, slept.text
        assert all(e["released_bytes"]["weights"] > 0 for e in slept.json()["engines"])
        asked = admin(gateway, "GET", "/is_sleeping?model=m").json()
        assert asked["is_sleeping"] is True and asked["held"] == "asleep"
        assert [e["sleeping"] for e in asked["engines"]] == [["weights", "kv_cache"]] * 2
        ready = admin(gateway, "GET", "/readyz")
        assert ready.status_code == 200 and ready.json()["models"]["m"] is True
        thread, got = asked_while_held(gateway, engines)
        early = admin(gateway, "POST", "/wake_up", {"model": "m", "tags": ["kv_cache"]})
        assert early.status_code == 502 and [e["code"] for e in early.json()["engines"]] == ["weights_first"] * 2
        update = {"model": "m", "model_path": str(models["b"])}
        refused = admin(gateway, "POST", "/update_weights_from_disk", update)
        assert refused.status_code == 502 and [e["code"] for e in refused.json()["engines"]] == ["weights_asleep"] * 2
        assert admin(gateway, "POST", "/wake_up", {"model": "m", "tags": ["weights"]}).status_code == 200
        assert admin(gateway, "POST", "/update_weights_from_disk", update).status_code == 200
        assert gateway.state is not None and gateway.state.dispatcher.holds.reason("m") == "asleep"
        assert not got  # the KV cache sleeps still: held
        woken = admin(gateway, "POST", "/wake_up", {"model": "m", "tags": ["kv_cache"]})
        assert woken.status_code == 200 and all(e["status"] == "awake" for e in woken.json()["engines"])
        thread.join(60)
        assert got == [on_b] and untouched(gateway)
        assert not any(engine.is_sleeping or engine.is_paused for engine in engines)


ENDPOINTS = [("POST", "/pause"), ("POST", "/resume"), ("GET", "/is_paused"), ("POST", "/sleep"),
             ("POST", "/wake_up"), ("GET", "/is_sleeping"), ("POST", "/reset_prefix_cache")]


def test_refusals_come_before_anything_changes(models: dict[str, Path], tmp_path: Path) -> None:
    entries = [local(models["a"]), local(models["a"]) | {"model_name": "mixed"},
               model_entry("mixed", "http://127.0.0.1:9/v1", provider="hosted_vllm")]
    with running_gateway(gateway_config(tmp_path, entries, auth={"master_key": MASTER})) as gateway, \
            gateway.http() as http:
        assert gateway.state is not None
        for method, path in ENDPOINTS:
            for model, status in (("mixed", 400), ("nope", 404)):
                response = admin(http, method, f"{path}?model={model}" if method == "GET" else path,
                                 None if method == "GET" else {"model": model})
                assert response.status_code == status, (path, response.text)
                assert response.json()["error"]["param"] == "model"
            assert admin(http, method, path, key=None).status_code == 401
            assert admin(http, method, path, key="sk-not-the-master").status_code == 401
        for path, body, param in (("/pause", {"mode": "later"}, "mode"), ("/pause", {"clear_cache": "yes"}, "clear_cache"),
                                  ("/sleep", {"level": 3}, "level"), ("/sleep", {"level": True}, "level"),
                                  ("/sleep", {"mode": "keep"}, "mode"), ("/wake_up", {"tags": ["gpu"]}, "tags"),
                                  ("/wake_up", {"tags": "weights"}, "tags"), ("/resume", {}, "model")):
            response = admin(http, "POST", path, ({"model": "m"} if param != "model" else {}) | body)
            assert response.status_code == 400, (path, body, response.text)
            assert response.json()["error"]["param"] == param
        assert admin(http, "GET", "/is_paused").json()["error"]["param"] == "model"
        assert not gateway.state.dispatcher.holds.held
        assert not any(d.backend.engine.is_paused for d in gateway.state.pool.deployments  # type: ignore[attr-defined]
                       if d.provider_model.startswith("pitstop-local/"))


def test_an_engine_out_of_reach_is_named_and_a_held_request_times_out(models: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    entries = [local(models["a"]), model_entry("m", f"http://127.0.0.1:{free_port()}/v1")]  # nothing listens
    with running_gateway(gateway_config(tmp_path, entries, auth={"master_key": MASTER},
                                        server={"request_timeout_s": 0.5})) as gateway:
        assert gateway.state is not None
        paused = admin(gateway, "POST", "/pause", {"model": "m"})
        assert paused.status_code == 502, paused.text
        assert paused.json()["error"]["code"] == "pause_failed" and "m#1" in paused.json()["error"]["message"]
        reached, missed = paused.json()["engines"]
        assert reached["success"] and missed["deployments"] == ["m#1"] and missed["code"] == "engine_unreachable"
        with gateway.http() as http:
            held = http.post("/v1/completions", headers={"authorization": f"Bearer {MASTER}"},
                             json={"model": "m", "prompt": PROMPT, **ASK})
        assert held.status_code == 503 and held.json()["error"]["code"] == "model_paused"
        assert untouched(gateway)
        assert admin(gateway, "GET", "/is_sleeping?model=m").status_code == 502
        resumed = admin(gateway, "POST", "/resume", {"model": "m"})
        assert resumed.status_code == 502 and resumed.json()["engines"][0]["success"]
        assert gateway.state.dispatcher.holds.reason("m") is None  # an engine out of reach does not keep the hold


def test_a_pause_holds_the_lora_adapters_riding_on_the_paused_engine(models: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    from engine.tiny_lora import make_tiny_lora

    sql = make_tiny_lora(models["a"], tmp_path / "adapters" / "sql", rank=4, seed=1, std=0.2)
    base = local(models["a"])
    base["litellm_params"]["lora_modules"] = {"sql": str(sql)}
    with running_gateway(gateway_config(tmp_path, [base], auth={"master_key": MASTER})) as gateway:
        assert gateway.state is not None
        holds = gateway.state.dispatcher.holds
        assert admin(gateway, "POST", "/pause", {"model": "m"}).status_code == 200
        assert holds.held == {"m": "paused", "sql": "paused"}  # the adapter's requests run on the same engine
        got: list[int] = []

        def ask_the_adapter() -> None:
            with gateway.http() as http:
                got.append(http.post("/v1/completions", headers={"authorization": f"Bearer {MASTER}"},
                                     json={"model": "sql", "prompt": PROMPT, **ASK}, timeout=120).status_code)

        thread = threading.Thread(target=ask_the_adapter)
        thread.start()
        wait_until(lambda: holds.waiting.get("sql") == 1, what="the adapter's request held")
        assert admin(gateway, "POST", "/resume", {"model": "m"}).status_code == 200
        thread.join(60)
        assert got == [200] and holds.held == {}
