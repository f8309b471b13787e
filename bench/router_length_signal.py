"""Expected answer length as a difficulty signal in Pitstop's router: the fact behind it and an ablation.

1. GSM8K: how well the strong model's *real* answer length ranks the weak model's failures (ROC AUC),
   and how well a cross-fitted ridge prediction of it from the prompt does.
2. GSM8K, RouteLLM's protocol (5-fold cross-fitting, APGR): `pitstop` with and without the length
   learner, over several cross-fitting seeds (the folds move the APGR by about +-0.005).
3. RouterBench: the selection protocol used for the router's other choices (3-fold cross-fitting on the
   training split only, several seeds), and the published test split, with and without.
Writes bench/results/routers/length_signal.json.

    python -m bench.router_length_signal [--seeds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold

from routers.data.catalog import load_dataset
from routers.data.prices import fit_prices
from routers.data.table import RoutingData
from routers.encoder_store import load_or_distil
from routers.evaluate import evaluate_multi, evaluate_two
from routers.families import FAMILIES, Family
from routers.jobs import FeatureBank, RouterSpec, cross_fit_predictions, split_predictions
from routers.models.difficulty import LogLengthRidge
from routers.models.pitstop import PitstopConfig, PitstopQuality
from routers.run_eval import PITSTOP_FEATURES

OUT = Path("bench/results/routers/length_signal.json")
WITHOUT = "pitstop-no-length"
FAMILIES[WITHOUT] = Family(lambda: PitstopQuality(PitstopConfig(use=("task", "head", "sparse"))), "ridge",
                           "ablation: Pitstop's stack without the answer-length learner")
SPECS = {name: RouterSpec(name, name, PITSTOP_FEATURES) for name in ("pitstop", WITHOUT)}


def summary(values: list[float]) -> dict[str, object]:
    return {"per_seed": [round(v, 4) for v in values], "mean": float(np.mean(values)),
            "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def length_facts(data: RoutingData, bank: FeatureBank, strong: int, weak: int) -> dict[str, float]:
    weak_fails = data.quality[:, weak] < 0.5
    gap = data.quality[:, strong] - data.quality[:, weak] > 0
    real = np.log1p(data.output_tokens[:, strong])
    x = bank.get(PITSTOP_FEATURES)
    predicted = np.zeros(len(data))
    for train, held in KFold(5, shuffle=True, random_state=0).split(predicted):
        predicted[held] = LogLengthRidge().fit(x.rows(train), data.output_tokens[train]).predict(x.rows(held))[:, strong]
    return {
        "auc_weak_fails_by_real_strong_length": float(roc_auc_score(weak_fails, real)),
        "auc_strong_only_right_by_real_strong_length": float(roc_auc_score(gap, real)),
        "auc_weak_fails_by_predicted_strong_length": float(roc_auc_score(weak_fails, predicted)),
        "corr_predicted_real_log_length": float(np.corrcoef(predicted, real)[0, 1]),
        "auc_weak_fails_by_prompt_tokens": float(roc_auc_score(weak_fails, data.prompt_tokens)),
    }


def gsm8k(seeds: int) -> dict[str, object]:
    data = load_dataset("gsm8k").complete()
    bank = FeatureBank(data, load_or_distil())
    q = data.quality.mean(axis=0)
    strong, weak = (0, 1) if q[0] >= q[1] else (1, 0)
    out: dict[str, object] = {"prompts": len(data), "strong": data.models[strong], "weak": data.models[weak],
                              "facts": length_facts(data, bank, strong, weak)}
    apgr: dict[str, list[float]] = {}
    for name, spec in SPECS.items():
        for seed in range(seeds):
            pred, _ = cross_fit_predictions(spec, bank, 5, seed=seed)
            result = evaluate_two([pred], data, data.models[strong], data.models[weak])
            apgr.setdefault(name, []).append(result["routers"][name]["apgr"])  # type: ignore[index]
    out["apgr_5fold"] = {name: summary(v) for name, v in apgr.items()}
    out["apgr_difference_per_seed"] = summary([a - b for a, b in zip(apgr["pitstop"], apgr[WITHOUT], strict=True)])
    return out


def routerbench(seeds: int) -> dict[str, object]:
    data = load_dataset("routerbench")
    train_rows, test_rows = np.flatnonzero(data.splits == "train"), np.flatnonzero(data.splits == "test")
    train = dataclasses.replace(data.subset(train_rows), splits=np.full(len(train_rows), "all", dtype=object))
    train_bank, bank = FeatureBank(train, load_or_distil()), FeatureBank(data, load_or_distil())
    cv: dict[str, dict[str, list[float]]] = {}
    test: dict[str, dict[str, float]] = {}
    for name, spec in SPECS.items():
        for seed in range(seeds):
            start = time.perf_counter()
            pred, _ = cross_fit_predictions(spec, train_bank, 3, seed=seed)
            r = evaluate_multi([pred], train, fit_prices(train)[0], "zero")["routers"][name]  # type: ignore[index]
            cv.setdefault(name, {}).setdefault("aiq", []).append(r["aiq"])
            cv[name].setdefault("train_seconds", []).append(time.perf_counter() - start)
        pred, _ = split_predictions(spec, bank, train_rows, test_rows)
        r = evaluate_multi([pred], data.subset(test_rows), fit_prices(data.subset(train_rows))[0],
                           "zero")["routers"][name]  # type: ignore[index]
        test[name] = {k: r[k] for k in ("aiq", "quality_at_strongest_cost", "cost_share_to_match_strongest")}
    return {"train_split_3fold": {name: {k: summary(v) for k, v in d.items()} for name, d in cv.items()},
            "published_test_split": test}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    report = {"gsm8k": gsm8k(args.seeds), "routerbench": routerbench(min(args.seeds, 3))}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
