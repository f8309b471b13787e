"""Router metrics on (average cost, average quality) operating points.

AIQ (RouterBench, Hu et al. 2024): the area under the non-decreasing convex hull of a router's
operating points, cost normalised by a reference cost (the costliest single model), from the router's
cheapest point to 1, the hull held flat past its last point. The hull is what a router can reach by
mixing two of its operating points at random, so any point under it is achievable.

APGR and CPT (RouteLLM, Ong et al. 2024), two-model data: x = share of calls to the strong model,
PGR = (quality - weak) / (strong - weak); APGR is the area under PGR over the x range swept
(trapezoids, as RouteLLM's evaluate.py); CPT(p) is the smallest share of strong calls with PGR >= p."""

from __future__ import annotations

import numpy as np


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def non_decreasing_hull(points: np.ndarray) -> np.ndarray:
    """Upper convex hull of (x, y) points from the cheapest point up to the best one, sorted by x.

    Among points with the same x only the best matters; past the highest y the hull would go down,
    and a router can always do at least as well by staying at its best point, so it stops there."""
    pts = np.asarray(points, dtype=float)
    assert pts.ndim == 2 and pts.shape[1] == 2 and len(pts) > 0
    order = np.lexsort((-pts[:, 1], pts[:, 0]))
    pts = pts[order]
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = pts[1:, 0] != pts[:-1, 0]  # first of each x is the best y
    pts = pts[keep]
    hull: list[np.ndarray] = []
    for p in pts:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    hull_arr = np.array(hull)
    top = int(np.argmax(hull_arr[:, 1]))
    return hull_arr[: top + 1]


def aiq(points: np.ndarray, reference_cost: float) -> float:
    """Area under the non-decreasing hull on [cheapest point, 1], cost / reference_cost."""
    assert reference_cost > 0
    pts = np.asarray(points, dtype=float) / np.array([reference_cost, 1.0])
    hull = non_decreasing_hull(pts)
    if hull[0, 0] >= 1.0:
        return 0.0
    xs = np.append(hull[:, 0], 1.0)
    ys = np.append(hull[:, 1], hull[-1, 1])
    inside = xs < 1.0
    grid_x = np.append(xs[inside], 1.0)
    grid_y = np.append(ys[inside], np.interp(1.0, xs, ys))
    return float(np.trapezoid(grid_y, grid_x))


def hull_quality_at(points: np.ndarray, cost: float) -> float:
    """Best quality reachable at average cost `cost` (NaN below the router's cheapest point)."""
    hull = non_decreasing_hull(points)
    if cost < hull[0, 0]:
        return float("nan")
    return float(np.interp(cost, hull[:, 0], hull[:, 1]))


def hull_cost_for(points: np.ndarray, quality: float) -> float:
    """Smallest average cost at which the hull reaches `quality` (NaN if it never does)."""
    hull = non_decreasing_hull(points)
    if quality > hull[-1, 1]:
        return float("nan")
    if quality <= hull[0, 1]:
        return float(hull[0, 0])
    i = int(np.searchsorted(hull[:, 1], quality))  # hull y is non-decreasing
    (x0, y0), (x1, y1) = hull[i - 1], hull[i]
    return float(x0 + (quality - y0) * (x1 - x0) / (y1 - y0))


def pgr(quality: np.ndarray, weak: float, strong: float) -> np.ndarray:
    assert strong != weak, "PGR needs the strong model to differ from the weak one"
    return (np.asarray(quality, dtype=float) - weak) / (strong - weak)


def apgr(strong_share: np.ndarray, quality: np.ndarray, weak: float, strong: float) -> float:
    x = np.asarray(strong_share, dtype=float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], pgr(np.asarray(quality)[order], weak, strong)
    span = x[-1] - x[0]
    assert span > 0, "APGR needs operating points at more than one share of strong calls"
    return float(np.trapezoid(y, x) / span)


def cpt(strong_share: np.ndarray, quality: np.ndarray, weak: float, strong: float, target: float) -> float:
    """Smallest share of strong calls at which PGR reaches `target`, linear between points; NaN if never."""
    x = np.asarray(strong_share, dtype=float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], pgr(np.asarray(quality)[order], weak, strong)
    hits = np.flatnonzero(y >= target)
    if len(hits) == 0:
        return float("nan")
    i = int(hits[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))


def percentiles_ms(seconds: list[float] | np.ndarray) -> dict[str, float]:
    values = np.asarray(seconds, dtype=float) * 1e3
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99)),
            "mean_ms": float(values.mean()), "n": int(len(values))}
