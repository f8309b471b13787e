"""The judging and reporting half of the gateway benchmark: the sustain criterion, added latency from a
paired (direct, gateway) measurement, the goal check, machine/version facts, and a text table."""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

from bench.common import cpu_generation, cpu_matmul_flags, cpu_model

MAX_ERROR_SHARE = 0.001  # at most 0.1% failed requests
MIN_ACHIEVED_SHARE = 0.95  # answers per second at least 95% of the offered rate

METHOD = {
    "added_latency": (
        "For each (system, rate, mode) point the direct-to-mock baseline is measured right before the gateway, "
        "with the same load generator, the same seeded Poisson arrival schedule and the same duration. "
        "added p50 = gateway latency p50 - direct latency p50, and likewise p99 (differences of percentiles; "
        "requests are not paired one to one). Negative values are noise. TTFT added is the same for the "
        "time to the first content token on streaming requests."),
    "latency_clock": (
        "Latency is measured from each request's scheduled send time (open loop, no coordinated omission), "
        "so queueing in the generator, the client pool or the gateway all count. schedule_lag_ms shows "
        "how late the generator itself sent."),
    "sustained": (
        f"A rate is sustained when errors <= {MAX_ERROR_SHARE:.1%} of requests, ok answers per second >= "
        f"{MIN_ACHIEVED_SHARE:.0%} of the offered rate, and p99 added latency < the budget (non-streaming). "
        "A point that fails on p99 alone is measured a second time and the second one counts (the machine "
        "is shared; the first is kept in earlier_attempts). "
        "The search climbs a ladder of rates and bisects between the last pass and the first failure."),
    "cpu_contention": (
        "Everything runs on one machine: the load generator, the mock upstream and the gateway share its "
        "cores (2 here), and other tenants' processes may run too. Per point the JSON records CPU seconds "
        "used by the gateway, the mock and the whole host, so contention is visible; gateway CPU ms per "
        "request (gateway CPU during the point / answered requests, warm-up included) is the overhead that "
        "matters most on a small machine; it is exact at sustained rates, and overstated when overloaded "
        "(work on requests the client abandoned)."),
    "load_generator": (
        "aiohttp client in its own process (uvloop). httpx was tried first and is kept as --client httpx: its "
        "connection pool collapsed at 500 req/s against the bare mock on this machine (p50 8.5 s, 54% "
        "errors, vs aiohttp p50 25 ms, 0 errors), so it would have measured itself, not the gateways."),
}



def point_verdict(point: dict[str, Any], budget_ms: float) -> tuple[bool, str]:
    """Whether one gateway measurement sustains its rate, and if not, why."""
    gw = point["gateway"]
    sent = max(gw["sent"], 1)
    if gw["errors"] / sent > MAX_ERROR_SHARE:
        return False, f"errors {gw['errors']}/{gw['sent']} {gw['error_kinds']}"
    if gw["achieved_rps"] < MIN_ACHIEVED_SHARE * gw["offered_rps"]:
        return False, f"achieved {gw['achieved_rps']} of offered {gw['offered_rps']} req/s"
    added = point["added_latency_ms"]["p99"]
    if added is None or added >= budget_ms:
        return False, f"p99 added latency {added} ms >= {budget_ms} ms"
    return True, "ok"


def harness_ok(direct: dict[str, Any]) -> bool:
    """The direct baseline itself kept up: otherwise the point measures the harness, not the gateway."""
    sent = max(direct["sent"], 1)
    return direct["errors"] / sent <= MAX_ERROR_SHARE and direct["achieved_rps"] >= MIN_ACHIEVED_SHARE * direct[
        "offered_rps"]


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def added(direct: dict[str, Any], gateway: dict[str, Any], key: str) -> dict[str, float | None]:
    d, g = direct.get(key) or {}, gateway.get(key) or {}
    return {p: _diff(g.get(p), d.get(p)) for p in ("p50", "p99")}


def goal(systems: dict[str, Any], budget_ms: float) -> dict[str, Any]:
    """Pitstop's p99 added latency <= 1/3 of LiteLLM's at every rate both sustain, and a higher sustained rate."""
    pit, lite = systems.get("pitstop"), systems.get("litellm_proxy")
    if not pit or not lite or not pit.get("points") or not lite.get("points"):
        return {"evaluated": False, "reason": "needs both pitstop and litellm_proxy results"}
    # The last measurement of each (mode, rate) counts: the search may re-measure a fixed rate.
    lite_points = {(p["mode"], p["target_rps"]): p for p in lite["points"]}
    pit_points = {(p["mode"], p["target_rps"]): p for p in pit["points"]}
    comparisons = []
    for key, p in sorted(pit_points.items()):
        q = lite_points.get(key)
        if q is None:
            continue
        a, b = p["added_latency_ms"]["p99"], q["added_latency_ms"]["p99"]
        both = p["sustained"] and q["sustained"]
        ratio = round(a / b, 3) if a is not None and b not in (None, 0) else None
        comparisons.append({
            "mode": p["mode"], "target_rps": p["target_rps"], "both_sustain": both,
            "pitstop_p99_added_ms": a, "litellm_p99_added_ms": b, "ratio": ratio,
            "meets_third": None if not both else (a is not None and b is not None and a <= b / 3)})
    common = [c for c in comparisons if c["both_sustain"]]
    pit_search, lite_search = pit.get("sustained_search"), lite.get("sustained_search")
    # A search that found no sustained rate counts as 0 req/s; no search at all leaves it unknown.
    pit_rate = (pit_search.get("sustained_rps") or 0) if pit_search else None
    lite_rate = (lite_search.get("sustained_rps") or 0) if lite_search else None
    third_ok = all(c["meets_third"] for c in common) if common else None
    higher = None if pit_rate is None or lite_rate is None else pit_rate > lite_rate
    return {
        "evaluated": True,
        "p99_budget_ms": budget_ms,
        "rates_both_sustain": [(c["mode"], c["target_rps"]) for c in common],
        "p99_added_at_most_a_third": third_ok,
        "p99_note": None if common else "no measured rate is sustained by both systems, so the 1/3 condition is vacuous",
        "pitstop_sustained_rps": pit_rate,
        "litellm_sustained_rps": lite_rate,
        "higher_sustained_rate": higher,
        "met": bool(higher) and third_ok is not False,
        # The literal goal is vacuous when no rate is sustained by both; this stricter reading also asks
        # for the 1/3 ratio at every measured rate Pitstop sustains.
        "p99_third_where_pitstop_sustains": _third_where(comparisons, list(pit_points.values())),
        "comparisons": comparisons,
    }


