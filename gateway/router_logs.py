"""`pitstop eval router-logs`: how a route group's router, and candidates for its place, would have
done on the group's own logged traffic, before one is swapped in.

The log (the outcome database, or a `pitstop export outcomes` file) holds, for each request the
group's router decided, the prompt, the model served, its propensity, its real cost and the feedback
it got. Each router estimates every logged prompt with the group's candidates and picks at the cost
preference the request was routed at (or one given); routers/off_policy.py turns the picks into
estimates of average feedback and real cost a request, and of each candidate's difference from the
router in place, with 95% intervals. A router's predicted costs (price x predicted answer length) are
put in real dollars as calibration does: scaled by what the logged requests really cost over what the
router predicts for the models that served them. Routers that spend differently are also compared at
one spend: each at the preference that spends what the router in place spends on this traffic
(routers/calibration.py, the search `calibrate:` runs), so a difference in quality is not bought.

Rows count only if the group's router chose their model (a session's sticky turns name no router),
they succeeded, and they have a prompt (`storage.store_text`) and feedback."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from gateway.routing import GroupRouter, estimate_tokens
from routers.artifact import read_manifest
from routers.base import Router, RoutingRequest
from routers.calibration import ChoiceTable, calibrate_table, traffic_table
from routers.off_policy import (
    LoggedBandit,
    epsilon_from_propensity,
    estimate_value,
    paired_difference,
    paired_support,
    support,
)

ESTIMATE_CHUNK = 4096  # prompts featurised at once: bounds the memory a long log takes


@dataclass(frozen=True)
class GroupLog:
    requests: list[RoutingRequest]
    preferences: np.ndarray  # the cost preference each request was routed at
    bandit: LoggedBandit
    router_versions: dict[str, int]
    skipped: dict[str, int]


def logged_since(rows: Iterable[dict[str, Any]], since: datetime | None) -> Iterator[dict[str, Any]]:
    """The rows of an export file logged at or after `since` (tz-aware); all rows when it is None."""
    for row in rows:
        created = row.get("created_at")
        if isinstance(created, str):
            created = datetime.fromisoformat(created)
        if isinstance(created, datetime) and created.tzinfo is None:  # stored as UTC
            created = created.replace(tzinfo=UTC)
        if since is None or (isinstance(created, datetime) and created >= since):
            yield row


def group_log(rows: Iterable[dict[str, Any]], group: GroupRouter) -> GroupLog:
    """The group's evaluable rows of an export (storage/export.py's rows) as a bandit log over the
    group's candidates, in the router's names."""
    name = group.group.name
    router_name = {model: alias for alias, model in group.model_for.items()}
    columns = {c.model: j for j, c in enumerate(group.candidates)}
    kept: list[tuple[RoutingRequest, float, int, float, float, float, int, float, np.ndarray]] = []
    versions: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for row in rows:
        if row.get("route_group") != name:
            continue
        text = row.get("prompt")  # the text routers read (storage/export.py's `prompt_text`)
        model = router_name.get(row.get("model") or "")
        reason = ("not_routed" if row.get("router_name") is None else "failed" if row.get("status") not in (None, "ok")
                  else "no_prompt" if not text else "no_feedback" if row.get("quality") is None
                  else "escalated" if row.get("verify_outcome") == "escalated"  # its pick did not serve it
                  else "unknown_model" if model is None else None)
        if reason is not None:
            skipped[reason] += 1
            continue
        preference = row.get("cost_preference")
        cost = row.get("cost_usd")
        kept.append((RoutingRequest(text, estimate_tokens(text)),
                     group.cost_preference if preference is None else float(preference), columns[model],
                     float(row.get("propensity") or 1.0), float(row["quality"]),
                     float("nan") if cost is None else float(cost), *_logging_policy(row, router_name, columns)))
        versions[str(row.get("router_version"))] += 1
    fields = list(zip(*kept, strict=True)) if kept else [[]] * 9
    requests, preferences, served, propensity, quality, cost, greedy, epsilon, pool = fields
    bandit = LoggedBandit([c.model for c in group.candidates], np.array(served, dtype=int), np.array(propensity),
                          np.array(quality), np.array(cost), np.array(greedy, dtype=int),
                          np.array(pool, dtype=bool).reshape(len(kept), len(columns)), np.array(epsilon))
    return GroupLog(list(requests), np.array(preferences), bandit, dict(versions), dict(skipped))


def _logging_policy(row: dict[str, Any], router_name: dict[str, str], columns: dict[str, int]
                    ) -> tuple[int, float, np.ndarray]:
    """The row's logging router's own choice (column), exploration epsilon and pool (columns). Rows
    logged before the pool was recorded explored uniformly over the group's models: their epsilon is
    recovered from the propensity."""
    pool = np.zeros(len(columns), dtype=bool)
    logged = row.get("explore_pool")
    propensity = row.get("propensity") or 1.0
    if row.get("explore_epsilon") is not None and logged:
        pool[[columns[router_name[m]] for m in [row["model"], *logged] if m in router_name]] = True
        epsilon = float(row["explore_epsilon"])
    else:
        pool[:] = True
        epsilon = float(epsilon_from_propensity(np.array([propensity]), len(columns))[0])
    chosen = propensity >= 1.0 or propensity > 1.0 / max(1, int(pool.sum()))
    return _logging_choice(row, router_name, columns, chosen), epsilon, pool


def _logging_choice(row: dict[str, Any], router_name: dict[str, str], columns: dict[str, int], chosen: bool) -> int:
    """The column the logging router chose before exploring: the best of its logged scores (the
    utilities `choose` maximised); where there are none, the served model if its propensity says it
    was the choice (`chosen`), else -1."""
    scores = row.get("router_scores")
    if isinstance(scores, list):  # a Parquet map reads back as (key, value) pairs
        scores = dict(scores)
    served = columns[router_name[row["model"]]]
    if isinstance(scores, dict) and scores:
        known = {columns[router_name[m]]: float(v) for m, v in scores.items() if m in router_name and v is not None}
        if known:
            best = max(known.values())
            return served if known.get(served) == best else min(j for j, v in known.items() if v == best)
    return served if chosen else -1


@dataclass(frozen=True)
class Policy:
    label: str
    router: Router
    artifact: str | None = None


@dataclass
class _Scored:
    policy: Policy
    table: ChoiceTable
    real_over_predicted: float | None  # real over predicted cost of the logged requests' served models

    def predicted(self) -> tuple[np.ndarray, np.ndarray]:
        return self.table.quality, self.table.cost * self.table.cost_scale


def _score(policy: Policy, log: GroupLog, group: GroupRouter) -> _Scored:
    table = traffic_table(policy.router, log.requests, group.candidates, chunk=ESTIMATE_CHUNK)
    served = [log.bandit.models[j] for j in log.bandit.served]
    ratio = table.real_cost_ratio(served, [None if np.isnan(c) else c for c in log.bandit.cost_usd])
    table.cost_scale = ratio or 1.0  # real dollars, as `calibrate:` scales them (routers/calibration.py)
    return _Scored(policy, table, ratio)


def _judge(scored: _Scored, picks: np.ndarray, log: GroupLog, group: GroupRouter,
           baseline: tuple[np.ndarray, _Scored] | None) -> dict[str, Any]:
    bandit = log.bandit
    quality, cost = scored.predicted()
    names = [group.model_for[m] for m in bandit.models]
    result: dict[str, Any] = {
        "quality": estimate_value(bandit, picks, bandit.quality, quality).to_dict(),
        "cost_usd": estimate_value(bandit, picks, bandit.cost_usd, cost).to_dict(),
        "share": {name: float(np.mean(picks == j)) for j, name in enumerate(names)},
    }
    backing = support(bandit, picks)
    result.update(backing.to_dict(), thin=backing.thin())
    if baseline is not None:
        base_picks, base = baseline
        base_quality, base_cost = base.predicted()
        paired = paired_support(bandit, picks, base_picks)
        result["vs_current"] = {
            "quality": asdict(paired_difference(bandit, picks, base_picks, bandit.quality, quality, base_quality)),
            "cost_usd": asdict(paired_difference(bandit, picks, base_picks, bandit.cost_usd, cost, base_cost)),
            **paired.to_dict(), "thin": paired.thin()}
    return result


def _trained_on(artifact: str | None, logs_digest: str | None) -> bool:
    """Whether the artifact's manifest names the log file (by sha256) among its training data."""
    if artifact is None or logs_digest is None:
        return False
    try:
        manifest = read_manifest(artifact)
    except (OSError, ValueError):
        return False
    return logs_digest in ((manifest.get("training_data") or {}).get("files") or {}).values()


