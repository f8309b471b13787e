"""One evaluation harness for every router: the same prompts, candidates, choice rule and metrics.

Each router predicts quality and answer length for the evaluation prompts once; then, for every cost
preference on a grid, the shared `choose` (routers/choice.py) picks a model per prompt and the real
outcome of that model on that prompt (quality, cost in USD) is averaged. Those (cost, quality) points
give AIQ and the cost/quality read-outs (routers/metrics.py). Two-model data are swept by the share
of strong calls instead (RouteLLM's protocol): there the candidates cost 1 (strong) and 0 (weak), so
the cost preference is exactly a threshold on the predicted quality gap.

Missing scores: `missing="drop"` evaluates only prompts every model has a score for; `"zero"` keeps
all prompts and counts a missing score as a failure (RouterBench's published convention)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from routers.base import Candidate
from routers.choice import choose, typical_cost
from routers.data.table import Prices, RoutingData
from routers.learned import estimate_for
from routers.metrics import aiq, apgr, cpt, hull_cost_for, hull_quality_at
from routers.verify_eval import VerifySetting, replay, verify_summary

Missing = Literal["drop", "zero"]
LAMBDAS = np.concatenate([[0.0], np.logspace(-4, 2, 61)])


@dataclass
class Predictions:
    """A router's output on the evaluation prompts."""

    name: str
    quality: np.ndarray  # (n, m) over data.models
    output_tokens: np.ndarray  # (n, m)
    latency: dict[str, float] | None = None


def candidates_for(models: list[str], prices: Prices) -> list[Candidate]:
    return [Candidate(m, prices.input.get(m, 0.0), prices.output.get(m, 0.0)) for m in models]


def realised(data: RoutingData, missing: Missing) -> np.ndarray:
    return np.nan_to_num(data.quality, nan=0.0) if missing == "zero" else data.quality


def reference_cost(data: RoutingData, candidates: list[Candidate]) -> float:
    """The fixed reference of the choice rule (routers/choice.py) for this traffic: the costliest
    candidate's cost at the mean prompt and answer lengths. One constant for every router evaluated, so
    it only rescales the swept cost preference."""
    with np.errstate(all="ignore"):
        means = np.nanmean(data.output_tokens, axis=0)
    tokens = {m: float(v) for m, v in zip(data.models, means, strict=True) if np.isfinite(v)}
    return typical_cost(candidates, float(np.mean(data.prompt_tokens)), tokens)


def choices(pred: Predictions, data: RoutingData, candidates: list[Candidate], preference: float,
            reference: float | None = None) -> np.ndarray:
    """Column index of the chosen model per prompt, by the shared choice rule."""
    column = {m: j for j, m in enumerate(data.models)}
    picked = np.empty(len(data), dtype=np.int64)
    for i in range(len(data)):
        estimate = estimate_for(data.models, pred.quality[i], pred.output_tokens[i], candidates, reference)
        tokens = max(int(data.prompt_tokens[i]), 1)
        picked[i] = column[choose(estimate, candidates, tokens, preference, pred.name, "eval").model]
    return picked


def choice_matrix(pred: Predictions, data: RoutingData, candidates: list[Candidate],
                  lambdas: np.ndarray = LAMBDAS, reference: float | None = None) -> np.ndarray:
    """(len(lambdas), n): the chosen model's column per cost preference and prompt."""
    return np.stack([choices(pred, data, candidates, float(lam), reference) for lam in lambdas])


def points_from_choices(picked: np.ndarray, data: RoutingData, missing: Missing,
                        rows: np.ndarray | None = None) -> np.ndarray:
    """(len(lambdas), 2) average real cost and quality; `rows` resamples prompts (bootstrap)."""
    quality = realised(data, missing)
    rows = np.arange(len(data)) if rows is None else rows
    cols = picked[:, rows]
    return np.stack([data.cost[rows, cols].mean(axis=1), quality[rows, cols].mean(axis=1)], axis=1)


def cost_quality_points(pred: Predictions, data: RoutingData, candidates: list[Candidate], missing: Missing,
                        lambdas: np.ndarray = LAMBDAS) -> np.ndarray:
    """(len(lambdas), 3): cost preference, average real cost, average real quality."""
    picked = choice_matrix(pred, data, candidates, lambdas, reference_cost(data, candidates))
    return np.column_stack([lambdas, points_from_choices(picked, data, missing)])


