"""The engine benchmarks run end to end at a tiny size and write their JSON (to a temp path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from bench import engine_cpu, sim_fidelity  # noqa: E402

TINY_MODEL = ["--layers", "1", "--hidden", "64", "--heads", "4", "--kv-heads", "2", "--vocab", "384", "--threads", "1"]
MACHINE_FIELDS = {"platform", "cpu_model", "cpu_count", "torch", "torch_threads", "date_utc"}


def test_engine_cpu_smoke(tmp_path: Path) -> None:
    out = tmp_path / "engine_cpu.json"
    report = engine_cpu.main([*TINY_MODEL, "--batch-sizes", "1", "3", "--prompt-len", "16", "--prompt-spread", "4",
                              "--output-len", "4", "--reps", "2", "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "engine_cpu"
    assert report["machine"].keys() >= MACHINE_FIELDS and report["machine"]["torch_threads"] == 1
    assert "bench.engine_cpu" in report["command"]
    assert [r["batch_size"] for r in report["results"]] == [1, 3]
    for r in report["results"]:
        for clock in ("cpu", "wall"):
            for side in ("pitstop", "hf"):
                m = r[clock][side]
                assert m["throughput_tok_s"] > 0 and m["ttft_s"] > 0 and m["tpot_s"] > 0
            assert r[clock]["pitstop_speedup"].keys() == {"throughput", "ttft", "tpot"}
            assert len(r[clock]["reps"]["pitstop"]) == 2
        # Same weights, greedy: the two engines agree (fp32 near-ties may split a path late).
        assert r["greedy_prefix_agreement"] >= 0.5


def test_sim_fidelity_smoke(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    rows += [f"2023-11-16 18:15:{10 + i // 4:02d}.{(i % 4) * 25:02d}00000,{100 + 37 * i % 300},{20 + 11 * i % 60}"
             for i in range(30)]
    trace.write_text("\n".join(rows) + "\n")
    out = tmp_path / "fidelity.json"
    report = sim_fidelity.main([*TINY_MODEL, "--trace", str(trace), "--start", "2", "--requests", "20",
                                "--calib-requests", "8", "--time-scale", "4", "--max-prompt", "96",
                                "--max-model-len", "256", "--num-blocks", "128", "--small-sweep", "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "engine_sim_fidelity"
    assert report["machine"].keys() >= MACHINE_FIELDS
    assert report["workload"]["rows"] == [2, 22]
    for variant in report["results"].values():
        assert variant["latency"]["n"] == 20 and variant["ttft"]["n"] == 20
        assert variant["latency"]["median_rel_err"] >= 0 and variant["makespan"]["real_s"] > 0
    assert report["host_overhead"]["per_step_s"] >= 0
