"""Evaluation report files: the metrics as JSON and the cost-quality curves as PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from routers.metrics import non_decreasing_hull  # noqa: E402

HIGHLIGHT = {"pitstop": ("black", 2.4), "pitstop + verify": ("tab:red", 2.0), "oracle": ("tab:green", 1.2), "zero-router (single-model hull)": ("grey", 1.2)}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")


def plot_cost_quality(result: dict[str, Any], title: str, path: Path) -> None:
    """Non-decreasing hull per router, cost normalised by the costliest single model."""
    reference = result["reference_cost"]
    fig, ax = plt.subplots(figsize=(9, 6))
    for name, router in result["routers"].items():
        pts = np.array([[p["cost"] / reference, p["quality"]] for p in router["points"]])
        hull = non_decreasing_hull(pts)
        hull = np.vstack([hull, [max(1.0, hull[-1, 0]), hull[-1, 1]]])
        color, width = HIGHLIGHT.get(name.split(" [")[0], (None, 1.0))
        style = "--" if name.startswith(("zero", "oracle", "random")) else "-"
        ax.plot(hull[:, 0], hull[:, 1], style, color=color, linewidth=width, label=f"{name}  AIQ {router['aiq']:.3f}")
    for model, single in result["single_models"].items():
        ax.scatter(single["cost"] / reference, single["quality"], s=14, color="grey")
        ax.annotate(model.split("/")[-1], (single["cost"] / reference, single["quality"]), fontsize=6, color="grey")
    ax.set_xlabel("average cost per request / costliest single model's")
    ax.set_ylabel("average quality")
    ax.set_xlim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_strong_share(result: dict[str, Any], title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, router in result["routers"].items():
        pts = np.array([[p["strong_share"], p["quality"]] for p in router["points"]])
        color, width = HIGHLIGHT.get(name.split(" [")[0], (None, 1.0))
        style = "--" if name.startswith(("oracle", "random", "zero")) else "-"
        ax.plot(pts[:, 0] * 100, pts[:, 1], style, color=color, linewidth=width,
                label=f"{name}  APGR {router['apgr']:.3f}")
    ax.axhline(result["strong_quality"], color="red", linestyle=":", label=f"{result['strong']}")
    ax.axhline(result["weak_quality"], color="grey", linestyle=":", label=f"{result['weak']}")
    ax.set_xlabel("calls to the strong model (%)")
    ax.set_ylabel("average quality")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