def oracle_predictions(data: RoutingData, missing: Missing) -> Predictions:
    """Knows every outcome: true quality, true answer lengths (so price x tokens ~ real cost)."""
    tokens = np.where(np.isnan(data.output_tokens), 0.0, data.output_tokens)
    return Predictions("oracle", realised(data, "zero") if missing == "zero" else data.quality.copy(), tokens)


def single_models(data: RoutingData, missing: Missing) -> dict[str, dict[str, float]]:
    quality = realised(data, missing)
    return {m: {"cost": float(data.cost[:, j].mean()), "quality": float(quality[:, j].mean())}
            for j, m in enumerate(data.models)}


def multi_model_metrics(points: np.ndarray, singles: dict[str, dict[str, float]]) -> dict[str, object]:
    reference = max(s["cost"] for s in singles.values())
    strongest = max(singles, key=lambda m: singles[m]["quality"])
    cost_q = points[:, 1:]
    match_cost = hull_cost_for(cost_q, singles[strongest]["quality"])
    return {
        "aiq": aiq(cost_q, reference),
        "quality_at_strongest_cost": hull_quality_at(cost_q, singles[strongest]["cost"]),
        "cost_share_to_match_strongest": match_cost / singles[strongest]["cost"],
        "max_quality": float(cost_q[:, 1].max()),
        "points": [{"cost_preference": float(lam), "cost": float(c), "quality": float(q)} for lam, c, q in points],
    }


def outcomes_of(picked: np.ndarray, data: RoutingData, missing: Missing) -> tuple[np.ndarray, np.ndarray]:
    """(cost, quality), each (len(lambdas), n): what every prompt got at every cost preference."""
    rows = np.arange(len(data))
    return data.cost[rows, picked], realised(data, missing)[rows, picked]


def paired_bootstrap_aiq(outcomes: dict[str, tuple[np.ndarray, np.ndarray]], data: RoutingData, baseline: str,
                         reps: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """AIQ(baseline) - AIQ(other) over prompts resampled with replacement, the same rows for both."""
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[float]] = {name: [] for name in outcomes if name != baseline}

    def resampled(name: str, rows: np.ndarray, reference: float) -> float:
        cost, quality = outcomes[name]
        return aiq(np.column_stack([cost[:, rows].mean(axis=1), quality[:, rows].mean(axis=1)]), reference)

    for _ in range(reps):
        rows = rng.integers(0, len(data), len(data))
        reference = float(data.cost[rows].mean(axis=0).max())
        base = resampled(baseline, rows, reference)
        for name in diffs:
            diffs[name].append(base - resampled(name, rows, reference))
    return {name: {"mean": float(np.mean(d)), "ci95_low": float(np.percentile(d, 2.5)),
                   "ci95_high": float(np.percentile(d, 97.5)), "share_positive": float(np.mean(np.array(d) > 0))}
            for name, d in diffs.items()}


