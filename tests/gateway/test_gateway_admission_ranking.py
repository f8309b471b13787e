"""The rank score beyond the admission queue, over real HTTP (gateway on a socket, the fake upstream as
its own process, the openai client): it reaches Pitstop engines as `rank_score` (with agent turns
marked `in_program`), vLLM as its integer, aged `priority` (the median for a request it cannot read),
and the outcome row; it is scored off the event loop, on threads of its own, counting the whole prompt
as work, and holds up only the deployments that order by it."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest

from engine.hints import SchedulingHints
from gateway.backends.base import CallContext
from gateway.ranking import PRIORITY_CLASS, vllm_priority
from tests.gateway.admission_helpers import PROMPTS, deployment_entry
from tests.gateway.harness import gateway_config, model_entry, read_outcomes, running_gateway


def test_vllm_priority_is_the_aged_rank_key():
    now = 1_700_000_000.0
    short = CallContext("a", hints=SchedulingHints(rank_score=0.1))
    long = CallContext("b", hints=SchedulingHints(rank_score=0.9))
    assert vllm_priority(short, 30.0, now) < vllm_priority(long, 30.0, now)
    # 30 s later a short request no longer passes the long one that waited (the starvation bound).
    assert vllm_priority(long, 30.0, now) < vllm_priority(short, 30.0, now + 30.0)
    urgent = CallContext("c", priority=-1, hints=SchedulingHints(rank_score=1.0))
    assert vllm_priority(urgent, 30.0, now) < 0 < vllm_priority(short, 30.0, now) < PRIORITY_CLASS


def test_vllm_deployment_gets_the_rank_as_integer_priority(tmp_path: Path, upstreams):
    a, _ = upstreams
    raw = gateway_config(tmp_path, [deployment_entry(a.api_base, "hosted_vllm")])
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
    raw = gateway_config(tmp_path, [deployment_entry(a.api_base, "hosted_vllm")])
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
    raw = gateway_config(tmp_path, [deployment_entry(a.api_base, "pitstop-engine")])
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
    raw = gateway_config(tmp_path, [deployment_entry(a.api_base, "pitstop-engine")], ranking=ranking)
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
    entries = [deployment_entry(a.api_base, "openai"), deployment_entry(a.api_base, "openai", max_concurrency=2),
               deployment_entry(a.api_base, "hosted_vllm"), deployment_entry(a.api_base, "pitstop-engine"),
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
    with running_gateway(gateway_config(tmp_path, [deployment_entry(a.api_base, provider)])) as gw:
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
    with running_gateway(gateway_config(tmp_path, [deployment_entry(a.api_base, "openai")])) as gw:
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
    raw = gateway_config(tmp_path, [deployment_entry(a.api_base, "openai")], ranking={"threads": 1})
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
    raw = gateway_config(tmp_path, [deployment_entry(a.api_base, "pitstop-engine")], ranking=ranking)
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
