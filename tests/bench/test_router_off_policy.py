"""The off-policy benchmark (bench/router_off_policy.py) on the routers' graded set: the job's estimates
of the router that served the log match the truth exactly without exploration (it agrees with every
logged choice), land near the truth with it, and the truth is what the full table says the picks got."""

from __future__ import annotations

import numpy as np
import pytest

from bench.router_off_policy import calls, fixed, simulate
from routers.data.prices import fit_prices
from routers.data.table import long_table, to_wide
from routers.evaluate import candidates_for
from routers.exploration import Exploration
from routers.families import build_router
from routers.features.featurizer import FeatureSpec
from tests.routers.conftest import graded_rows, random_encoder


def test_off_policy_bench_on_graded_traffic() -> None:
    data = to_wide(long_table(graded_rows(60)), name="graded")
    train, test = data.split("train"), data.split("test")
    spec = FeatureSpec("static", ("head", "focus"), True, 12)
    candidates = candidates_for(data.models, fit_prices(train)[0])
    routers = [fixed(build_router(family, data.models, spec, random_encoder()).fit(train), test.prompts, candidates)
               for family in ("pitstop", "zero")]
    quality, cost = np.nan_to_num(test.quality), test.cost
    results = simulate(routers, test.prompts, candidates, quality, cost, draws=8, repeat=3,
                       explorations=(Exploration(0.0), Exploration(0.3)),
                       preferences=(None, 0.0))
    assert [(r["epsilon"], r["cost_preference"], r["draws"]) for r in results] == [
        (0.0, "as logged (1.0)", 1), (0.0, 0.0, 1), (0.3, "as logged (1.0)", 8), (0.3, 0.0, 8)]
    assert all(r["requests"] == 3 * len(test.prompts) for r in results)
    unexplored = results[0]["policies"][0]
    assert unexplored["quality"]["dr_rmse"] == pytest.approx(0.0, abs=1e-12)  # the log's own router, as logged
    assert unexplored["cost"]["dr_rmse"] == pytest.approx(0.0, abs=1e-12)
    explored = results[2]
    for row in explored["policies"]:
        assert abs(row["quality"]["dr_bias"]) < 0.1 and row["quality"]["dr_rmse"] < 0.15
        assert row["unsupported"] == 0.0
    zero = explored["policies"][1]
    assert set(zero["vs_current_quality"]) == {"true", "dr_rmse", "coverage", "called_right", "called_wrong",
                                               "flagged_thin", "called_right_unflagged", "called_wrong_unflagged"}
    assert 0.0 <= zero["vs_current_quality"]["flagged_thin"] <= 1.0
    assert results[0]["policies"][1]["outcomes_where_it_differs"] == 0  # unexplored: none where it differs
    spend = explored["same_spend"]
    assert [row["router"] for row in spend] == ["pitstop", "zero"]
    assert 0.3 < spend[0]["true_cost_over_target"] < 3.0


def test_a_difference_claimed_where_there_is_none_is_a_wrong_call() -> None:
    intervals = [{"low": 0.1, "high": 0.2, "mean": 0.15}, {"low": -0.2, "high": -0.1, "mean": -0.15},
                 {"low": -0.1, "high": 0.1, "mean": 0.0}]
    none = calls(intervals, 0.0)
    assert none["called_right"] == 0.0 and none["called_wrong"] == pytest.approx(2 / 3)
    positive = calls(intervals, 0.05, thin=[True, False, False])
    assert positive["called_right"] == positive["called_wrong"] == pytest.approx(1 / 3)
    assert positive["called_wrong_unflagged"] == 0.5 and positive["flagged_thin"] == pytest.approx(1 / 3)
