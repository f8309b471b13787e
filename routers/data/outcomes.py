"""Pitstop's own outcome export (storage/export.py, JSON lines or Parquet) as routing data.

Each row is one served request: the prompt, the model that answered, feedback `quality` (null when
no feedback came), `cost_usd`, `completion_tokens`. Rows without feedback or without prompt text are
dropped; the rest keep `1 / propensity` as weight, so traffic explored on purpose counts for what it
is worth (inverse propensity weighting), except a request a route group's `verify` escalated, which
the escalation model served whatever was drawn (weight 1). The wide view is sparse: one model per prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from routers.data.table import long_table
from routers.tokens import count_tokens


def read_export(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def export_traffic(path: str | Path, route_group: str | None = None) -> list[dict[str, Any]]:
    """An export's served requests with their prompts, feedback or not, oldest first: traffic to
    calibrate a route group on (routers/calibration.py). A route group's own rows where it has any."""
    served = [r for r in read_export(Path(path)) if r.get("prompt") and r.get("status", "ok") in (None, "ok")]
    own = [r for r in served if route_group is not None and r.get("route_group") == route_group]
    return own or served


def export_prompts(path: str | Path, route_group: str | None = None) -> list[str]:
    return [r["prompt"] for r in export_traffic(path, route_group)]


def load_outcomes(path: str | Path, route_group: str | None = None) -> pa.Table:
    records = [
        r for r in read_export(Path(path))
        if r.get("quality") is not None and r.get("prompt") and r.get("status", "ok") in (None, "ok")
        and (route_group is None or r.get("route_group") == route_group)
    ]
    counted = count_tokens([r["prompt"] for r in records if r.get("prompt_tokens") is None])
    missing_counts = iter(counted)
    rows = []
    for r in records:
        propensity = r.get("propensity")
        # An escalated request (routers/verify.py) was served by the escalation model, not drawn with the
        # pick's propensity: its outcome counts once.
        drawn = r.get("verify_outcome") != "escalated"
        weight = 1.0 / propensity if propensity and drawn else 1.0
        prompt_tokens = r.get("prompt_tokens")
        rows.append({
            "dataset": "outcomes", "prompt_id": r["request_id"], "prompt": r["prompt"],
            "task": r.get("route_group") or "", "model": r["model"], "quality": float(r["quality"]),
            "cost_usd": r.get("cost_usd"), "output_tokens": r.get("completion_tokens"),
            "prompt_tokens": next(missing_counts) if prompt_tokens is None else prompt_tokens,
            "weight": weight,
        })
    return long_table(rows)
