"""bench/prefix_routing.py on a small workload: resent agent turns routed by their prefix find their
context where they were served, where least-outstanding balancing scatters them."""

from __future__ import annotations

from bench.agent_workload import ProgramTemplate, ToolScaling, TurnTemplate, make_programs
from bench.prefix_routing import Router, run, summary
from engine.roofline import RooflineStepTime

MODEL = RooflineStepTime.builtin("llama-3.1-8b")
TEMPLATE = ProgramTemplate("fix-a-bug", [TurnTemplate(3000, 60, "bash", "ls", 1.0),
                                         TurnTemplate(300, 40, "bash", "pytest", 2.0),
                                         TurnTemplate(300, 40, "bash", "ls", 1.0),
                                         TurnTemplate(200, 30, None, "", 0.0)])


def test_prefix_affinity_recomputes_less_than_least_outstanding() -> None:
    programs = make_programs([TEMPLATE], 24, 4.0, ToolScaling(), seed=0)
    rows = [{"program_rate_per_s": 4.0, **run(policy, programs, MODEL, instances=3, shared_prefix=1000)}
            for policy in ("least-outstanding", "round-robin", "prefix", "session")]
    by = {r["policy"]: r for r in rows}
    assert all(r["programs"] == 24 and sum(r["requests_per_instance"]) == 24 * 4 for r in rows)
    assert by["prefix"]["prefill_tokens_computed"] < by["least-outstanding"]["prefill_tokens_computed"]
    assert by["prefix"]["prefix_hit_rate"] > by["round-robin"]["prefix_hit_rate"]
    assert by["prefix"]["affinity_reasons"].get("prefix", 0) >= 24 * 3  # every later turn found its prefix
    (row,) = summary(rows)
    assert row["prefill_ratio_least_outstanding_over_prefix"] > 1


def test_round_robin_and_least_outstanding_route_as_the_pool_does() -> None:
    router = Router("least-outstanding", ["a", "b", "c"], 1000)
    assert router.route("p", [1, 2], [2, 0, 0]) == 1  # ties: the first
    robin = Router("round-robin", ["a", "b"], 1000)
    assert [robin.route("p", [1], [0, 0]) for _ in range(3)] == [0, 1, 0]
