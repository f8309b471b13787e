"""bench/guardrails.py at a tiny size: every row timed, and its requests really carry values to mask."""

from __future__ import annotations

import json
from pathlib import Path

from bench.guardrails import main, request_of
from gateway.guardrails import request_texts
from gateway.pii import find


def test_the_rows_time_masking_and_restoring(tmp_path: Path) -> None:
    out = tmp_path / "guardrails.json"
    main(["--sizes", "1000", "5000", "--reps", "2", "--rounds", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["request_chars"] for r in rows] == [1000, 5000]
    assert all(r["values_masked"] >= 3 and r["mask_request_us"] > r["copy_only_us"] > 0 for r in rows)
    body = request_of(2000)
    kinds = {kind for text in request_texts(body) for _, _, kind in find(text)}
    assert kinds == {"email", "phone", "credit_card"}
