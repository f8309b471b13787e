"""bench/draft_model.py at its smoke size: the report's shape, and the knob it rests on (a target whose
later layers write less is drafted better by its own first layer than by an unrelated model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.draft_model import main


def test_the_quick_run_reports_every_row_and_the_knob_works(tmp_path: Path) -> None:
    out = tmp_path / "draft_model.json"
    main(["--quick", "--out", str(out)])
    report = json.loads(out.read_text())
    first, unrelated = report["targets"]
    assert first["draft"] == "the target's first layer" and unrelated["draft"].startswith("an unrelated")
    for target in report["targets"]:
        assert [(r["sampling"], r["batch"]) for r in target["rows"]] == [
            ("greedy", 1), ("greedy", 4), ("sampled", 1), ("sampled", 4)]
        assert all(r["fixed"]["draft_passes"] > 0 and r["fixed"]["speedup"] > 0 for r in target["rows"])
        # sampled requests under both acceptance methods, greedy ones once (the same check under both)
        assert all(("fixed_coupled" in r and "goodput_coupled" in r) == (r["sampling"] == "sampled")
                   for r in target["rows"])
    for mine, theirs in zip(first["rows"], unrelated["rows"], strict=True):
        assert mine["fixed"]["acceptance"] > theirs["fixed"]["acceptance"] + 0.3
        assert mine["fixed"]["tokens_per_request_step"] > theirs["fixed"]["tokens_per_request_step"]
        # drafts that never hold: the goodput arm writes far fewer of them than the fixed arm
        assert theirs["goodput"]["draft_tokens"] < theirs["fixed"]["draft_tokens"] / 2


def test_the_roofline_projection_prices_the_drafts_passes() -> None:
    from bench.draft_model import expected_tokens, roofline_rows
    from engine.roofline import RooflineStepTime

    assert RooflineStepTime.builtin("llama-3.2-1b").model.weight_memory_bytes / 2 == pytest.approx(1.236e9, rel=0.02)
    assert expected_tokens(0.5, 2) == 1.75 and expected_tokens(1.0, 4) == 5.0
    rows = roofline_rows()
    for batch in (1, 8, 32):
        for k in (2, 4, 6):
            speedups = [r["speedup"] for r in rows if r["batch"] == batch and r["num_speculative_tokens"] == k]
            assert speedups == sorted(speedups) and len(speedups) == 4  # more acceptance, more speed
    one = {(r["num_speculative_tokens"], r["acceptance"]): r for r in rows if r["batch"] == 1}
    assert one[(6, 0.5)]["speedup"] < 1 < one[(2, 0.5)]["speedup"]  # long drafts that seldom hold cost more
    assert one[(4, 0.8)]["draft_ms"] < one[(4, 0.8)]["check_ms"]  # four passes of 1B under one of 8B