def _third_where(comparisons: list[dict[str, Any]], pit_points: list[dict[str, Any]]) -> bool | None:
    sustained = {(p["mode"], p["target_rps"]) for p in pit_points if p["sustained"]}
    checks = [c["pitstop_p99_added_ms"] is not None and c["litellm_p99_added_ms"] is not None
              and c["pitstop_p99_added_ms"] <= c["litellm_p99_added_ms"] / 3
              for c in comparisons if (c["mode"], c["target_rps"]) in sustained]
    return all(checks) if checks else None


def machine() -> dict[str, Any]:
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "platform": platform.platform(), "machine": platform.machine(), "cpu_model": cpu_model(),
        "cpu_family_model": cpu_generation(), "cpu_flags": cpu_matmul_flags(),
        "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)), "mem_total_gib": mem,
        "loadavg_at_start": list(os.getloadavg()), "python": sys.version.split()[0],
    }


def versions(extra: dict[str, str | None]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("litellm", "httpx", "aiohttp", "uvicorn", "uvloop", "starlette", "fastapi", "sqlalchemy",
                 "psycopg", "pydantic", "orjson", "httptools"):
        try:
            out[dist] = dist_version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return {**out, **extra}


def _fmt(v: Any, width: int) -> str:
    if v is None:
        s = "-"
    elif isinstance(v, float):
        s = f"{v:.1f}"
    else:
        s = str(v)
    return s.rjust(width)


def table_rows(systems: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, result in systems.items():
        for p in result.get("points", []):
            gw = p["gateway"]
            rows.append({
                "system": name, "mode": p["mode"], "target_rps": p["target_rps"],
                "achieved_rps": gw["achieved_rps"], "p50_ms": gw["latency_ms"]["p50"],
                "p99_ms": gw["latency_ms"]["p99"], "added_p50_ms": p["added_latency_ms"]["p50"],
                "added_p99_ms": p["added_latency_ms"]["p99"],
                "ttft_added_p50_ms": (p.get("ttft_added_ms") or {}).get("p50"),
                "ttft_added_p99_ms": (p.get("ttft_added_ms") or {}).get("p99"),
                "errors": gw["errors"], "gateway_cpu_ms_per_req": p["cpu"]["gateway_ms_per_request"],
                "sustained": p["sustained"], "source": p.get("source", "fixed"),
            })
    return rows


def routing_overhead(systems: dict[str, Any]) -> dict[str, Any]:
    """What routing costs on top of proxying: pitstop-routed (route group `auto`, trained router) minus
    pitstop (the model named directly), point by point at the same rate and mode, in one run."""
    plain, routed = systems.get("pitstop"), systems.get("pitstop-routed")
    if not plain or not routed:
        return {"evaluated": False, "reason": "needs both pitstop and pitstop-routed results"}
    by_key = {(p["mode"], p["target_rps"]): p for p in plain.get("points", []) if p.get("source", "fixed") == "fixed"}
    points = []
    for p in routed.get("points", []):
        base = by_key.get((p["mode"], p["target_rps"]))
        if base is None or p.get("source", "fixed") != "fixed":
            continue
        points.append({
            "mode": p["mode"], "target_rps": p["target_rps"],
            "routed_added_ms": p["added_latency_ms"], "plain_added_ms": base["added_latency_ms"],
            "routing_p50_ms": _diff(p["added_latency_ms"]["p50"], base["added_latency_ms"]["p50"]),
            "routing_p99_ms": _diff(p["added_latency_ms"]["p99"], base["added_latency_ms"]["p99"]),
            "routing_cpu_ms_per_req": _diff(p["cpu"]["gateway_ms_per_request"], base["cpu"]["gateway_ms_per_request"]),
        })
    return {"evaluated": True, "router": routed.get("router"), "points": points}


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = [("system", 14), ("mode", 10), ("target_rps", 6), ("achieved_rps", 8), ("p50_ms", 8), ("p99_ms", 8),
            ("added_p50_ms", 8), ("added_p99_ms", 8), ("ttft_added_p50_ms", 8), ("ttft_added_p99_ms", 8),
            ("errors", 6), ("gateway_cpu_ms_per_req", 7), ("sustained", 5)]
    heads = ["system", "mode", "rate", "achvd", "p50", "p99", "+p50", "+p99", "+ttft50", "+ttft99", "errs",
             "cpu/req", "ok"]
    out = ["  ".join(h.rjust(w) for h, (_, w) in zip(heads, cols, strict=True))]
    for row in rows:
        out.append("  ".join(_fmt(row[k], w) if k not in ("system", "mode") else str(row[k]).ljust(w)
                             for k, w in cols))
    return "\n".join(out)