def evaluate_multi(preds: list[Predictions], data: RoutingData, prices: Prices, missing: Missing,
                   bootstrap: int = 0, baseline: str = "pitstop",
                   verify: VerifySetting | None = None) -> dict[str, object]:
    """`verify`: also report `<router> + verify`, its picks' short answers checked (routers/verify.py)."""
    if missing == "drop":
        keep = ~np.isnan(data.quality).any(axis=1)
        data_eval = data.subset(keep)
        preds = [Predictions(p.name, p.quality[keep], p.output_tokens[keep], p.latency) for p in preds]
    else:
        data_eval = data
    candidates = candidates_for(data.models, prices)
    singles = single_models(data_eval, missing)
    reference = max(s["cost"] for s in singles.values())
    zero_line = np.array([[0.0, s["cost"], s["quality"]] for s in singles.values()])
    routers: dict[str, object] = {"zero-router (single-model hull)": {
        **multi_model_metrics(zero_line, singles), "latency": None}}
    outcomes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for pred in [*preds, oracle_predictions(data_eval, missing)]:
        picked = choice_matrix(pred, data_eval, candidates, reference=reference_cost(data_eval, candidates))
        points = np.column_stack([LAMBDAS, points_from_choices(picked, data_eval, missing)])
        routers[pred.name] = {**multi_model_metrics(points, singles), "latency": pred.latency}
        outcomes[pred.name] = outcomes_of(picked, data_eval, missing)
        if verify is not None and pred.name == verify.router:
            replayed = replay(picked, pred.quality, data_eval, realised(data_eval, missing), verify.policy, LAMBDAS)
            name = f"{pred.name} + verify"
            routers[name] = {**multi_model_metrics(np.column_stack([replayed.settings[:, 0], replayed.points()]),
                                                   singles),
                             **verify_summary(replayed, verify), "latency": pred.latency}
            outcomes[name] = (replayed.cost, replayed.quality)
    strongest = max(singles, key=lambda m: singles[m]["quality"])
    result: dict[str, object] = {"prompts": len(data_eval), "missing": missing, "reference_cost": reference,
                                 "strongest_model": strongest, "single_models": singles, "routers": routers}
    if bootstrap and baseline in outcomes:
        result["bootstrap_aiq_difference"] = {"baseline": baseline, "reps": bootstrap,
                                              "vs": paired_bootstrap_aiq(outcomes, data_eval, baseline, bootstrap)}
    verified = f"{baseline} + verify"
    if bootstrap and verified in outcomes:  # the verified router against every other, the same resamples
        result["bootstrap_aiq_difference_verified"] = {
            "baseline": verified, "reps": bootstrap,
            "vs": paired_bootstrap_aiq(outcomes, data_eval, verified, bootstrap)}
    return result


def share_points(pred: Predictions, data: RoutingData, strong: str, weak: str,
                 shares: np.ndarray) -> np.ndarray:
    """(len(shares), 2): realised share of strong calls, average quality. Threshold = cost preference."""
    s, w = data.model_index(strong), data.model_index(weak)
    candidates = [Candidate(strong, input_cost_per_token=1.0), Candidate(weak)]
    gap = np.sort(pred.quality[:, s] - pred.quality[:, w])[::-1]
    two = Predictions(pred.name, pred.quality[:, [s, w]], np.zeros((len(data), 2)))
    sub = data.with_models([strong, weak])
    out = []
    for share in shares:
        k = int(round(share * len(gap)))
        # Threshold between the k-th and (k+1)-th largest gap: k prompts go strong (fewer on ties).
        upper = gap[k - 1] if k > 0 else gap[0] + 1.0
        lower = gap[k] if k < len(gap) else gap[-1] - 1.0
        threshold = (upper + lower) / 2
        j = choices(two, sub, candidates, float(threshold))
        out.append(((j == 0).mean(), sub.quality[np.arange(len(sub)), j].mean()))
    return np.array(out)


def evaluate_two(preds: list[Predictions], data: RoutingData, strong: str, weak: str,
                 shares: np.ndarray | None = None) -> dict[str, object]:
    data_eval = data.complete()
    keep = ~np.isnan(data.quality).any(axis=1)
    shares = np.linspace(0, 1, 21) if shares is None else shares
    q_strong = float(np.mean(data_eval.quality[:, data_eval.model_index(strong)]))
    q_weak = float(np.mean(data_eval.quality[:, data_eval.model_index(weak)]))
    routers: dict[str, object] = {}
    oracle = Predictions("oracle", data_eval.quality.copy(), np.zeros_like(data_eval.quality))
    for pred in [*(Predictions(p.name, p.quality[keep], p.output_tokens[keep], p.latency) for p in preds), oracle]:
        pts = share_points(pred, data_eval, strong, weak, shares)
        routers[pred.name] = {
            "apgr": apgr(pts[:, 0], pts[:, 1], q_weak, q_strong),
            "cpt50": cpt(pts[:, 0], pts[:, 1], q_weak, q_strong, 0.5),
            "cpt80": cpt(pts[:, 0], pts[:, 1], q_weak, q_strong, 0.8),
            "points": [{"strong_share": float(x), "quality": float(y)} for x, y in pts],
            "latency": pred.latency,
        }
    return {"prompts": len(data_eval), "strong": strong, "weak": weak, "strong_quality": q_strong,
            "weak_quality": q_weak, "routers": routers}
