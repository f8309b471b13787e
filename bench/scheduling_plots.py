"""Plots for bench/scheduling.py: latency vs load per workload, and the aging horizon's trade-off."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

POLICY_STYLE = {"fcfs": "k-o", "rank": "C0-o", "rank-no-aging": "C0--x", "rank-answer-only": "C1-.^",
                "oracle": "C2:s", "oracle-work": "C2-.d"}


def plot_all(report: dict, out: Path, stem: str = "scheduling") -> list[Path]:
    """PNGs beside the report, named after its file (`stem`), so another run's report keeps its own."""
    paths = []
    for sim in report["simulated"]:
        paths.append(_latency_vs_load(sim, out / f"{stem}_{sim['workload']}.png"))
        paths.append(_horizon_sweep(sim, out / f"{stem}_{sim['workload']}_horizon.png"))
    if "torch_cpu" in report:
        paths.append(_torch(report["torch_cpu"], out / f"{stem}_torch_cpu.png"))
    return paths


def _latency_vs_load(sim: dict, path: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    rates = [r["rate"] for r in sim["by_rate"]]
    for ax, key, title in zip(axes, ("mean_s", "p90_s", "ttft_mean_s"), ("mean e2e latency", "p90 e2e latency",
                                                                           "mean TTFT"), strict=True):
        for name, style in POLICY_STYLE.items():
            if name not in sim["by_rate"][0]["policies"]:  # reports from before stop 20 lack rank-answer-only
                continue
            ax.plot(rates, [r["policies"][name][key] for r in sim["by_rate"]], style, label=name, ms=4)
        ax.set_xlabel("mean arrival rate (req/s)")
        ax.set_ylabel("seconds")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{sim['workload']}: Llama-3.1-8B / H100 (simulated), Azure conversation arrivals", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _horizon_sweep(sim: dict, path: Path) -> Path:
    runs = sim["horizon_sweep"]["runs"]
    labels = ["inf" if r["horizon_s"] >= 1e8 else f"{r['horizon_s']:g}" for r in runs]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(labels, [r["mean_s"] for r in runs], "C0-o", label="mean")
    ax.plot(labels, [r["p99_s"] for r in runs], "C3-o", label="p99")
    answer_only = sim["horizon_sweep"].get("answer_only_runs")
    if answer_only:  # the same key on the answer-length score alone
        ax.plot(labels, [r["mean_s"] for r in answer_only], "C0:^", label="mean, answer score only")
        ax.plot(labels, [r["p99_s"] for r in answer_only], "C3:^", label="p99, answer score only")
    ax.set_xlabel("aging horizon (s): 0 = FCFS, inf = no aging")
    ax.set_ylabel("e2e latency (s)")
    ax.set_title(f"{sim['workload']} at {sim['horizon_sweep']['rate']} req/s", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _torch(part: dict, path: Path) -> Path:
    panels = [("by_load", "torch runner, CPU clock"), ("twin_by_load", "noise-free twin (fitted step times)")]
    panels = [(key, title) for key, title in panels if key in part]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.8), squeeze=False)
    windows = part.get("windows", [])
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        loads = [r["load"] for r in part[key]]
        for name in ("fcfs", "rank", "oracle"):
            ax.plot(loads, [r["policies"][name]["mean_s"] for r in part[key]], POLICY_STYLE[name], label=name)
            for window in windows:  # each trace window, faint: the spread behind the mean
                ax.plot(loads, [r["policies"][name]["mean_s"] for r in window[key]], POLICY_STYLE[name][:2],
                        alpha=0.2, lw=0.8)
        ax.set_xlabel("offered load (fraction of measured capacity)")
        ax.set_ylabel("mean e2e latency (s)")
        ax.set_title(f"{title}, mean of {max(len(windows), 1)} trace windows", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("tiny random Llama on CPU, mixed workload", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
