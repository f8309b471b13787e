"""Helpers the benchmarks share: where the shared data lives, what machine a run was on, the command
that reproduces it, and writing the result file."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Real data sits beside the repository, never inside it: ../shared/data from the repo root.
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
THREADS_HELP = ("torch intra-op threads (default 1: on a small shared machine, threads = cores oversubscribes "
                "as soon as anything else runs, and OpenMP barriers then stall a run 10x or more)")


class CpuClock:
    """This thread's CPU time plus the gaps jumped over with `advance`: on a shared machine, with one
    torch thread (all compute on the calling thread), the wall clock of a dedicated one. It keeps every
    cost of the process itself (Python, torch, cache misses) and drops the time other processes held
    the core. An engine clock (`now`, `advance`, `advance_to`), like engine.clock's."""

    virtual = False

    def __init__(self) -> None:
        self._offset = 0.0

    def now(self) -> float:
        return time.thread_time() + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += max(0.0, seconds)

    def advance_to(self, t: float) -> None:
        self.advance(t - self.now())


def _cpuinfo(field: str) -> str | None:
    """The first core's `field` in /proc/cpuinfo (None where it is unreadable or absent)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's marketing name (platform.processor() is empty or just 'x86_64' on Linux)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_generation() -> str | None:
    """`family/model` from /proc/cpuinfo: a VM's "AMD EPYC" is Zen 2-4 at family 23 or 25, Zen 5 at 26."""
    family, model = _cpuinfo("cpu family"), _cpuinfo("model")
    return f"{family}/{model}" if family and model else None


# The vector extensions int8 inference speed hangs on: "AMD EPYC" alone names CPUs 2.5x apart here.
MATMUL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


def cpu_matmul_flags() -> list[str]:
    """Which of MATMUL_FLAGS the CPU reports (empty where /proc/cpuinfo is unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in MATMUL_FLAGS if flag in present]
    except OSError:
        pass
    return []


def machine_info() -> dict:
    """Where and when the numbers were taken; torch's thread counts as set at the time of the call."""
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_family_model": cpu_generation(),
        "cpu_flags": cpu_matmul_flags(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        # Other tenants of a shared machine show up here; read it beside any outlier.
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def command(module: str, argv: list[str] | None = None) -> str:
    """The shell command that reruns `python -m module` with these arguments, from the repo root."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join([".venv/bin/python", "-m", module, *args])


def pct(values: list[float], q: float) -> float:
    """q-th percentile (linear interpolation); NaN for no values."""
    return float(np.percentile(values, q)) if len(values) else float("nan")


def rounded(value: object, digits: int = 6) -> object:
    """Floats rounded throughout a nested report, so the JSON stays readable."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value


def write_report(path: str | Path, report: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rounded(report), indent=2) + "\n")
    return path


def save_runs(module: str, argv: list[str] | None, out: str | Path, settings: dict, runs: list[dict],
              machine: dict | None = None) -> dict:
    """A load benchmark's report (the command that reruns it, the machine, its settings, a row a run) written
    to `out`, and said so."""
    report = {"command": command(module, argv), "machine": machine or machine_info(), "settings": settings,
              "runs": runs}
    write_report(out, report)
    print(f"wrote {out}")
    return report


def latency_modes(ms: dict[str, list[float]], cpu_ms: dict[str, list[float]]) -> dict[str, dict]:
    """Each mode's requests, median and p90 latency (ms) and mean gateway CPU (ms) a request."""
    return {mode: {"requests": len(values), "median_ms": statistics.median(values), "p90_ms": pct(values, 90),
                   "gateway_cpu_ms_mean": statistics.fmean(cpu_ms[mode])} for mode, values in ms.items()}
