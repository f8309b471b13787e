"""A real agent loop through the gateway (openai SDK, real sockets, two in-process engine instances of
the tiny model): tool calls with real sleeps while other traffic floods the KV cache; the next turn's
`usage.prompt_tokens_details.cached_tokens` shows the pinned prefix. Pins expire, the pin budget
holds, and a session whose instance dies moves to the other one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent_sessions import agent_loop
from tests.agent_sessions.agent_loop import AgentRun, flood, run_tool, turn
from tests.gateway.harness import Gateway, running_gateway

BLOCK = 16
NUM_BLOCKS = 256  # 4096 tokens per instance; the flood below pushes ~3x that through
PIN_BUDGET_BLOCKS = NUM_BLOCKS // 2  # the engine's default pin budget: half the cache


def config(tmp_path: Path, model_dir: Path) -> dict:
    local = {"model": "pitstop-local/tiny", "model_dir": str(model_dir), "num_blocks": NUM_BLOCKS,
             "max_model_len": 2048}
    return {
        "model_list": [{"model_name": "tiny", "litellm_params": local}] * 2,
        "storage": {"url": f"sqlite:///{tmp_path / 'gateway.db'}"},
        # A slow re-prefill (a CPU-sized model) and memory that is not contended yet: pins pay off;
        # short TTLs so expiry can be watched in a test.
        "sessions": {"prefill_tokens_per_s": 200.0, "memory_pressure_floor": 0.0, "max_ttl_s": 4.0,
                     "tool_durations": None},
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Gateway]:
    with running_gateway(config(tmp_path_factory.mktemp("agents"), tiny_model_dir)) as gw:
        yield gw


def session(gw: Gateway, session_id: str) -> dict:
    response = httpx.get(f"{gw.url}/v1/sessions/{session_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def metric(gw: Gateway, name: str) -> float:
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def pinned_prompt_tokens(run: AgentRun, index: int) -> int:
    return run.usages[index].prompt_tokens // BLOCK * BLOCK


def test_tool_call_keeps_the_program_cached_through_a_flood(gateway: Gateway) -> None:
    pinned, control = agent_loop.start("agent-pinned"), agent_loop.start("agent-control")
    with gateway.openai() as client:
        run_tool(pinned, turn(client, pinned), "pytest tests/test_money.py", 0.3)
        # The control program asks for no pin (an explicit pin_ttl_s is kept as given).
        run_tool(control, turn(client, control, extra_body={"pin_ttl_s": 0}), "pytest tests/test_money.py", 0.3)
        flood(client, 24)
        turn(client, pinned)
        turn(client, control, extra_body={"pin_ttl_s": 0})
    assert pinned.cached_tokens[1] >= pinned_prompt_tokens(pinned, 0) > 300
    assert control.cached_tokens[1] < pinned_prompt_tokens(control, 0) // 2  # the flood took it

    state = session(gateway, "agent-pinned")
    assert state["turns"] == 2 and state["instance"] in ("tiny#0", "tiny#1")
    assert state["cached_tokens_per_turn"] == pinned.cached_tokens
    assert state["pinned_blocks"] > 0 and 0 < state["pin_ttl_s"] <= 4.0  # pinned again after turn 2
    rows = {r["request_id"]: r for r in gateway.rows(pinned.request_ids)}
    first, second = (rows[i] for i in pinned.request_ids)
    assert (first["turn"], second["turn"]) == (1, 2) and not second["moved_instance"]
    assert second["extra"]["tools"] == ["bash"] and second["extra"]["agent"] == "swe-test"
    assert 0.3 <= second["extra"]["tool_wait_s"] < 30
    assert first["extra"]["session_pin_ttl_s"] > 0 and second["extra"]["previous_pin"] == "hit"
    assert metric(gateway, 'pitstop_session_pins_total{event="hit"}') >= 1


def test_a_pinned_turn_is_ranked_without_its_cached_prefill(gateway: Gateway, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The ranker's work score (rankers/work.py) counts a prompt's prefill; a returning turn whose
    context is pinned on its instance is scored without the pinned part, so its long context does not
    push it behind new requests while it holds the cache. The control turn asked for no pin."""
    from gateway.ranking import RankScores, RequestRanker

    scores, calls = RequestRanker.scores, []

    def spy(self: RequestRanker, prompt: str, model_name: str, prompt_chars: int | None = None,
            cached_tokens: int = 0) -> RankScores | None:
        result = scores(self, prompt, model_name, prompt_chars, cached_tokens)
        assert result is not None and result.answer is not None  # the work score is sent
        calls.append((self, prompt, model_name, prompt_chars, cached_tokens, result))
        return result

    monkeypatch.setattr(RequestRanker, "scores", spy)
    pinned, control = agent_loop.start("agent-ranked"), agent_loop.start("agent-ranked-control")
    with gateway.openai() as client:
        run_tool(pinned, turn(client, pinned), "ls", 0.1)
        run_tool(control, turn(client, control, extra_body={"pin_ttl_s": 0}), "ls", 0.1)
        turn(client, pinned)
        turn(client, control, extra_body={"pin_ttl_s": 0})
    rows = [gateway.row(pinned.request_ids[1]), gateway.row(control.request_ids[1])]
    assert [c[4] for c in calls] == [0, 0, pinned_prompt_tokens(pinned, 0), 0]
    assert rows[0]["extra"]["rank_cached_tokens"] == pinned_prompt_tokens(pinned, 0) > 300
    assert "rank_cached_tokens" not in rows[1]["extra"]
    ranking, prompt, model, chars, cached, discounted = calls[2]
    assert rows[0]["rank_score"] == discounted.sent
    assert discounted.sent < scores(ranking, prompt, model, chars, 0).sent  # whole, it would rank later
    # the ranker's own answer score is kept beside the work score sent, for judging logged ranks
    assert rows[0]["extra"]["rank_answer_score"] == discounted.answer
    assert rows[1]["rank_score"] == calls[3][5].sent


