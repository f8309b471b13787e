"""The tracing benchmark (bench/tracing.py) end to end at a tiny size: mock upstream, its collector process,
a gateway with tracing off and one with it on, both modes; the spans reached the collector and the report
has its fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import tracing


@pytest.mark.timeout(180)
def test_tracing_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "tracing.json"
    tracing.main(["--rate", "20", "--duration", "0.6", "--warmup", "0.2", "--rounds", "1", "--burst-s", "0.5",
                  "--concurrency", "4", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["command"].startswith(".venv/bin/python -m bench.tracing") and report["machine"]["cpu_model"]
    runs = report["runs"]
    assert [(r["mode"], r["tracing"]) for r in runs] == [("whole", False), ("whole", True), ("stream", False),
                                                         ("stream", True)]
    for run in runs:
        assert run["errors"] == 0 and run["ok"] > 0 and run["latency_ms"]["p50"] > 0
        assert run["saturated"]["ok"] > 0 and run["saturated"]["errors"] == 0
        assert run["gateway_cpu_ms_per_request"] > 0
    assert runs[2]["ttft_ms"]["p50"] > 0
    for mode in ("whole", "stream"):
        ratios = report["summary"][mode]
        assert {"p50_ratio", "p99_ratio", "p50_added_ms", "p99_added_ms", "cpu_per_request_ratio",
                "throughput_ratio"} <= ratios.keys()
        assert ratios["p50_ratio"] > 0 and ratios["throughput_ratio"] > 0
    received = report["collector"]
    # Every traced request left at least its server, route and attempt spans at the collector (warm-up's too).
    assert received["exports"] > 0 and received["spans"] >= 3 * received["traced_requests_measured"]
