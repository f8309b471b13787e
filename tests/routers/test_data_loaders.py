"""Loaders into the long format: the public sets (skipped without ../shared/data) and Pitstop's export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from routers.data.outcomes import load_outcomes
from routers.data.prices import fit_prices
from routers.data.table import LONG_SCHEMA, RoutingData, to_wide
from storage.export import EXPORT_SCHEMA

from .conftest import load_or_skip


@pytest.fixture(scope="module")
def routerbench(shared_data: Path) -> RoutingData:
    """Loaded once for the module's tests (seconds of parsing); they only read it."""
    return load_or_skip("routerbench", shared_data)


def test_routerbench_keeps_missing_scores_missing(routerbench: RoutingData) -> None:
    data = routerbench
    assert len(data.models) == 11
    assert (data.splits == "train").sum() == 2225 and (data.splits == "test").sum() == 953
    assert set(data.tasks) == {"arc-challenge", "mbpp", "winogrande"}
    arc = data.tasks == "arc-challenge"
    assert np.isnan(data.quality[arc]).any() and not np.isnan(data.quality[~arc]).any()
    assert not np.isnan(data.cost).any() and (data.cost > 0).all()
    gpt4 = data.model_index("gpt-4-1106-preview")
    assert np.nanmean(data.split("test").quality[:, gpt4]) == pytest.approx(0.8796, abs=1e-3)
    assert (data.output_tokens[data.tasks == "mbpp", gpt4] > 50).mean() > 0.9  # code answers, counted in tokens
    # each reply's short answer (routers/verify.py): a letter on the multiple-choice tasks, none for code
    assert all(a is None for a in data.answers[data.tasks == "mbpp"].ravel())
    letters = data.answers[~(data.tasks == "mbpp"), gpt4]
    assert np.mean([a in ("A", "B", "C", "D", "E") for a in letters]) > 0.99


def test_prices_fitted_from_real_costs_match_the_list_prices(routerbench: RoutingData) -> None:
    prices, errors = fit_prices(routerbench.split("train"))
    # gpt-4-1106-preview lists $10 / $30 per million tokens (provider tokens; ours are MiniLM's)
    assert prices.input["gpt-4-1106-preview"] * 1e6 == pytest.approx(10, rel=0.1)
    assert prices.output["gpt-4-1106-preview"] * 1e6 == pytest.approx(30, rel=0.15)
    assert max(errors.values()) < 0.05


@pytest.mark.parametrize(("name", "prompts", "models"), [("gsm8k", 1319, 2), ("mt_bench", 160, 2),
                                                         ("llmrouter", 6108, 9)])
def test_public_sets_load(shared_data: Path, name: str, prompts: int, models: int) -> None:
    data = load_or_skip(name, shared_data)
    assert len(data) == prompts and len(data.models) == models
    observed = data.quality[~np.isnan(data.quality)]
    assert ((observed >= 0) & (observed <= 1)).all()


def test_gsm8k_has_answer_lengths_and_no_costs(shared_data: Path) -> None:
    data = load_or_skip("gsm8k", shared_data)
    assert not np.isnan(data.output_tokens).any() and np.isnan(data.cost).all()


def _export_rows() -> list[dict]:
    base = {name: None for name in EXPORT_SCHEMA.names}
    return [
        {**base, "request_id": "r1", "prompt": "What is 2+2?", "model": "small", "quality": 1.0, "cost_usd": 1e-5,
         "prompt_tokens": 7, "completion_tokens": 3, "status": "ok", "propensity": 0.25, "route_group": "g"},
        {**base, "request_id": "r2", "prompt": "Write a poem.", "model": "big", "quality": 0.5, "cost_usd": 1e-3,
         "prompt_tokens": None, "completion_tokens": 90, "status": "ok", "propensity": None, "route_group": "g"},
        {**base, "request_id": "r3", "prompt": "No feedback yet.", "model": "big", "quality": None, "status": "ok"},
        {**base, "request_id": "r4", "prompt": "Failed.", "model": "big", "quality": 0.0, "status": "error"},
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_outcome_export_becomes_sparse_weighted_routing_data(tmp_path: Path, fmt: str) -> None:
    rows = _export_rows()
    path = tmp_path / f"export.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows, schema=EXPORT_SCHEMA), path)
    table = load_outcomes(path)
    assert table.schema == LONG_SCHEMA and table.num_rows == 2  # no feedback / failed rows dropped
    data = to_wide(table)
    assert data.models == ["big", "small"] and len(data) == 2
    small = data.model_index("small")
    assert data.weight[data.prompt_ids.index("r1"), small] == pytest.approx(4.0)  # 1 / propensity
    assert np.isnan(data.quality[data.prompt_ids.index("r1"), data.model_index("big")])  # one model per prompt
    assert data.prompt_tokens[data.prompt_ids.index("r2")] > 0  # counted when the export has none
