"""How much prompt-level signal RouterBench leaves a router: per task and model, the ROC AUC of Pitstop's
predicted quality on the test split, and the AIQ of a router that is told each test prompt's true task
and routes on per-task mean quality from the training split (no prompt-level signal at all), measured
with the same harness as `pitstop eval router`, as AIQ and as the share of GPT-4's cost at which each
reaches GPT-4's quality; and both again given each test prompt's true answer lengths, so predicted cost
is exact (is the gap on the cost side?). Writes bench/results/routers/headroom.json.

    python -m bench.router_headroom
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from routers.data.catalog import load_dataset
from routers.data.prices import fit_prices
from routers.encoder_store import load_or_distil
from routers.evaluate import Predictions, evaluate_multi
from routers.jobs import FeatureBank, RouterSpec, split_predictions
from routers.run_eval import PITSTOP_FEATURES

OUT = Path("bench/results/routers/headroom.json")


def per_task_auc(quality: np.ndarray, truth: np.ndarray, tasks: np.ndarray, models: list[str]) -> dict:
    out: dict[str, dict[str, float | None]] = {}
    for task in np.unique(tasks):
        rows = tasks == task
        out[str(task)] = {}
        for j, model in enumerate(models):
            y, p = truth[rows, j], quality[rows, j]
            known = ~np.isnan(y)
            labels = y[known] >= 0.5
            out[str(task)][model] = (float(roc_auc_score(labels, p[known])) if 0 < labels.sum() < len(labels)
                                     else None)
    return out


def main() -> int:
    data = load_dataset("routerbench")
    train_rows, test_rows = np.flatnonzero(data.splits == "train"), np.flatnonzero(data.splits == "test")
    train, test = data.subset(train_rows), data.subset(test_rows)
    bank = FeatureBank(data, load_or_distil())
    pitstop, _ = split_predictions(RouterSpec("pitstop", "pitstop", PITSTOP_FEATURES), bank, train_rows, test_rows)
    task_mean = np.zeros_like(pitstop.quality)
    for task in np.unique(test.tasks):
        task_mean[test.tasks == task] = np.nanmean(train.quality[train.tasks == task], axis=0)
    told = Predictions("task-mean (true task given)", task_mean, pitstop.output_tokens)
    true_tokens = np.where(np.isnan(test.output_tokens), 0.0, test.output_tokens)
    exact_cost = [Predictions(f"{p.name}, true answer lengths", p.quality, true_tokens) for p in (pitstop, told)]
    result = evaluate_multi([pitstop, told, *exact_cost], test, fit_prices(train)[0], "zero")
    aucs = per_task_auc(pitstop.quality, test.quality, test.tasks, test.models)
    flat = [a for task in aucs.values() for a in task.values() if a is not None]
    report = {
        "data": "routerbench subset, published split", "test_prompts": len(test), "missing": "zero",
        "aiq": {name: r["aiq"] for name, r in result["routers"].items()},  # type: ignore[union-attr]
        # the other goal: the share of the strongest model's cost at which each reaches its quality
        "cost_share_to_match_strongest": {name: r["cost_share_to_match_strongest"]
                                          for name, r in result["routers"].items()},  # type: ignore[union-attr]
        "pitstop_auc_per_task_and_model": aucs, "pitstop_auc_range": [min(flat), max(flat)],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("aiq", "cost_share_to_match_strongest", "pitstop_auc_range")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
