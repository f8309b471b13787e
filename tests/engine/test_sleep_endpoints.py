"""Sleep mode over HTTP (engine/server/sleep_endpoints.py), on a real socket with the openai SDK: off without
--enable-sleep-mode; an RL round at level 2 (sleep, weights, update, KV cache) with a completion that came
while asleep answered by the new weights once awake; health, the model list and /metrics while asleep; each
call that does not fit is a 409 naming its case, each bad parameter a 400 naming it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.build import build_engine
from engine.server.app import create_app
from engine.tiny_model import make_tiny_model
from tests.engine.serving import sdk, serve_in_thread
from tests.engine.test_pause import answer

PROMPT = "The weights change"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sleep-http")
    return {"a": make_tiny_model(root / "a", seed=0), "b": make_tiny_model(root / "b", seed=1)}


@pytest.fixture(scope="module")
def served(models: dict[str, Path]) -> Iterator[tuple[str, object]]:
    app = create_app(build_engine(models["a"], num_blocks=64, device="cpu"), "tiny", allow_weight_updates=True,
                     enable_sleep_mode=True)
    with serve_in_thread(app) as base:
        yield base, app.state.pitstop.engine


def call(method: str, url: str, **kwargs: object) -> httpx.Response:
    return httpx.request(method, url, timeout=60, **kwargs)  # type: ignore[arg-type]


def test_the_endpoints_are_off_without_the_flag(models: dict[str, Path]) -> None:
    app = create_app(build_engine(models["a"], num_blocks=16, device="cpu"), "tiny", allow_weight_updates=True)
    with serve_in_thread(app) as base:
        for method, path in (("POST", "/sleep"), ("POST", "/wake_up"), ("GET", "/is_sleeping")):
            response = call(method, base + path)
            assert response.status_code == 403, path
            assert response.json()["error"]["code"] == "sleep_mode_disabled"


def test_a_level_2_round_and_a_completion_that_came_while_asleep(served: tuple[str, object],
                                                                 models: dict[str, Path]) -> None:
    url, engine = served
    client = sdk(url)
    on_b = answer(models["b"], PROMPT)
    slept = call("POST", url + "/sleep?level=2")
    assert slept.status_code == 200, slept.text
    assert slept.json()["is_sleeping"] is True and slept.json()["released_bytes"]["weights"] > 0
    assert call("GET", url + "/is_sleeping").json() == {"is_sleeping": True, "level": 2,
                                                       "sleeping": ["weights", "kv_cache"]}
    metrics = call("GET", url + "/metrics").text
    assert 'pitstop_engine_sleeping{memory="weights"} 1.0' in metrics and "pitstop_engine_paused 1.0" in metrics
    assert call("GET", url + "/healthz").status_code == 200 and call("GET", url + "/v1/models").status_code == 200
    assert call("POST", url + "/tokenize", json={"model": "tiny", "prompt": PROMPT}).json()["count"] > 0
    got: list = []

    def ask() -> None:
        got.append(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0,
                                             extra_body={"ignore_eos": True, "return_token_ids": True}))

    asking = threading.Thread(target=ask)
    asking.start()
    deadline = time.monotonic() + 30
    while not engine._parked and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.005)
    assert len(engine._parked) == 1 and not got  # type: ignore[attr-defined] # it waits, outside the engine
    for method, path, body, code in (
            ("POST", "/wake_up?tags=kv_cache", None, "weights_first"),
            ("POST", "/update_weights_from_disk", {"model_path": str(models["b"])}, "weights_asleep"),
            ("POST", "/resume", None, "engine_asleep"),
            ("POST", "/sleep?level=1", None, "already_sleeping")):
        response = call(method, url + path, json=body)
        assert response.status_code == 409, (path, response.text)
        assert response.json()["error"]["code"] == code
    woken = call("POST", url + "/wake_up?tags=weights").json()
    assert woken["sleeping"] == ["kv_cache"] and woken["changed"] == ["weights"]
    assert call("POST", url + "/update_weights_from_disk", json={"model_path": str(models["b"])}).status_code == 200
    assert call("POST", url + "/wake_up?tags=kv_cache").json()["status"] == "awake"
    asking.join(60)
    assert (got[0].choices[0].model_extra or {})["token_ids"] == on_b
    again = call("POST", url + "/wake_up").json()
    assert again["changed"] == [] and again["is_sleeping"] is False  # awake already: vLLM's no-op
    assert 'pitstop_engine_sleeping{memory="kv_cache"} 0.0' in call("GET", url + "/metrics").text


@pytest.mark.parametrize(("path", "param"), [
    ("/sleep?level=3", "level"), ("/sleep?level=one", "level"), ("/sleep?mode=keep", "mode"),
    ("/wake_up?tags=gpu", "tags"), ("/wake_up?tags=weights,", "tags"),
])
def test_bad_parameters_are_400s(served: tuple[str, object], path: str, param: str) -> None:
    url, _ = served
    response = call("POST", url + path)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert call("GET", url + "/is_sleeping").json()["is_sleeping"] is False
