"""`pitstop eval router`: every router family trained and measured in one run on one data set.

Protocol: the published train/test split where the data set has one (RouterBench, LLMRouter), else
K-fold cross-fitting. Peers run twice: on their published features (all-MiniLM-L6-v2 over the first
256 tokens) and on the same view through Pitstop's distilled static encoder, which shows the
encoder's quality/latency trade-off model by model.
Writes <out>/<data>.json (metrics, latency, bootstrap intervals, calibration, data reference) and
<out>/<data>.png (cost-quality hulls, or quality vs share of strong calls for two-model data)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from routers.calibration import calibrate_estimates
from routers.data.catalog import load_dataset
from routers.data.prices import fit_prices
from routers.data.table import Prices, RoutingData
from routers.encoder_store import load_or_distil
from routers.evaluate import (
    LAMBDAS,
    Predictions,
    candidates_for,
    choice_matrix,
    choices,
    evaluate_multi,
    evaluate_two,
    realised,
    reference_cost,
)
from routers.families import BASELINES, PEERS
from routers.features.featurizer import FeatureSpec
from routers.jobs import FeatureBank, RouterSpec, cross_fit_predictions, measure_latency, split_predictions
from routers.learned import estimate_for
from routers.report import plot_cost_quality, plot_strong_share, write_json
from routers.verify_calibration import calibration_with_verify
from routers.verify_eval import VerifySetting, choose_verifiers

log = logging.getLogger("pitstop.routers")

PITSTOP_FEATURES = FeatureSpec("static", ("head", "focus"), True, 18)
PUBLISHED_FEATURES = FeatureSpec("minilm", ("head",), False, 0)
PEER_STATIC_FEATURES = FeatureSpec("static", ("head",), False, 0)  # the published recipe, fast encoder
BASELINE_FEATURES = FeatureSpec("none", (), True, 0)
MINILM_LATENCY_REQUESTS = 100  # the transformer takes 15-150 ms a request: fewer samples suffice


def router_specs(families: list[str], peer_features: list[str]) -> list[RouterSpec]:
    specs = []
    if "pitstop" in families:
        specs.append(RouterSpec("pitstop", "pitstop", PITSTOP_FEATURES))
    for family in (f for f in families if f in PEERS):
        if "published" in peer_features:
            specs.append(RouterSpec(f"{family} [MiniLM head]", family, PUBLISHED_FEATURES))
        if "static" in peer_features:
            specs.append(RouterSpec(f"{family} [static head]", family, PEER_STATIC_FEATURES))
    specs += [RouterSpec(family, family, BASELINE_FEATURES) for family in families if family in BASELINES]
    return specs


def _has_split(data: RoutingData) -> bool:
    return {"train", "test"} <= set(data.splits)


def predict_all(specs: list[RouterSpec], data: RoutingData, bank: FeatureBank, folds: int,
                latency_requests: int) -> tuple[list[Predictions], RoutingData]:
    """Predictions on the evaluation prompts for every router, with per-request latency."""
    if _has_split(data):
        train_rows, eval_rows = np.flatnonzero(data.splits == "train"), np.flatnonzero(data.splits == "test")
    else:
        train_rows, eval_rows = np.arange(len(data)), np.arange(len(data))
    eval_data = data.subset(eval_rows)
    prices = fit_prices(data.subset(train_rows))[0]
    candidates = candidates_for(data.models, prices)
    preds = []
    for spec in tqdm(specs, desc=f"{data.name}: train and predict", unit="router"):
        if _has_split(data):
            pred, router = split_predictions(spec, bank, train_rows, eval_rows)
        else:
            pred, router = cross_fit_predictions(spec, bank, folds)
        n = min(latency_requests, MINILM_LATENCY_REQUESTS if spec.features.encoder == "minilm" else latency_requests)
        pred.latency = measure_latency(router, eval_data.prompts[:n], eval_data.prompt_tokens[:n].tolist(), candidates)
        preds.append(pred)
    return preds, eval_data


def verify_setting(data: RoutingData, bank: FeatureBank, prices: Prices, folds: int = 3) -> VerifySetting | None:
    """The verify policy for `pitstop + verify`, chosen on the training split alone: the default router
    cross-fitted there, every ordered pair of verifiers replayed on the training replies (routers/verify_eval.py)."""
    if not _has_split(data) or all(a is None for a in data.answers.ravel()):
        return None
    rows = np.flatnonzero(data.splits == "train")
    train = data.subset(rows)
    pred, _ = cross_fit_predictions(RouterSpec("pitstop", "pitstop", PITSTOP_FEATURES), bank, folds, rows=rows)
    candidates = candidates_for(data.models, prices)
    picked = choice_matrix(pred, train, candidates, LAMBDAS, reference_cost(train, candidates))
    policy, by_pair = choose_verifiers(picked, pred.quality, train, realised(train, "zero"), LAMBDAS)
    return VerifySetting("pitstop", policy, {"split": "train", "folds": folds, "missing": "zero",
                                             "training_aiq_by_verifiers": by_pair})


def calibration_check(pred: Predictions, data: RoutingData, prices: Any, kind: str, target: float,
                      model: str | None) -> dict[str, Any]:
    """Calibrate on the even-indexed evaluation prompts, report what the odd-indexed ones get."""
    candidates = candidates_for(data.models, prices)
    halves = [np.arange(0, len(data), 2), np.arange(1, len(data), 2)]
    fit_rows, check_rows = halves
    reference = reference_cost(data, candidates) if kind == "avg_cost" else None
    estimates = [estimate_for(data.models, pred.quality[i], pred.output_tokens[i], candidates, reference)
                 for i in fit_rows]
    tokens = [max(int(data.prompt_tokens[i]), 1) for i in fit_rows]
    result = calibrate_estimates(estimates, tokens, candidates, kind, target, model)  # type: ignore[arg-type]
    held = data.subset(check_rows)
    held_pred = Predictions(pred.name, pred.quality[check_rows], pred.output_tokens[check_rows])
    picked = choices(held_pred, held, candidates, result.cost_preference, reference)
    rows = np.arange(len(held))
    if kind == "avg_cost":
        achieved = float(held.cost[rows, picked].mean())
    else:
        achieved = float(np.mean(np.array(held.models)[picked] == model))
    return {"kind": kind, "model": model, "target": target, "cost_preference": result.cost_preference,
            "achieved_on_calibration_half": result.achieved, "achieved_on_held_out_half": achieved,
            "held_out_quality": float(np.nan_to_num(held.quality)[rows, picked].mean()),
            "calibration_requests": len(fit_rows), "held_out_requests": len(check_rows)}


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, r in result["routers"].items():
        latency = r.get("latency") or {}
        rows.append({"router": name, **{k: r[k] for k in ("aiq", "cost_share_to_match_strongest",
                                                          "quality_at_strongest_cost", "apgr", "cpt50", "cpt80")
                                        if k in r},
                     "p50_ms": latency.get("p50_ms"), "p99_ms": latency.get("p99_ms")})
    return rows


def run_eval(data_name: str, out_dir: Path, families: list[str], peer_features: list[str], folds: int = 5,
             latency_requests: int = 300, bootstrap: int = 200, encoder_path: str | None = None,
             data_root: Path | None = None) -> dict[str, Any]:
    data = load_dataset(data_name, data_root)
    encoder = load_or_distil(encoder_path)
    bank = FeatureBank(data, encoder)
    specs = router_specs(families, peer_features)
    preds, eval_data = predict_all(specs, data, bank, folds, latency_requests)
    protocol = "published train/test split" if _has_split(data) else f"{folds}-fold cross-fitting"
    report: dict[str, Any] = {
        "dataset": data_name, "files": data.source, "protocol": protocol,
        "train_prompts": int((data.splits == "train").sum()) if _has_split(data) else len(data),
        "eval_prompts": len(eval_data), "models": data.models,
        "routers": {s.label: {"family": s.family, "features": s.features.to_dict()} for s in specs},
        "encoder": encoder.meta, "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "latency_protocol": "router.estimate per request (features + inference), 1 torch/BLAS thread",
    }
    pitstop = next((p for p in preds if p.name == "pitstop"), None)
    title = f"{data_name} ({protocol}, {len(eval_data)} prompts)"
    if len(data.models) == 2:
        q = np.nanmean(eval_data.quality, axis=0)
        strong, weak = (data.models[0], data.models[1]) if q[0] >= q[1] else (data.models[1], data.models[0])
        result = evaluate_two(preds, eval_data, strong, weak)
        if pitstop is not None:
            two = eval_data.with_models([strong, weak])
            two_pred = Predictions("pitstop", pitstop.quality[:, [data.model_index(strong), data.model_index(weak)]],
                                   np.zeros((len(eval_data), 2)))
            two_prices = Prices({strong: 1.0}, {})  # strong costs 1 a token, weak 0: a pure threshold
            result["calibration"] = [calibration_check(two_pred, two, two_prices, "model_share", 0.5, strong)]
        report["result"] = result
        plot_strong_share(result, title, out_dir / f"{data_name}.png")
    else:
        prices = fit_prices(data.subset(np.flatnonzero(data.splits == "train")) if _has_split(data) else data)[0]
        report["prices_usd_per_token"] = {"input": prices.input, "output": prices.output}
        variants = ["drop", "zero"] if np.isnan(eval_data.quality).any() else ["zero"]
        verify = verify_setting(data, bank, prices) if pitstop is not None else None
        for missing in variants:
            result = evaluate_multi(preds, eval_data, prices, missing, bootstrap=bootstrap,  # type: ignore[arg-type]
                                    verify=verify)
            if pitstop is not None:
                subset = eval_data.complete() if missing == "drop" else eval_data
                keep = ~np.isnan(eval_data.quality).any(axis=1) if missing == "drop" else np.ones(len(eval_data), bool)
                pred = Predictions("pitstop", pitstop.quality[keep], pitstop.output_tokens[keep])
                strongest = result["strongest_model"]
                target_cost = 0.5 * result["single_models"][strongest]["cost"]
                result["calibration"] = [calibration_check(pred, subset, prices, "avg_cost", target_cost, None),
                                         calibration_check(pred, subset, prices, "model_share", 0.5, strongest)]
                if verify is not None:  # does a group that verifies its picks land on its budget?
                    strongest_cost = result["single_models"][strongest]["cost"]
                    result["calibration_with_verify"] = calibration_with_verify(
                        pred, subset, prices, verify.policy,
                        {f"{share:.0%} of {strongest}'s cost": share * strongest_cost for share in (0.35, 0.5, 0.7)})
            result["summary"] = summary_rows(result)
            report[f"result_missing_{missing}"] = result
            suffix = "" if missing == variants[0] else f"-missing-{missing}"
            plot_cost_quality(result, f"{title}, missing scores: {missing}", out_dir / f"{data_name}{suffix}.png")
    if len(data.models) == 2:
        report["result"]["summary"] = summary_rows(report["result"])
    write_json(out_dir / f"{data_name}.json", report)
    return report
