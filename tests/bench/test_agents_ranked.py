"""The agent benchmark's ranked variants (bench/agent_sim.py, bench/agents_ranked.py): the gateway's
WorkTable scores each turn from true lengths, and a returning turn whose pin is still live is scored
without its pinned context only under `work-cached`."""

from __future__ import annotations

import pytest

from agent_sessions.config import SessionsConfig
from bench.agent_sim import (
    RANKED_POLICIES,
    AgentDriver,
    ChatRequest,
    attention_knee_tokens,
    run_policy,
    work_score,
    workload_work_table,
)
from bench.agent_workload import ProgramTemplate, ToolScaling, TurnTemplate, make_programs
from engine.roofline import RooflineStepTime

TEMPLATE = ProgramTemplate("fix-a-bug", [TurnTemplate(3000, 60, "bash", "ls", 1.0),
                                         TurnTemplate(200, 40, "bash", "pytest", 2.0),
                                         TurnTemplate(150, 30, None, "", 0.0)])
CHAT = [ChatRequest(0.5 * i, 400, 100) for i in range(6)]


def test_a_pinned_context_lowers_the_work_score_by_exactly_its_prefill():
    programs = make_programs([TEMPLATE], 4, 1.0, ToolScaling(), seed=0)
    table = workload_work_table(programs, CHAT, prefill_weight=1.0)
    assert len(table.rows["workload"]) == 4 * 3 + len(CHAT)
    whole = work_score(table, 3300, 40)
    assert work_score(table, 3300, 40, cached_tokens=3200) == pytest.approx(work_score(table, 100, 40))
    assert work_score(table, 3300, 40, cached_tokens=3200) < whole
    assert work_score(table, 3000, 10) < work_score(table, 3000, 400)  # the answer still counts


@pytest.mark.parametrize("policy", RANKED_POLICIES, ids=[p.rank for p in RANKED_POLICIES])
def test_returning_turns_are_scored_with_their_live_pins(policy, monkeypatch: pytest.MonkeyPatch):
    seen: list[tuple[int, int, int, float | None]] = []
    rank_score = AgentDriver.rank_score

    def spy(self: AgentDriver, prompt_tokens: int, output_tokens: int, pinned_tokens: int = 0) -> float | None:
        score = rank_score(self, prompt_tokens, output_tokens, pinned_tokens)
        seen.append((prompt_tokens, output_tokens, pinned_tokens, score))
        return score

    monkeypatch.setattr(AgentDriver, "rank_score", spy)
    model = RooflineStepTime.builtin("llama-3.1-8b")
    programs = make_programs([TEMPLATE], 4, 1.0, ToolScaling(), seed=0)
    table = workload_work_table(programs, CHAT, prefill_weight=1.0)
    config = SessionsConfig(attention_knee_tokens=attention_knee_tokens(model))
    result = run_policy(policy, programs, CHAT, model, num_blocks=4096, config=config, work=table)
    assert result["programs"] == 4 and result["chat_requests"] == len(CHAT)
    returning = [s for s in seen if s[0] > 3000]  # later turns carry the first turn's 3,000 tokens
    assert len(returning) == 4 * 2 and len(seen) == 4 * 3 + len(CHAT)
    pinned = [s for s in returning if s[2] > 0]
    assert pinned, "no returning turn found its pin alive (TTLs of seconds, tools of 1-2 s)"
    assert all(s[2] % 16 == 0 and s[2] < s[0] for s in pinned)  # whole blocks of the previous prompt
    for prompt, answer, cached, score in pinned:
        expected = work_score(table, prompt, answer, cached if policy.rank == "work-cached" else 0)
        assert score == pytest.approx(expected)
