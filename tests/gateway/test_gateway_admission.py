"""The admission queue: a deployment's concurrency limit, releases in the ranker's order, over real
HTTP (gateway on a socket, the fake upstream as its own process, the openai client); the rank score
reaches Pitstop engines as `rank_score`, vLLM as its integer `priority`, and the outcome row."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest

from engine.hints import SchedulingHints
from engine.rank_policy import RankPolicy
from gateway.admission import AdmissionQueue, QueueFull, Waiting
from gateway.backends.base import CallContext
from gateway.ranking import PRIORITY_CLASS, vllm_priority
from tests.gateway.harness import gateway_config, model_entry, read_outcomes, running_gateway, wait_until

PROMPTS = [
    "Write a detailed, 2000-word essay on the history of the Roman empire, with sections and sources.",
    "Answer with one word: is water wet?",
    "Explain step by step how a bill becomes law, with examples.",
    "What is 2 + 2?",
]


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


def test_vllm_priority_is_the_aged_rank_key():
    now = 1_700_000_000.0
    short = CallContext("a", hints=SchedulingHints(rank_score=0.1))
    long = CallContext("b", hints=SchedulingHints(rank_score=0.9))
    assert vllm_priority(short, 30.0, now) < vllm_priority(long, 30.0, now)
    # 30 s later a short request no longer passes the long one that waited (the starvation bound).
    assert vllm_priority(long, 30.0, now) < vllm_priority(short, 30.0, now + 30.0)
    urgent = CallContext("c", priority=-1, hints=SchedulingHints(rank_score=1.0))
    assert vllm_priority(urgent, 30.0, now) < 0 < vllm_priority(short, 30.0, now) < PRIORITY_CLASS


def _entry(upstream_url: str, provider: str, **info: object) -> dict:
    entry = model_entry("m", upstream_url, provider=provider, transport="direct")
    entry["model_info"].update(info)
    return entry


def test_gateway_queue_over_http_releases_in_rank_order(tmp_path: Path, upstreams):
    a, _ = upstreams
    raw = gateway_config(tmp_path, [_entry(a.api_base, "pitstop-engine", max_concurrency=1)])
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
    raw = gateway_config(tmp_path, [_entry(a.api_base, "pitstop-engine", max_concurrency=1, max_queue=0),
                                    _entry(b.api_base, "pitstop-engine", max_concurrency=1, max_queue=1)])
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


def test_vllm_deployment_gets_the_rank_as_integer_priority(tmp_path: Path, upstreams):
    a, _ = upstreams
    raw = gateway_config(tmp_path, [_entry(a.api_base, "hosted_vllm")])
    with running_gateway(raw) as gw:
        client = gw.openai()
        for prompt in (PROMPTS[0], PROMPTS[3]):
            client.chat.completions.create(model="m", max_tokens=4, messages=[{"role": "user", "content": prompt}])
        long_body, short_body = a.stats()["bodies"]
        assert isinstance(long_body["priority"], int) and "rank_score" not in long_body
        # Sent later, the short one still gets the lower (earlier) priority: its rank outweighs 1 s of arrival.
        assert short_body["priority"] < long_body["priority"]


def test_a_request_the_ranker_cannot_read_goes_to_vllm_as_the_median(tmp_path: Path, upstreams):
    """Token ids carry no text to rank. Sent without a priority, vLLM would read 0 and serve it before
    every ranked request (~1.8e10); it gets the aged key of the median rank instead, as engines do."""
    a, _ = upstreams
    raw = gateway_config(tmp_path, [_entry(a.api_base, "hosted_vllm")])
    with running_gateway(raw) as gw, gw.openai() as client:
        for prompt in (PROMPTS[1], [5, 6, 7], PROMPTS[0]):
            client.completions.create(model="m", max_tokens=4, prompt=prompt)
        short, ids, long = (body["priority"] for body in a.stats()["bodies"])
        assert 0 < short < ids < long < PRIORITY_CLASS
        rows = {r["prompt"] if isinstance(r["prompt"], str) else "ids": r for r in gw.rows()}
    assert rows["ids"]["rank_score"] is None and rows[PROMPTS[0]]["rank_score"] is not None


def test_agent_turns_reach_pitstop_engines_marked_in_program(tmp_path: Path, upstreams):
    # The engine's program-first policy gives requests outside agent programs its interactive credit;
    # the gateway marks a session's turns that offer tools (or return after a tool call).
    a, _ = upstreams
    raw = gateway_config(tmp_path, [_entry(a.api_base, "pitstop-engine")])
    tools = [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object", "properties": {}}}}]
    with running_gateway(raw) as gw:
        client = gw.openai()
        client.chat.completions.create(model="m", max_tokens=4, messages=[{"role": "user", "content": "fix the bug"}],
                                       tools=tools, extra_headers={"x-session-id": "agent-1"})
        client.chat.completions.create(model="m", max_tokens=4, messages=[{"role": "user", "content": "hello"}])
        agent_body, chat_body = a.stats()["bodies"]
        assert agent_body["in_program"] is True and agent_body["session_id"] == "agent-1"
        assert "in_program" not in chat_body


@pytest.mark.parametrize("offload", [None, False], ids=["default", "inline"])
def test_gateway_ranks_with_a_listmle_artifact_off_its_event_loop_by_default(
        tmp_path: Path, upstreams, monkeypatch: pytest.MonkeyPatch, offload: bool | None):
    from rankers.artifact import save_ranker
    from rankers.listmle import ListMLERanker
    from tests.rankers.test_training import synthetic

    trained = ListMLERanker(None, layers=1, max_tokens=32, epochs=2).fit(synthetic(2))
    save_ranker(trained, tmp_path / "listmle.joblib", {"datasets": ["synthetic"]})
    assert trained.work_table is not None
    expected = trained.work_table.score(trained.score(PROMPTS[0], "m"), "m", len(PROMPTS[0]))
    on_event_loop: list[bool] = []
    score = ListMLERanker.score

    def spy(self: ListMLERanker, *args: str) -> float:
        try:
            asyncio.get_running_loop()
            on_event_loop.append(True)
        except RuntimeError:  # no loop runs in this thread: a worker's
            on_event_loop.append(False)
        return score(self, *args)

    monkeypatch.setattr(ListMLERanker, "score", spy)
    a, _ = upstreams
    ranking: dict[str, object] = {"artifact": str(tmp_path / "listmle.joblib")}
    if offload is not None:
        ranking["offload"] = offload
    raw = gateway_config(tmp_path, [_entry(a.api_base, "pitstop-engine")], ranking=ranking)
    with running_gateway(raw) as gw:
        assert gw.state.ranking.ranker.family == "listmle"
        assert gw.state.ranking.ranker._scorer is not None  # warmed at start, not on the first request
        on_event_loop.clear()
        gw.openai().chat.completions.create(model="m", max_tokens=4, messages=[{"role": "user", "content": PROMPTS[0]}])
        assert a.stats()["bodies"][-1]["rank_score"] == pytest.approx(expected, abs=1e-6)
        # by default in a worker thread, not on the loop serving requests; `offload: false` keeps it there
        assert on_event_loop == [offload is False]


def test_deployments_use_the_rank_where_a_queue_or_their_engine_orders_by_it(tmp_path: Path, upstreams):
    a, _ = upstreams
    entries = [_entry(a.api_base, "openai"), _entry(a.api_base, "openai", max_concurrency=2),
               _entry(a.api_base, "hosted_vllm"), _entry(a.api_base, "pitstop-engine"),
               model_entry("m", a.api_base, provider="hosted_vllm", transport="litellm"),
               model_entry("m", a.api_base, provider="openai", transport="litellm")]
    with running_gateway(gateway_config(tmp_path, entries)) as gw:
        assert [d.uses_rank for d in gw.state.pool.by_model["m"]] == [False, True, True, True, True, False]


@pytest.mark.parametrize("provider", ["openai", "pitstop-engine"])
def test_a_deployment_that_does_not_use_the_rank_is_not_held_up_by_it_and_its_row_still_gets_it(
        tmp_path: Path, upstreams, monkeypatch: pytest.MonkeyPatch, provider: str):
    """The ranker is held inside its scoring: an API deployment answers anyway (the rank is scored
    beside the call and the row waits for it); a Pitstop engine, which orders by it, gets nothing yet."""
    from gateway.ranking import RankScores, RequestRanker

    release, entered = threading.Event(), threading.Event()
    scores = RequestRanker.scores

    def held(self: RequestRanker, prompt: str, model_name: str, prompt_chars: int | None = None,
             cached_tokens: int = 0) -> RankScores | None:
        entered.set()
        assert release.wait(60), "the test never released the ranker"
        return scores(self, prompt, model_name, prompt_chars, cached_tokens)

    monkeypatch.setattr(RequestRanker, "scores", held)
    a, _ = upstreams
    with running_gateway(gateway_config(tmp_path, [_entry(a.api_base, provider)])) as gw:
        expected, expected_answer = scores(gw.state.ranking, PROMPTS[0], "m")
        replies: list = []

        def ask() -> None:
            replies.append(gw.openai().chat.completions.with_raw_response.create(
                model="m", max_tokens=4, messages=[{"role": "user", "content": PROMPTS[0]}]))

        caller = threading.Thread(target=ask)
        caller.start()
        assert entered.wait(20), "the ranker was never asked"
        try:
            if provider == "openai":
                caller.join(30)  # answered while its rank is still being scored
                assert replies and a.stats()["requests"] == 1 and "rank_score" not in a.stats()["bodies"][0]
                assert gw.state.recorder.rows_waiting == 1
                assert read_outcomes(gw.storage_url) == []  # the row waits for its rank
            else:
                time.sleep(0.3)
                assert not replies and a.stats()["requests"] == 0  # the engine's order needs the rank first
        finally:
            release.set()
            caller.join(30)
        request_id = replies[0].headers["x-pitstop-request-id"]
        assert gw.row(request_id)["rank_score"] == pytest.approx(expected, abs=1e-6)
        # the ranker's own answer score rides along, also on the row that waited for its rank
        assert gw.row(request_id)["extra"]["rank_answer_score"] == pytest.approx(expected_answer, abs=1e-6)
        if provider == "pitstop-engine":
            assert a.stats()["bodies"][0]["rank_score"] == pytest.approx(expected, abs=1e-6)


def test_a_streamed_answer_from_an_api_deployment_logs_the_rank_scored_beside_it(tmp_path: Path, upstreams):
    a, _ = upstreams
    with running_gateway(gateway_config(tmp_path, [_entry(a.api_base, "openai")])) as gw:
        expected = gw.state.ranking.score(PROMPTS[2], "m")
        with gw.openai().chat.completions.with_streaming_response.create(
                model="m", max_tokens=4, stream=True, messages=[{"role": "user", "content": PROMPTS[2]}]) as reply:
            request_id = reply.headers["x-pitstop-request-id"]
            assert [chunk for chunk in reply.parse()]
        assert "rank_score" not in a.stats()["bodies"][0]
        row = gw.row(request_id)
        assert row["stream"] and row["status"] == "ok"
        assert row["rank_score"] == pytest.approx(expected, abs=1e-6)


def test_ranks_waiting_in_their_pool_do_not_hold_up_api_key_lookups(
        tmp_path: Path, upstreams, monkeypatch: pytest.MonkeyPatch):
    """Ranking has its own threads: with more ranks held than asyncio's default pool has threads, a
    request whose API key must be looked up (in that default pool) is still answered."""
    import gateway.auth
    from gateway.ranking import RankScores, RequestRanker

    release = threading.Event()
    scores = RequestRanker.scores
    lookups: list[str] = []
    lookup = gateway.auth.KeyStore.lookup

    def held(self: RequestRanker, prompt: str, model_name: str, prompt_chars: int | None = None,
             cached_tokens: int = 0) -> RankScores | None:
        assert release.wait(60), "the test never released the ranker"
        return scores(self, prompt, model_name, prompt_chars, cached_tokens)

    def counted(self: object, token: str) -> object:
        lookups.append(token)
        return lookup(self, token)

    monkeypatch.setattr(RequestRanker, "scores", held)
    monkeypatch.setattr(gateway.auth.KeyStore, "lookup", counted)
    a, _ = upstreams
    raw = gateway_config(tmp_path, [_entry(a.api_base, "openai")], ranking={"threads": 1})
    with running_gateway(raw) as gw:
        client = gw.openai()
        try:
            for i in range(40):  # asyncio's default pool has at most 32 threads
                client.chat.completions.create(model="m", max_tokens=4, messages=[{"role": "user", "content": f"q{i}"}])
            assert gw.state.recorder.rows_waiting == 40
            keyed = gw.openai(api_key="sk-pitstop-not-a-known-key")
            keyed.chat.completions.create(model="m", max_tokens=4, messages=[{"role": "user", "content": "q"}])
            assert lookups == ["sk-pitstop-not-a-known-key"]
        finally:
            release.set()
        assert len(gw.rows()) == 41


@pytest.mark.parametrize("ranking", [{}, {"by_work": False}, {"prefill_weight": 0.0}],
                         ids=["work", "answer-only", "prompt-weighs-nothing"])
def test_the_rank_counts_the_whole_prompt_as_work(tmp_path: Path, upstreams, ranking: dict):
    """Two requests end with the same user turn; one carries a long system message. Ranked by work (the
    default), the long one ranks later, by the work table's own arithmetic; by answer alone, or with a
    prompt weighing nothing, they tie."""
    a, _ = upstreams
    raw = gateway_config(tmp_path, [_entry(a.api_base, "pitstop-engine")], ranking=ranking)
    with running_gateway(raw) as gw:
        ranker = gw.state.ranking.ranker
        system = "You are a careful assistant. " * 100
        for messages in ([{"role": "user", "content": PROMPTS[1]}],
                         [{"role": "system", "content": system}, {"role": "user", "content": PROMPTS[1]}]):
            gw.openai().chat.completions.create(model="m", max_tokens=4, messages=messages)
        short, long = (b["rank_score"] for b in a.stats()["bodies"])
        answer = ranker.score(PROMPTS[1], "m")
        # each request's scoring is timed on its thread's CPU clock, and only those two
        text = httpx.get(f"{gw.url}/metrics", timeout=10).text
        samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                   if line.startswith("pitstop_rank_cpu_seconds_")}
        assert samples["pitstop_rank_cpu_seconds_count"] == 2 and samples["pitstop_rank_cpu_seconds_sum"] > 0
        if not ranking:
            table = ranker.work_table
            assert short == pytest.approx(table.score(answer, "m", len(PROMPTS[1])), abs=1e-6)
            assert long == pytest.approx(table.score(answer, "m", len(system) + len(PROMPTS[1])), abs=1e-6)
            assert long > short
        elif "by_work" in ranking:
            assert short == long == pytest.approx(answer, abs=1e-6)
        else:
            assert short == long == pytest.approx(ranker.work_table.with_weight(0.0).score(answer, "m", 0), abs=1e-6)
