"""A session's turns through SessionManager: gaps learned from returning turns, returns counted,
moves and the previous pin judged, TTLs chosen; and `pitstop train tool-durations` refitting from the
outcome log the gateway writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agent_sessions.durations import ToolDurationEstimator
from agent_sessions.manager import SessionManager
from agent_sessions.store import MemorySessionStore
from agent_sessions.tool_artifact import load_estimator
from agent_sessions.ttl_policy import EngineCosts, TTLPolicy
from gateway.cli import main as pitstop
from storage.db import create_engine
from storage.migrate import upgrade
from storage.models import Outcome

pytestmark = pytest.mark.anyio
COSTS = EngineCosts(prefill_tokens_per_s=1000.0, kv_capacity_tokens=100_000, memory_pressure=0.5)
TOOLS = [{"type": "function", "function": {"name": "bash"}}]


def body(returning: bool) -> dict:
    messages = [{"role": "user", "content": "fix"}]
    if returning:
        messages += [{"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "bash", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "ok"}]
    return {"messages": messages, "tools": TOOLS, "metadata": {"agent": "swe"}}


async def test_turns_of_a_session() -> None:
    manager = SessionManager(MemorySessionStore(), TTLPolicy(ToolDurationEstimator()))
    first = await manager.begin("s", body(False), now=100.0)
    assert not first.returning and first.program_start is None and first.tool_wait_s is None
    out = await manager.end(first, "tiny#0", "tiny", 8000, 50, 0, [], COSTS, now=101.0)
    assert out.turn_number == 1 and not out.moved and out.previous_pin is None
    assert out.decision.ttl_s > 0  # an agent (tools offered) with 8k tokens of context
    first.state.pinned_tokens = 7984
    await manager.save(first.state)

    second = await manager.begin("s", body(True), now=101.7)
    assert second.returning and second.program_start == 100.0
    assert second.tool_wait_s == pytest.approx(0.7) and second.tools_answered == ["bash"]
    assert manager.estimator.count("bash") == 1 and manager.estimator.count("swe/bash") == 1
    assert second.state.returns == 1
    out = await manager.end(second, "tiny#1", "tiny", 8100, 40, 0, ["bash"], COSTS, now=102.0)
    assert out.moved and out.previous_pin == "evicted"  # served elsewhere: the pinned KV was not used
    assert second.state.moves == 1 and second.state.pending_tools == ["bash"]
    assert [t.turn for t in second.state.history] == [1, 2]


async def test_previous_pin_is_judged_hit_or_expired() -> None:
    manager = SessionManager(MemorySessionStore(), TTLPolicy(ToolDurationEstimator()))
    turn = await manager.begin("s", body(False), now=0.0)
    await manager.end(turn, "a", "m", 8000, 10, 0, [], COSTS, now=1.0)
    turn.state.pinned_tokens, turn.state.pin_deadline = 7984, 3.0
    await manager.save(turn.state)
    hit = await manager.begin("s", body(True), now=2.0)
    assert (await manager.end(hit, "a", "m", 8100, 10, 7984, [], COSTS, now=2.5)).previous_pin == "hit"
    hit.state.pinned_tokens, hit.state.pin_deadline = 8000, 3.0
    await manager.save(hit.state)
    late = await manager.begin("s", body(True), now=10.0)
    assert (await manager.end(late, "a", "m", 8200, 10, 0, [], COSTS, now=10.5)).previous_pin == "expired"


def test_train_tool_durations_from_the_outcome_log(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'outcomes.db'}"
    db = create_engine(url)
    upgrade(db)
    rows = [{"request_id": f"r{i}", "session_id": "s", "extra": {"tool_wait_s": 0.4 + 0.01 * i, "tools": ["bash"],
                                                                   "agent": "swe"}} for i in range(30)]
    rows.append({"request_id": "chat", "session_id": None, "extra": {"tool_wait_s": 99.0}})
    with db.begin() as connection:
        connection.execute(Outcome.__table__.insert(), rows)
    db.dispose()
    config = tmp_path / "pitstop.yaml"
    config.write_text(yaml.safe_dump({"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m"}}],
                                      "storage": {"url": url}}))
    out = tmp_path / "td.json"
    assert pitstop(["train", "tool-durations", "--config", str(config), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"]["observations"] == 30  # the session-less row is not read
    estimator = load_estimator(out)
    assert estimator.count("swe/bash") == 30
    assert estimator.cdf([0.3], ["bash"], "swe")[0] < 0.2 < 0.8 < estimator.cdf([0.8], ["bash"], "swe")[0]
