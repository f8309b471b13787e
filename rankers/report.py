"""The evaluation report as files: JSON and PNG plots under bench/results/rankers/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    return [out / "report.json", _per_model_plot(report, out / "tau_per_model.png"),
            _summary_plot(report, out / "tau_summary.png")]


def _label(row: dict[str, Any]) -> str:
    return row["family"] if row["features"] == "-" else f"{row['family']} ({row['features']})"


def _per_model_plot(report: dict[str, Any], path: Path) -> Path:
    rows, models = report["results"], report["headline_models"]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / max(len(rows), 1)
    for i, row in enumerate(rows):
        ax.bar(np.arange(len(models)) + i * width, [row["heldout_tau_alpaca"].get(m, np.nan) for m in models],
               width, label=_label(row))
    ax.axhline(0.5, color="k", ls="--", lw=0.8)
    ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2, models, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("Kendall's tau (held-out prompts)")
    ax.set_title("Output-length ranking per AlpacaEval model")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _summary_plot(report: dict[str, Any], path: Path) -> Path:
    rows = report["results"]
    keys = [("cv_tau_alpaca", "cross-validated (train prompts)"),
            ("heldout_tau_alpaca_mean", "held-out prompts"), ("unseen_model_tau_mean", "unseen models")]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(keys)
    for j, (key, name) in enumerate(keys):
        ax.bar(np.arange(len(rows)) + j * width, [row.get(key, np.nan) for row in rows], width, label=name)
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, [_label(r) for r in rows], rotation=20, ha="right",
                  fontsize=8)
    ax.set_ylabel("mean Kendall's tau over AlpacaEval models")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
