"""Pausing generation (engine/pause.py) on the AsyncEngine's thread: `abort` ends the requests in flight,
`wait` lets them finish first, `keep` freezes them where they are; requests that come meanwhile wait for
`resume` (or leave); a weight update waits for the requests in flight, which finish on the old weights,
and the ones that came meanwhile get the new. Then the HTTP endpoints (engine/server/weight_endpoints.py)
with the openai SDK: off without --allow-weight-updates, their 400s, a stream aborted by /pause, and a
model's answers after /update_weights_from_disk."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from engine.async_engine import AsyncEngine
from engine.build import build_engine
from engine.outputs import RequestOutput
from engine.server.app import create_app
from engine.tiny_model import make_tiny_model
from tests.engine.serving import SlowRunner, sdk, serve_in_thread
from tests.engine.test_async_engine import greedy, make_engine, run


class Collected:
    """A request's outputs as they come, from a task of its own."""

    def __init__(self, engine: AsyncEngine, prompt: list[int] | str, max_tokens: int) -> None:
        self.outputs: list[RequestOutput] = []

        async def collect() -> None:
            async for out in engine.generate(prompt, greedy(max_tokens)):
                self.outputs.append(out)

        self.task = asyncio.create_task(collect())

    async def started(self) -> None:
        while not self.outputs:
            await asyncio.sleep(0.002)

    @property
    def last(self) -> RequestOutput:
        return self.outputs[-1]


def test_abort_ends_the_requests_in_flight_and_holds_new_ones_until_resume() -> None:
    runner = SlowRunner(step_s=0.002)
    engine = make_engine(runner)

    async def main() -> None:
        first, second = Collected(engine, [1, 2, 3], 150), Collected(engine, [4, 5], 150)
        await first.started()
        await second.started()
        await engine.pause("abort")
        assert engine.is_paused
        await asyncio.wait_for(asyncio.gather(first.task, second.task), 5)
        for collected in (first, second):
            assert collected.last.finished and collected.last.finish_reason == "abort"
            assert 0 < collected.last.num_output_tokens < 150
        late = Collected(engine, [6, 7], 4)
        steps = len(runner.batches)
        await asyncio.sleep(0.1)
        assert not late.outputs and len(runner.batches) == steps  # nothing runs while paused
        await engine.resume()
        await asyncio.wait_for(late.task, 5)
        assert not engine.is_paused and late.last.finish_reason == "length" and late.last.num_output_tokens == 4
        await engine.shutdown()

    run(main())


def test_wait_returns_once_the_requests_in_flight_have_finished() -> None:
    engine = make_engine(SlowRunner(step_s=0.002))

    async def main() -> None:
        running = Collected(engine, [1, 2, 3], 40)
        await running.started()
        pausing = asyncio.create_task(engine.pause("wait"))
        await asyncio.sleep(0)
        late = Collected(engine, [4, 5], 3)
        await asyncio.wait_for(pausing, 5)
        assert running.task.done() and running.last.finish_reason == "length"
        assert running.last.num_output_tokens == 40
        assert not late.outputs
        await engine.resume()
        await asyncio.wait_for(late.task, 5)
        assert late.last.num_output_tokens == 3
        await engine.shutdown()

    run(main())


def test_keep_freezes_the_requests_in_flight_and_resume_goes_on() -> None:
    runner = SlowRunner(step_s=0.002)
    engine = make_engine(runner)

    async def main() -> list[int]:
        frozen = Collected(engine, [1, 2, 3], 60)
        await frozen.started()
        await engine.pause("keep")
        produced, steps = len(frozen.outputs), len(runner.batches)
        await asyncio.sleep(0.1)
        assert len(runner.batches) == steps and len(frozen.outputs) <= produced + 1  # a step under way ends
        assert not frozen.task.done()
        await engine.resume()
        await asyncio.wait_for(frozen.task, 5)
        assert frozen.last.finish_reason == "length" and frozen.last.num_output_tokens == 60
        tokens = [t for out in frozen.outputs for t in out.new_token_ids]
        await engine.shutdown()
        return tokens

    paused = run(main())
    plain = make_engine(SlowRunner())

    async def unpaused() -> list[int]:
        outs = [out async for out in plain.generate([1, 2, 3], greedy(60))]
        await plain.shutdown()
        return [t for out in outs for t in out.new_token_ids]

    assert paused == run(unpaused())


def test_a_request_whose_client_leaves_during_a_pause_never_runs() -> None:
    runner = SlowRunner()
    engine = make_engine(runner)

    async def main() -> None:
        await engine.pause("abort")
        left = Collected(engine, [1, 2], 5)
        await asyncio.sleep(0.05)
        left.task.cancel()
        await asyncio.gather(left.task, return_exceptions=True)
        await engine.resume()
        stays = Collected(engine, [3, 4], 2)
        await asyncio.wait_for(stays.task, 5)
        stats = await engine.stats()
        assert stats.generation_tokens == 2  # the request that left was never added
        await engine.shutdown()

    run(main())


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pause")
    return {"a": make_tiny_model(root / "a", seed=0), "b": make_tiny_model(root / "b", seed=1),
            "other": make_tiny_model(root / "other", seed=0, hidden=128)}


def answer(model_dir: Path, prompt: str, max_tokens: int = 12) -> list[int]:
    engine = build_engine(model_dir, num_blocks=64, device="cpu")

    async def main() -> list[int]:
        outs = [out async for out in engine.generate(prompt, replace(greedy(max_tokens), ignore_eos=True))]
        await engine.shutdown()
        return [t for out in outs for t in out.new_token_ids]

    return run(main())


