"""The verify benchmark runs end to end at a tiny size: five mock upstreams, the gateway with five route
groups, whole and streamed, every response's outcome header checked inside it; its JSON has one entry
per outcome and mode, and the number of upstream calls shows in the latency (each mock waits 30 ms)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import gateway_verify


def test_verify_benchmark_runs_and_reports_each_outcome(tmp_path: Path) -> None:
    out = tmp_path / "verify.json"
    gateway_verify.main(["--rounds", "1", "--block", "4", "--delay-ms", "30", "--out", str(out)])
    result = json.loads(out.read_text())
    groups = result["groups"]
    assert set(groups) == {"plain", "plain-text", "unchecked", "accepted", "escalated"}
    assert all(g["requests"] == 4 for g in groups.values())
    # the calls are made one after the other: a request takes at least the mocks' delays (a floor, not a timing)
    assert [groups[g]["upstream_calls"] for g in ("plain", "plain-text", "unchecked", "accepted", "escalated")] == [
        1, 1, 1, 2, 3]
    for g in groups.values():
        assert g["p50_ms"] >= 30 * g["upstream_calls"]
    streamed = result["streamed"]
    assert set(streamed) == set(groups) and all(g["requests"] == 4 for g in streamed.values())
    # a held stream's first token waits for the verdict: the calls before it, one after the other
    for name, g in streamed.items():
        assert g["ttft_p50_ms"] >= 30 * g["upstream_calls"] and g["p50_ms"] >= g["ttft_p50_ms"], name