def test_pins_expire(gateway: Gateway) -> None:
    run = agent_loop.start("agent-slow-tool")
    with gateway.openai() as client:
        reply = turn(client, run)
        ttl = session(gateway, "agent-slow-tool")["pin_ttl_s"]
        assert ttl > 0
        run_tool(run, reply, "pytest -x tests/  # a long test run", ttl + 0.5)
        assert session(gateway, "agent-slow-tool")["engine"]["pinned_blocks"] == 0  # the engine let go
        flood(client, 24, seed=1)
        turn(client, run)
    assert run.cached_tokens[1] < pinned_prompt_tokens(run, 0) // 2
    assert gateway.row(run.request_ids[1])["extra"]["previous_pin"] == "expired"
    assert metric(gateway, 'pitstop_session_pins_total{event="expired"}') >= 1


def test_pin_budget_is_respected(gateway: Gateway) -> None:
    runs = [agent_loop.start(f"agent-budget-{i}", task_repeats=10) for i in range(4)]
    with gateway.openai() as client:
        for run in runs:  # four programs of ~60 blocks each want pins: the budget holds two
            turn(client, run)
    states = [session(gateway, run.session_id) for run in runs]
    by_instance: dict[str, int] = {}
    for state in states:
        by_instance[state["instance"]] = by_instance.get(state["instance"], 0) + state["pinned_blocks"]
    assert all(total <= PIN_BUDGET_BLOCKS for total in by_instance.values())
    assert states[-1]["pinned_blocks"] > 0  # the newest pin is kept, the earliest deadlines gave way
    assert sum(1 for s in states if s["pinned_blocks"] == 0) >= 1
    assert metric(gateway, 'pitstop_engine_pin_events{deployment="tiny#0",event="evicted"}') \
        + metric(gateway, 'pitstop_engine_pin_events{deployment="tiny#1",event="evicted"}') >= 1


def test_a_dead_instance_rehomes_the_session(tmp_path: Path, tiny_model_dir: Path) -> None:
    with running_gateway(config(tmp_path, tiny_model_dir)) as gw:
        run = agent_loop.start("agent-rehome")
        with gw.openai() as client:
            run_tool(run, turn(client, run), "ls", 0.1)
            home = session(gw, "agent-rehome")["instance"]
            assert gw.state is not None
            dead = next(d for d in gw.state.pool.deployments if d.name == home)

            def crash(*args: object, **kwargs: object) -> None:
                raise RuntimeError("GPU fell off the bus")

            dead.backend.engine.engine.runner.execute = crash  # type: ignore[attr-defined]
            run_tool(run, turn(client, run), "ls", 0.1)  # the home instance dies serving it: retried
            moved_to = session(gw, "agent-rehome")["instance"]
            turn(client, run)
        assert moved_to != home
        rows = {r["request_id"]: r for r in gw.rows(run.request_ids)}
        assert [rows[i]["moved_instance"] for i in run.request_ids] == [False, True, False]
        assert [rows[i]["engine_instance"] for i in run.request_ids] == [home, moved_to, moved_to]
        assert run.cached_tokens[2] >= pinned_prompt_tokens(run, 1)  # at home again on the new instance
        assert session(gw, "agent-rehome")["moves"] == 1


def test_unknown_session_is_a_404_in_openai_shape(gateway: Gateway) -> None:
    response = httpx.get(f"{gateway.url}/v1/sessions/nobody", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "session_not_found"


def test_agent_loop_on_the_embedded_default(tmp_path: Path) -> None:
    """`make serve`'s config (route group `auto` over two tiny models): a session's turns stay on the
    model and the instance holding its KV, and each returning turn finds its context cached."""
    from tests.gateway.test_gateway_embedded import embedded_config

    with pytest.MonkeyPatch.context() as env:
        env.delenv("OPENAI_API_KEY", raising=False)
        raw = embedded_config(tmp_path)
        raw["sessions"] = {"tool_durations": None}
        with running_gateway(raw) as gw, gw.openai() as client:
            run = agent_loop.start("embedded-agent")
            for step in range(3):
                run_tool(run, turn(client, run, model="auto"), f"grep -n step{step} src/", 0.05)
            turn(client, run, model="auto")
            state = session(gw, "embedded-agent")
    rows = {r["request_id"]: r for r in gw.rows(run.request_ids)}
    served = [rows[i]["engine_instance"] for i in run.request_ids]
    assert len(set(served)) == 1 and state["instance"] == served[0] and state["turns"] == 4
    assert [rows[i]["turn"] for i in run.request_ids] == [1, 2, 3, 4]
    # Seen failing once in a clean-clone CI run (stop 20) and not in 12 reruns: say what it saw.
    assert all(run.cached_tokens[i] >= pinned_prompt_tokens(run, i - 1) for i in (1, 2, 3)), (
        run.cached_tokens, [pinned_prompt_tokens(run, i) for i in range(3)],
        [rows[i]["extra"] for i in run.request_ids], state)
    assert state["cached_tokens_per_turn"] == run.cached_tokens