def test_an_update_lets_the_requests_in_flight_finish_on_the_old_weights(models: dict[str, Path]) -> None:
    prompt = "The weights change"
    on_a, on_b = answer(models["a"], prompt, 30), answer(models["b"], prompt, 30)
    assert on_a != on_b
    engine = build_engine(models["a"], num_blocks=64, device="cpu")

    async def main() -> tuple[list[int], list[int]]:
        params = replace(greedy(30), ignore_eos=True)
        outputs: dict[str, list[int]] = {"old": [], "new": []}

        async def collect(key: str) -> None:
            async for out in engine.generate(prompt, params):
                outputs[key] += out.new_token_ids

        old = asyncio.create_task(collect("old"))
        while not outputs["old"]:
            await asyncio.sleep(0.002)
        updating = asyncio.create_task(engine.update_weights(str(models["b"])))
        await asyncio.sleep(0.01)
        new = asyncio.create_task(collect("new"))  # comes during the update: waits for it
        update = await asyncio.wait_for(updating, 30)
        assert update.model_path == str(models["b"]) and not engine.is_paused
        await asyncio.wait_for(asyncio.gather(old, new), 30)
        await engine.shutdown()
        return outputs["old"], outputs["new"]

    old, new = run(main())
    assert old == on_a and new == on_b


@pytest.fixture(scope="module")
def url(models: dict[str, Path]) -> Iterator[str]:
    app = create_app(build_engine(models["a"], num_blocks=64, device="cpu"), "tiny", allow_weight_updates=True)
    with serve_in_thread(app) as base:
        yield base


def test_the_endpoints_are_off_without_the_flag(models: dict[str, Path]) -> None:
    with serve_in_thread(create_app(build_engine(models["a"], num_blocks=16, device="cpu"), "tiny")) as base:
        for method, path in (("POST", "/pause"), ("POST", "/resume"), ("GET", "/is_paused"),
                             ("POST", "/reset_prefix_cache"), ("POST", "/update_weights_from_disk")):
            response = httpx.request(method, base + path, json={"model_path": str(models["b"])}, timeout=30)
            assert response.status_code == 403, path
            assert response.json()["error"]["code"] == "weight_updates_disabled"


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/pause?mode=later", None, "mode"),
    ("/pause?clear_cache=maybe", None, "clear_cache"),
    ("/update_weights_from_disk", {}, "model_path"),
    ("/update_weights_from_disk", {"model_path": 7}, "model_path"),
    ("/update_weights_from_disk", {"model_path": "/nowhere"}, "model_path"),
    ("/update_weights_from_disk", {"model_path": "OTHER"}, "model_path"),
    ("/update_weights_from_disk", {"model_path": "B", "abort_all_requests": "yes"}, "abort_all_requests"),
])
def test_bad_calls_are_400s(url: str, models: dict[str, Path], path: str, body: dict | None, param: str) -> None:
    if body is not None and body.get("model_path") in ("OTHER", "B"):
        body = body | {"model_path": str(models["other" if body["model_path"] == "OTHER" else "b"])}
    response = httpx.post(url + path, json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert httpx.get(url + "/is_paused", timeout=30).json() == {"is_paused": False}


def test_pause_aborts_a_stream_and_an_update_changes_the_answers(url: str, models: dict[str, Path]) -> None:
    client = sdk(url)
    chunks: list = []

    def stream() -> None:
        for chunk in client.completions.create(model="tiny", prompt="Once", max_tokens=400, temperature=0,
                                               stream=True, extra_body={"ignore_eos": True}):
            chunks.append(chunk)

    streaming = threading.Thread(target=stream)
    streaming.start()
    while not chunks:
        threading.Event().wait(0.005)
    assert httpx.post(url + "/pause", timeout=30).json() == {"status": "paused"}
    streaming.join(30)
    assert chunks[-1].choices[0].finish_reason == "abort"
    assert httpx.get(url + "/is_paused", timeout=30).json() == {"is_paused": True}
    update = httpx.post(url + "/update_weights_from_disk", json={"model_path": str(models["b"])}, timeout=60)
    assert update.status_code == 200 and update.json()["success"] is True
    assert httpx.get(url + "/is_paused", timeout=30).json() == {"is_paused": True}  # paused by the caller: stays
    assert httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["root"] == str(models["b"])
    assert httpx.post(url + "/resume", timeout=30).json() == {"status": "resumed"}
    prompt = "The weights change"
    got = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0,
                                    extra_body={"ignore_eos": True, "return_token_ids": True})
    assert (got.choices[0].model_extra or {})["token_ids"] == answer(models["b"], prompt)
    reset = httpx.post(url + "/reset_prefix_cache", timeout=30)
    assert reset.status_code == 200 and reset.json()["forgotten_blocks"] > 0
    assert "pitstop_engine_paused 0.0" in httpx.get(url + "/metrics", timeout=30).text
    before = _updates(url)
    httpx.post(url + "/update_weights_from_disk", json={"model_path": str(models["other"])}, timeout=30)
    after = _updates(url)
    assert after["refused"] == before.get("refused", 0) + 1 and after["loaded"] == before["loaded"] >= 1


def _updates(url: str) -> dict[str, float]:
    """pitstop_engine_weight_updates_total by outcome, from /metrics."""
    prefix = 'pitstop_engine_weight_updates_total{outcome="'
    lines = [line for line in httpx.get(url + "/metrics", timeout=30).text.splitlines() if line.startswith(prefix)]
    return {line[len(prefix):].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in lines}
