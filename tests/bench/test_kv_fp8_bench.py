"""bench/kv_fp8.py's pieces on small workloads: an fp8 cache in the same memory keeps more agent context
than bf16, the summary compares the two, and the torch part measures both caches."""

from __future__ import annotations

from pathlib import Path

from agent_sessions.config import SessionsConfig
from bench.agent_sim import POLICIES, ChatRequest, attention_knee_tokens, run_policy
from bench.agent_workload import ProgramTemplate, ToolScaling, TurnTemplate, make_programs
from bench.kv_fp8 import capacity, sim_summary, torch_accuracy, torch_decode_steps
from engine.roofline import RooflineStepTime
from engine.tiny_model import make_tiny_model

BF16 = RooflineStepTime.builtin("llama-3.1-8b")
TEMPLATE = ProgramTemplate("fix-a-bug", [TurnTemplate(6000, 60, "bash", "ls", 2.0),
                                         TurnTemplate(300, 40, "bash", "pytest", 4.0),
                                         TurnTemplate(200, 30, None, "", 0.0)])
CHAT = [ChatRequest(0.5 * i, 3000, 100) for i in range(20)]


def _run(kv_cache_dtype: str) -> dict:
    model = BF16.with_kv_cache_dtype(kv_cache_dtype)
    policy = next(p for p in POLICIES if p.name == "no-pinning")
    programs = make_programs([TEMPLATE], 8, 2.0, ToolScaling(), seed=0)
    num_blocks = 1200 * BF16.model.kv_bytes // model.model.kv_bytes  # the same memory
    config = SessionsConfig(attention_knee_tokens=attention_knee_tokens(model))
    return run_policy(policy, programs, CHAT, model, num_blocks=num_blocks, config=config) | {
        "policy": "no-pinning", "kv_cache_dtype": kv_cache_dtype, "model": "8b", "program_rate_per_s": 2.0}


def test_an_fp8_cache_in_the_same_memory_recomputes_less_agent_context() -> None:
    bf16, fp8 = _run("auto"), _run("fp8")
    assert fp8["prefill_tokens_computed"] < bf16["prefill_tokens_computed"] - 5_000
    assert fp8["jct_avg_s"] < bf16["jct_avg_s"]
    (row,) = sim_summary([bf16, fp8])
    assert row["avg_speedup"] == round(bf16["jct_avg_s"] / fp8["jct_avg_s"], 3) > 1


def test_capacity_doubles_beside_the_same_weights() -> None:
    rows = capacity()
    assert {r["model"] for r in rows} == {"llama-3.1-8b", "llama-3.1-70b"}
    assert all(abs(r["ratio"] - 2) < 0.001 for r in rows)


def test_torch_part_measures_both_caches(tmp_path: Path) -> None:
    tiny_model_dir = make_tiny_model(tmp_path / "tiny")
    accuracy = torch_accuracy(tiny_model_dir, [list(range(3, 99)), list(range(200, 260))])
    assert accuracy["scored_tokens"] == 95 + 59
    assert 0 < accuracy["fp8"]["mean_abs_logprob_error"] < accuracy["fp8_e5m2"]["mean_abs_logprob_error"]
    decode = torch_decode_steps(tiny_model_dir, batch=2, context=40, steps=2, rounds=1)
    assert decode["steps_each"] == 2 and all(ms > 0 for ms in decode["median_step_ms"].values())