def evaluate_on_logs(group: GroupRouter, log: GroupLog, policies: Sequence[Policy],
                     cost_preference: float | None = None, logs_digest: str | None = None) -> dict[str, Any]:
    """The report: the log, then each policy at the logged (or the given) preferences and at the
    current policy's spend. `policies[0]` is the router in place, the baseline of every difference."""
    bandit = log.bandit
    rates = bandit.exploration_rates()
    report: dict[str, Any] = {
        "route_group": group.group.name, "requests": len(bandit), "skipped": log.skipped,
        "models": [group.model_for[m] for m in bandit.models], "router_versions": log.router_versions,
        "exploration_rate": float(rates.mean()) if len(bandit) else None,
        # models an explored request could be served by, on average (explore_among; all where unset)
        "exploration_pool": float(bandit.pool_sizes()[rates > 0].mean()) if np.any(rates > 0) else None,
        "logged": {"quality": float(bandit.quality.mean()) if len(bandit) else None,
                   "cost_usd": float(np.nanmean(bandit.cost_usd)) if np.isfinite(bandit.cost_usd).any() else None},
        "cost_preference": "as logged" if cost_preference is None else cost_preference,
        "policies": [], "same_spend": None, "warnings": [],
    }
    if not len(bandit):
        report["warnings"].append("no logged request of this group has feedback, a prompt and a model chosen by its "
                                  "router: nothing to evaluate")
        return report
    if not np.any(rates > 0):
        report["warnings"].append(
            "no request was explored (every propensity is 1): a router is judged only on the requests where it "
            "picks the model that was served, and by its own predictions elsewhere; set the group's "
            "explore_epsilon (e.g. 0.05) to log traffic that can compare routers")
    if log.skipped.get("escalated"):
        report["warnings"].append(
            f"{log.skipped['escalated']} requests that the group's verify escalated are left out: its pick did not "
            "serve them, and they are the ones whose cheap answer was in doubt, so every estimate leans optimistic "
            "for routers that pick cheap models there; logged costs include the verifier calls")
    preferences = log.preferences if cost_preference is None else np.full(len(bandit), cost_preference)
    scored = [_score(p, log, group) for p in policies]
    picks = [s.table.chosen(preferences) for s in scored]
    for i, (s, chosen) in enumerate(zip(scored, picks, strict=True)):
        entry = {"label": s.policy.label, "router": s.policy.router.name, "version": s.policy.router.version,
                 "artifact": s.policy.artifact, "real_over_predicted": s.real_over_predicted,
                 **_judge(s, chosen, log, group, None if i == 0 else (picks[0], scored[0]))}
        report["policies"].append(entry)
        if entry["thin"] and entry["unsupported"] >= 0.05:
            report["warnings"].append(
                f"{s.policy.label} routes {entry['unsupported']:.0%} of the requests to a model the logging policy "
                "could not have served there (outside the exploration's pool, or not explored at all): its estimate "
                "there is its own prediction, biased where the logging router chose otherwise; "
                + ("widen explore_among" if np.any(rates > 0) else "set explore_epsilon"))
        elif entry["thin"]:
            report["warnings"].append(
                f"{s.policy.label} routes {entry['differs_from_logging']:.0%} of the requests to another model than "
                f"the logging router chose, and the log holds the outcome of its choice for only "
                f"{entry['outcomes_where_it_differs']} of them: its estimate there is mostly its own prediction, "
                "biased where the logging router chose otherwise; log more traffic or raise explore_epsilon")
        elif i and entry["vs_current"]["thin"]:
            paired = entry["vs_current"]
            report["warnings"].append(
                f"{s.policy.label} and the router in place pick differently on {paired['differ']:.1%} of the requests, "
                f"and the log holds only {paired['outcomes']} / {paired['baseline_outcomes']} outcomes of their "
                f"choices there ({paired['unsupported']:.1%} of requests where one of them could not have been "
                "served): their difference rests mostly on predictions; log more traffic, raise explore_epsilon "
                "or widen explore_among")
        if _trained_on(s.policy.artifact, logs_digest):
            report["warnings"].append(f"{s.policy.label} was trained on this very log: its estimates are optimistic; "
                                      "judge it on requests logged after its training export (--since)")
    target = report["policies"][0]["cost_usd"]["dr"]["mean"]
    if np.isfinite(target):
        same: list[dict[str, Any]] = []
        at_spend = []
        for s in scored:
            preference = calibrate_table(s.table, "avg_cost", target).cost_preference
            at_spend.append(s.table.chosen(preference))
            same.append({"label": s.policy.label, "cost_preference": preference})
        for i, (s, chosen, entry) in enumerate(zip(scored, at_spend, same, strict=True)):
            entry.update(_judge(s, chosen, log, group, None if i == 0 else (at_spend[0], scored[0])))
        report["same_spend"] = {"target_cost_usd": target, "policies": same}
    return report
