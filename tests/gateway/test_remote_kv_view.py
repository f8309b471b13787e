"""What the TTL choice reads of a Pitstop engine server's KV over HTTP (gateway/session_pins.py's
KVViews): its capacity, occupancy and host tier from /v1/engine/stats, cached a second, refreshed in
the background, and kept when the server stops answering."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai

from engine.build import build_engine
from engine.server.app import create_app
from engine.tiny_model import make_tiny_model
from gateway.backends.openai_http import OpenAIHTTPBackend
from gateway.session_pins import KVViews, view_from_stats
from tests.engine.serving import serve_in_thread


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def settled(views: KVViews, backend: OpenAIHTTPBackend) -> None:
    """Until a background refresh of `backend` has finished."""
    for _ in range(400):
        if backend not in views._refreshing:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the refresh did not finish")


def test_a_served_engine_reports_its_kv_and_host_tier(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    engine = build_engine(model_dir, num_blocks=40, max_model_len=512, device="cpu", host_kv_memory_bytes=1 << 20)
    host_blocks = engine.engine.config.num_host_blocks
    assert host_blocks > 0
    clock = FakeClock()
    with serve_in_thread(create_app(engine, "tiny")) as url:
        backend = OpenAIHTTPBackend(f"{url}/v1", "tiny", accepts_session=True)
        views = KVViews(max_age_s=1.0, timeout_s=10.0, clock=clock)

        async def scenario() -> tuple:
            first = await views.get(backend)  # the first read waits for the server
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            await client.completions.create(model="tiny", prompt="hello there " * 20, max_tokens=2)
            clock.now += 0.5
            cached = await views.get(backend)  # within max_age: the same snapshot, no round trip
            assert backend not in views._refreshing
            clock.now += 1.0
            stale = await views.get(backend)  # past it: the old one at once, a refresh started
            await settled(views, backend)
            fresh = await views.get(backend)
            await backend.close()
            await client.close()
            return first, cached, stale, fresh

        first, cached, stale, fresh = asyncio.run(scenario())
        stats = httpx.get(f"{url}/v1/engine/stats").json()
    assert first is not None and first.capacity_tokens == 40 * 16 and first.host_capacity_tokens == host_blocks * 16
    assert first.used_fraction == 0.0 and cached is first and stale is first
    assert fresh is not None and fresh is not first
    assert fresh == view_from_stats(stats)


def test_a_server_that_stops_answering_keeps_its_last_view(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    server = ExitStack()
    url = server.enter_context(serve_in_thread(create_app(build_engine(model_dir, num_blocks=24, device="cpu"), "t")))
    backend = OpenAIHTTPBackend(f"{url}/v1", "t", accepts_session=True)
    clock = FakeClock()
    views = KVViews(max_age_s=1.0, timeout_s=10.0, clock=clock)
    never = OpenAIHTTPBackend("http://127.0.0.1:9/v1", "gone", accepts_session=True)  # the discard port: refused

    async def scenario() -> tuple:
        first = await views.get(backend)
        server.close()  # the engine server goes away
        clock.now += 2.0
        during = await views.get(backend)  # stale: the last view, while a refresh fails
        await settled(views, backend)
        after = await views.get(backend)
        unknown = await views.get(never)  # never answered: no view, the TTL choice uses its defaults
        await views.close()
        await backend.close()
        await never.close()
        return first, during, after, unknown

    first, during, after, unknown = asyncio.run(scenario())
    assert first is not None and first.capacity_tokens == 24 * 16
    assert during == first and after == first and unknown is None


def test_known_answers_at_once_and_fetches_in_the_background(tmp_path: Path) -> None:
    """What prefix affinity reads when it records a request (gateway/sessions.py): never a wait."""
    model_dir = make_tiny_model(tmp_path / "tiny")
    with serve_in_thread(create_app(build_engine(model_dir, num_blocks=24, device="cpu"), "t")) as url:
        backend = OpenAIHTTPBackend(f"{url}/v1", "t", accepts_session=True)
        views = KVViews(max_age_s=1.0, timeout_s=10.0, clock=FakeClock())

        async def scenario() -> tuple:
            before = views.known(backend)  # nothing yet: a fetch starts
            await settled(views, backend)
            after = views.known(backend)
            await backend.close()
            return before, after

        before, after = asyncio.run(scenario())
    assert before is None and after is not None and after.capacity_tokens == 24 * 16


def test_view_from_stats_without_a_host_tier() -> None:
    stats = {"block_size": 16, "blocks": {"total": 100, "used": 25, "pinned": 10, "host": None}}
    view = view_from_stats(stats)
    assert (view.capacity_tokens, view.used_fraction, view.pinned_blocks, view.host_capacity_tokens) == \
        (1600, 0.25, 10, 0)


def test_view_from_stats_with_a_disk_tier() -> None:
    stats = {"block_size": 16, "blocks": {"total": 100, "used": 25, "pinned": 10, "host": {"total": 50},
                                          "disk": {"total": 800, "used": 3}}}
    view = view_from_stats(stats)
    assert (view.host_capacity_tokens, view.disk_capacity_tokens) == (800, 12_800)
