"""The admission queue: a deployment's concurrency limit, releases in the ranker's order, and a full
queue's overflow to the model's other deployment then a 429, on the queue alone and over real HTTP
(gateway on a socket, the fake upstream as its own process, the openai client). Where the rank score
itself goes (engines, vLLM, the outcome row) and how it is scored: test_gateway_admission_ranking.py."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from engine.hints import SchedulingHints
from engine.rank_policy import RankPolicy
from gateway.admission import AdmissionQueue, QueueFull, Waiting
from tests.gateway.admission_helpers import PROMPTS, deployment_entry
from tests.gateway.harness import gateway_config, running_gateway, wait_until


def test_queue_releases_in_policy_order_and_keeps_the_limit():
    async def scenario() -> list[str]:
        queue = AdmissionQueue(2, RankPolicy(horizon_s=100.0))
        served: list[str] = []
        active, peak = 0, 0

        async def request(name: str, score: float, arrival: float) -> None:
            nonlocal active, peak
            async with queue.slot(Waiting(arrival, 0.0, SchedulingHints(rank_score=score))):
                active += 1
                peak = max(peak, active)
                served.append(name)
                await asyncio.sleep(0.01)
                active -= 1

        holders = [asyncio.create_task(request(f"hold{i}", 0.5, 0.0)) for i in range(2)]
        await asyncio.sleep(0)  # both take the two slots
        waiters = [asyncio.create_task(request(n, s, 1.0)) for n, s in (("long", 0.9), ("short", 0.1), ("mid", 0.5))]
        doomed = asyncio.create_task(request("cancelled", 0.0, 1.0))
        await asyncio.sleep(0)
        assert queue.waiting == 4
        doomed.cancel()  # a client that leaves gives its place up, and no slot is lost
        await asyncio.gather(*holders, *waiters)
        assert peak == 2 and queue.active == 0 and queue.waiting == 0
        return served

    assert asyncio.run(scenario()) == ["hold0", "hold1", "short", "mid", "long"]


def test_a_full_queue_refuses_the_newcomer_and_keeps_the_waiters():
    async def scenario() -> None:
        queue = AdmissionQueue(1, RankPolicy(), max_waiting=2)
        await queue.acquire(Waiting(0.0))  # the slot
        waiters = [asyncio.create_task(queue.acquire(Waiting(1.0))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as refused:
            await queue.acquire(Waiting(2.0))
        assert (refused.value.status, refused.value.code, refused.value.retryable) == (429, "queue_full", True)
        assert queue.waiting == 2 and queue.active == 1
        waiters[0].cancel()  # a place frees up: the next newcomer waits again
        await asyncio.sleep(0)
        late = asyncio.create_task(queue.acquire(Waiting(3.0)))
        await asyncio.sleep(0)
        assert queue.waiting == 2
        queue.release()  # the slot passes to the waiter left, then to the late one
        queue.release()
        await asyncio.gather(waiters[1], late)
        assert queue.active == 1 and queue.waiting == 0

    asyncio.run(scenario())


def test_no_limit_means_no_queue():
    async def scenario() -> None:
        queue = AdmissionQueue(None, RankPolicy())
        async with queue.slot(Waiting(0.0)), queue.slot(Waiting(0.0)):
            assert queue.active == 0 and queue.waiting == 0

    asyncio.run(scenario())


def test_gateway_queue_over_http_releases_in_rank_order(tmp_path: Path, upstreams):
    a, _ = upstreams
    raw = gateway_config(tmp_path, [deployment_entry(a.api_base, "pitstop-engine", max_concurrency=1)])
    with running_gateway(raw) as gw:
        state = gw.state
        queue = state.pool.by_model["m"][0].admission
        expected = sorted(PROMPTS, key=lambda p: state.ranking.score(p, "m"))
        assert len({state.ranking.score(p, "m") for p in PROMPTS}) == len(PROMPTS)
        client = gw.openai()
        results: dict[str, str] = {}
        peak = 0

        def ask(prompt: str) -> None:
            reply = client.chat.completions.with_raw_response.create(
                model="m", max_tokens=4, messages=[{"role": "user", "content": prompt}])
            results[prompt] = reply.headers["x-pitstop-request-id"]

        blocker = threading.Thread(target=ask, args=("[delay:1.0] hold the only slot",))
        blocker.start()
        wait_until(lambda: a.stats()["requests"] == 1, what="the blocker reached the upstream")
        threads = []
        for prompt in reversed(expected):  # arrive longest-ranked first
            threads.append(threading.Thread(target=ask, args=(prompt,)))
            threads[-1].start()
            time.sleep(0.05)
        wait_until(lambda: queue.waiting == len(PROMPTS), what="all four queued behind the limit")
        while any(t.is_alive() for t in [blocker, *threads]):
            peak = max(peak, queue.active)
            time.sleep(0.005)
        bodies = a.stats()["bodies"]
        assert peak == 1
        served = [b["messages"][-1]["content"] for b in bodies[1:]]
        assert served == expected  # released shortest-ranked first, not in arrival order
        assert [b["rank_score"] for b in bodies[1:]] == sorted(b["rank_score"] for b in bodies[1:])
        row = gw.row(results[expected[0]])
        assert row["rank_score"] == pytest.approx(bodies[1]["rank_score"])


def test_a_full_queue_sends_the_request_to_the_models_other_deployment_then_answers_429(tmp_path: Path,
                                                                                         upstreams):
    """`max_queue` bounds how many wait behind `max_concurrency`: past it a request goes to the model's
    other deployment, and with every queue full it is a 429 with Retry-After, logged, never a hang."""
    a, b = upstreams
    raw = gateway_config(tmp_path, [deployment_entry(a.api_base, "pitstop-engine", max_concurrency=1, max_queue=0),
                                    deployment_entry(b.api_base, "pitstop-engine", max_concurrency=1, max_queue=1)])
    with running_gateway(raw) as gw:
        first, second = gw.state.pool.by_model["m"]
        held: list[threading.Thread] = []
        answers: list[int] = []

        def hold() -> None:
            with gw.http() as http:
                answers.append(http.post("/v1/chat/completions", json={"model": "m", "max_tokens": 2, "messages": [
                    {"role": "user", "content": "[delay:1.0] wait"}]}).status_code)

        for admitted in ((1, 0, 0, 0), (1, 0, 1, 0), (1, 0, 1, 1)):
            # one in each slot; then a third: the tie goes to the first deployment, whose queue takes
            # none, so it waits in the second's
            held.append(threading.Thread(target=hold))
            held[-1].start()
            wait_until(lambda want=admitted: (first.admission.active, first.admission.waiting,
                                              second.admission.active, second.admission.waiting) == want,
                       what=f"admitted as {admitted}")
        with gw.http() as http:
            metrics = http.get("/metrics").text
            refused = http.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
        assert 'pitstop_admission_waiting{deployment="m#1"} 1.0' in metrics
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert error["code"] == "queue_full" and "queue is full" in error["message"]
        for thread in held:
            thread.join(30)
        assert answers == [200, 200, 200]
        assert gw.row(refused.headers["x-pitstop-request-id"])["http_status"] == 429
        assert (a.stats()["requests"], b.stats()["requests"]) == (1, 2)  # the refused one reached no upstream
        assert first.cooldown_until == second.cooldown_until == 0.0  # a full queue is no failure
        with gw.http() as http:  # room again: served
            assert http.post("/v1/chat/completions", json={"model": "m", "messages": [
                {"role": "user", "content": "x"}]}).status_code == 200
