"""bench/host_kv.py's pieces on a small synthetic workload: agent programs whose contexts the cache
cannot keep come back from the host tier, the TTL policy prices that, and the summary compares runs."""

from __future__ import annotations

from agent_sessions.config import SessionsConfig
from bench.agent_sim import POLICIES, ChatRequest, attention_knee_tokens, run_policy
from bench.agent_workload import ProgramTemplate, ToolScaling, TurnTemplate, make_programs
from bench.host_kv import summary
from engine.roofline import RooflineStepTime

MODEL = RooflineStepTime.builtin("llama-3.1-8b")
TEMPLATE = ProgramTemplate("fix-a-bug", [TurnTemplate(6000, 60, "bash", "ls", 2.0),
                                         TurnTemplate(300, 40, "bash", "pytest", 4.0),
                                         TurnTemplate(200, 30, None, "", 0.0)])
CHAT = [ChatRequest(0.5 * i, 3000, 100) for i in range(20)]


def _run(policy_name: str, host_blocks: int, **kwargs: object) -> dict:
    policy = next(p for p in POLICIES if p.name == policy_name)
    programs = make_programs([TEMPLATE], 8, 2.0, ToolScaling(), seed=0)
    config = SessionsConfig(attention_knee_tokens=attention_knee_tokens(MODEL))
    return run_policy(policy, programs, CHAT, MODEL, num_blocks=1200, config=config, num_host_blocks=host_blocks,
                      **kwargs)  # type: ignore[arg-type]


def test_contexts_the_gpu_cannot_keep_come_back_from_the_host_tier() -> None:
    gpu_only, tiered = _run("no-pinning", 0), _run("no-pinning", 4800)
    assert gpu_only["host_blocks"] == 0 and tiered["host_blocks"] == 4800
    assert tiered["host_hit_tokens"] > 10_000 and tiered["host_saved_blocks"] > 0
    assert tiered["prefill_tokens_computed"] < gpu_only["prefill_tokens_computed"] - 10_000
    assert tiered["jct_avg_s"] < gpu_only["jct_avg_s"]


def test_pitstop_pins_less_when_it_prices_the_host_tier() -> None:
    priced = _run("pitstop", 4800)
    unpriced = _run("pitstop", 4800, price_kv_tiers=False, pin_hold_on_arrival_s=30.0)
    assert priced["ttl_median_s"] < unpriced["ttl_median_s"]


def test_summary_compares_each_host_size_with_none() -> None:
    def row(policy: str, ratio: int, jct: float) -> dict:
        return {"runner": "simulated", "model": "m", "program_rate_per_s": 0.1, "policy": policy,
                "host_ratio": ratio, "jct_avg_s": jct, "prefill_tokens_computed": int(jct * 10)}

    rows = [row("pitstop", 0, 300.0), row("pitstop", 4, 200.0), row("no-pinning", 0, 400.0),
            row("no-pinning", 4, 250.0), row("pitstop-gpu-only-rules", 4, 240.0)]
    by_policy = {s["policy"]: s for s in summary(rows)}
    assert by_policy["pitstop"]["speedup_vs_no_host"] == {"4": 1.5}
    assert by_policy["no-pinning"]["speedup_vs_no_host"] == {"4": 1.6}
    assert by_policy["no-pinning"]["speedup_vs_pitstop_gpu_only"] == {"0": 0.75, "4": 1.2}
    assert by_policy["pitstop-gpu-only-rules"]["speedup_vs_no_host"] == {"4": 1.25}  # against Pitstop without
