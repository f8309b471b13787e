"""Gateway overhead: what Pitstop and the LiteLLM proxy add on top of the same upstream, on the same
machine, in the same run.

    .venv/bin/python -m bench.gateway_overhead [--systems pitstop,litellm] [--rates 50,200,500]
        [--duration 8] [--no-search] [--quick] [--out bench/results/gateway_overhead.json]

A mock upstream (bench/mock_upstream.py, fixed delay, paced streaming) runs in its own process; an
open-loop load generator (bench/loadgen.py) runs in its own process per point, first straight at the
mock (the baseline), then through the gateway. Each system runs alone, with a fresh PostgreSQL
database for its logs. See `METHOD` in bench/overhead_report.py (also copied into the JSON) for how
added latency and the sustained rate are defined.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import overhead_report, pitstop_gateway
from bench.bench_db import DEFAULT_ADMIN_DSN, server_version
from bench.gateway_targets import (
    OUT,
    ROOT,
    ROUTED_PROMPT,
    BenchConfig,
    Target,
    run_loadgen,
    sqlite_row_counts,
    start_system,
)
from bench.procs import Service, free_port, host_cpu, wait_quiet

LADDER = [10, 25, 50, 100, 150, 200, 300, 400, 500, 650, 800, 1000, 1250, 1500, 2000, 3000]


class Runner:
    """Runs the points for one system against the shared mock, and keeps what it measured."""

    def __init__(self, cfg: BenchConfig, mock: Service, direct: Target, system: Target) -> None:
        self.cfg, self.mock, self.direct, self.system = cfg, mock, direct, system
        self.points: list[dict[str, Any]] = []
        self.restarts: list[str] = []
        self.rss_max = 0.0
        self.requests_sent = 0  # to the gateway, warm-ups included: compare with the rows it logged

    def _measured(self, target: Target, rate: float, stream: bool) -> tuple[dict[str, Any], dict[str, float]]:
        svc = target.service
        t0, kids0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0, mock0, (busy0, total0) = svc.cpu_seconds() if svc else 0.0, self.mock.cpu_seconds(), host_cpu()
        result = run_loadgen(self.cfg, target, rate, stream)
        cpu1, mock1, (busy1, total1) = svc.cpu_seconds() if svc else 0.0, self.mock.cpu_seconds(), host_cpu()
        t1, kids1 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        # The load generator's whole process (start-up included), so "other" is really other tenants.
        loadgen = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        interval = max(t1 - t0, 1e-6)
        other = (busy1 - busy0) - (cpu1 - cpu0) - (mock1 - mock0) - loadgen
        cpu = {
            "gateway_s": round(cpu1 - cpu0, 3), "mock_s": round(mock1 - mock0, 3),
            "loadgen_process_s": round(loadgen, 3), "interval_s": round(interval, 2),
            "host_busy_share": round((busy1 - busy0) / max(total1 - total0, 1e-6), 3),
            "other_processes_cores": round(max(other, 0.0) / interval, 3),
        }
        return result, cpu

    def pair(self, rate: float, stream: bool, source: str = "fixed") -> dict[str, Any]:
        waited, busy_before = wait_quiet(self.cfg.quiet_wait_s)
        direct, direct_cpu = self._measured(self.direct, rate, stream)
        gateway, cpu = self._measured(self.system, rate, stream)
        self.requests_sent += gateway["sent_total"]
        # Per answered request: exact at sustained rates; overloaded, it also carries abandoned work.
        cpu["gateway_ms_per_request"] = round(1000 * cpu["gateway_s"] / max(gateway["ok_total"], 1), 3)
        cpu["gateway_cores"] = round(cpu["gateway_s"] / max(gateway["wall_s"], 1e-6), 3)
        point: dict[str, Any] = {
            "mode": "stream" if stream else "non_stream", "target_rps": rate, "source": source,
            "added_latency_ms": overhead_report.added(direct, gateway, "latency_ms"),
            "ttft_added_ms": overhead_report.added(direct, gateway, "ttft_ms") if stream else None,
            "gateway": _compact(gateway), "direct": _compact(direct), "cpu": cpu,
            "direct_cpu": direct_cpu,
            "harness_ok": overhead_report.harness_ok(direct),
            "host_before": {"waited_for_quiet_s": waited, "busy_share": busy_before},
        }
        point["sustained"], point["verdict"] = overhead_report.point_verdict(point, self.cfg.budget_ms)
        assert self.system.service is not None
        point["rss_after_mib"] = rss = self.system.service.rss_mib()
        self.rss_max = max(self.rss_max, rss or 0.0)
        # A badly overloaded point leaves a backlog the server keeps working through after the client
        # gave up (minutes for a slow gateway): restart it at once instead of waiting it out.
        overloaded = gateway["errors"] > 0.01 * gateway["sent"] or gateway["achieved_rps"] < 0.8 * gateway[
            "offered_rps"]
        point["settle_s"] = None if overloaded else self.system.service.settle(self.cfg.settle_max_s)
        if overloaded or point["settle_s"] >= self.cfg.settle_max_s:
            self.restarts.append(f"{point['mode']}@{rate}")
            self.system.service.stop()
            self.system.service.start(timeout_s=180)
            warm = BenchConfig(**{**asdict(self.cfg), "duration_s": self.cfg.system_warmup_s, "warmup_s": 0.0})
            self.requests_sent += run_loadgen(warm, self.system, 20, False)["sent_total"]
        self.points.append(point)
        print(f"  {self.system.name:14s} {point['mode']:10s} {rate:6g}/s  "
              f"added p50 {point['added_latency_ms']['p50']} p99 {point['added_latency_ms']['p99']} ms  "
              f"errors {gateway['errors']}  cpu/req {cpu['gateway_ms_per_request']} ms  "
              f"-> {point['verdict']}", flush=True)
        return point

    def measure(self, rate: float, stream: bool, source: str = "fixed") -> dict[str, Any]:
        """One point. A point that failed on p99 latency alone is measured once more and the second
        counts (the machine is shared); the first stays in `earlier_attempts`."""
        point = self.pair(rate, stream, source)
        if not point["sustained"] and point["verdict"].startswith("p99"):
            self.points.remove(point)
            retry = self.pair(rate, stream, source)
            retry["earlier_attempts"] = [{k: point[k] for k in ("added_latency_ms", "ttft_added_ms", "verdict")}]
            point = retry
        return point

    def sustained_search(self) -> dict[str, Any]:
        """Highest non-streaming rate with p99 added latency under budget (ladder, then bisection)."""
        known = {p["target_rps"]: p for p in self.points if p["mode"] == "non_stream" and p["sustained"]}
        steps: list[dict[str, Any]] = []
        best, fail = 0.0, None

        def passes(rate: float) -> bool:
            if rate in known:
                steps.append({"rate": rate, "sustained": True, "reused": True})
                return True
            point = self.measure(rate, False, source="search")
            steps.append({"rate": rate, "attempts": 1 + len(point.get("earlier_attempts", [])),
                          "sustained": point["sustained"], "verdict": point["verdict"],
                          "harness_ok": point["harness_ok"]})
            return point["sustained"]

        harness_limited = False
        for rate in [r for r in LADDER if r <= self.cfg.search_max]:
            if passes(rate):
                best = rate
            else:
                fail = rate
                harness_limited = not steps[-1]["harness_ok"]
                break
        if fail is not None:
            for _ in range(self.cfg.bisect_steps):
                mid = round((best + fail) / 2 / 5) * 5
                if mid <= best or mid >= fail:
                    break
                if passes(mid):
                    best = mid
                else:
                    fail = mid
        return {"sustained_rps": best or None, "first_failing_rps": fail, "capped_by_search_max": fail is None,
                "harness_limited": harness_limited, "steps": steps}


def _compact(result: dict[str, Any]) -> dict[str, Any]:
    keep = ("target_rps", "offered_rps", "sent", "sent_total", "ok", "errors", "error_kinds", "achieved_rps",
            "sent_rps", "latency_ms", "ttft_ms", "schedule_lag_ms", "loadgen_cpu_share", "wall_s")
    return {k: result[k] for k in keep if k in result}


def run_system(name: str, cfg: BenchConfig, mock: Service, direct: Target, work: Path) -> dict[str, Any]:
    upstream = direct.url.rsplit("/chat/completions", 1)[0]
    target, facts, db = start_system(name, cfg, work, upstream)
    svc = target.service
    assert svc is not None
    print(f"{target.name}: up in {facts['startup_s']} s", flush=True)
    runner = Runner(cfg, mock, direct, target)
    try:
        rss = {"idle_after_start": svc.rss_mib()}
        warm = BenchConfig(**{**asdict(cfg), "duration_s": cfg.system_warmup_s, "warmup_s": 0.0})
        for stream in (False, True):  # lazy imports and first connections, not recorded
            runner.requests_sent += run_loadgen(warm, target, 20, stream)["sent_total"]
        rss["after_warmup"] = svc.rss_mib()
        for stream, rates in ((False, cfg.rates), (True, cfg.stream_rates or cfg.rates)):
            for rate in rates:
                runner.measure(rate, stream)
        search = runner.sustained_search() if cfg.search else None
        rss["after"] = svc.rss_mib()
        rss["max_seen"] = max(runner.rss_max, rss["after"] or 0.0)
    finally:
        facts["exit_code"] = svc.stop()  # the outcome writer flushes at shutdown: count rows after it
        try:
            if db is not None:
                facts["rows_logged"] = db.row_counts()
            elif name in ("pitstop", "pitstop-routed") and cfg.storage == "sqlite":
                facts["rows_logged"] = sqlite_row_counts(work / "pitstop.db")
        finally:
            if db is not None:
                db.drop()
    facts["requests_sent"] = runner.requests_sent
    return {"name": target.name, **facts, "rss_mib": rss, "restarts": runner.restarts, "points": runner.points,
            "sustained_search": search}


def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    started = time.monotonic()
    machine = overhead_report.machine()
    with tempfile.TemporaryDirectory(prefix="pitstop-bench-") as tmp:
        work = Path(tmp)
        port = free_port()
        mock = Service("mock", [sys.executable, "-m", "bench.mock_upstream", "--port", str(port),
                                "--delay-ms", str(cfg.delay_ms), "--chunks", str(cfg.chunks),
                                "--chunk-interval-ms", str(cfg.chunk_interval_ms)],
                       f"http://127.0.0.1:{port}/health", work / "mock.log", env={"PYTHONPATH": str(ROOT)}, cwd=ROOT)
        mock.start(timeout_s=60)
        direct = Target("direct", f"http://127.0.0.1:{port}/v1/chat/completions", {}, None)
        systems: dict[str, Any] = {}
        try:
            for name in cfg.systems:
                sub = work / name
                sub.mkdir()
                try:
                    result = run_system(name, cfg, mock, direct, sub)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:  # keep the other's numbers
                    print(f"{name} failed: {exc}", file=sys.stderr)
                    result = {"name": name, "error": str(exc)[-3000:], "points": []}
                systems[result.pop("name")] = result
        finally:
            mock_rss = mock.rss_mib()
            mock.stop()
    litellm_facts = systems.get("litellm_proxy", {})
    report = {
        "benchmark": "gateway_overhead",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.gateway_overhead", *sys.argv[1:]]),
        "wall_s": round(time.monotonic() - started, 1),
        "machine": {**machine, "loadavg_at_end": list(os.getloadavg())},
        "versions": overhead_report.versions({
            "pitstop": pitstop_gateway.version(), "postgresql": server_version(cfg.pg_admin_dsn)}),
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                   "upstream": {"delay_ms": cfg.delay_ms, "stream_chunks": cfg.chunks,
                                "chunk_interval_ms": cfg.chunk_interval_ms, "workers": 1,
                                "ideal_stream_ms": cfg.delay_ms + (cfg.chunks - 1) * cfg.chunk_interval_ms},
                   "gateway_workers": 1, "log_level": "warning", "mock_rss_mib_at_end": mock_rss},
        "method": overhead_report.METHOD,
        "litellm_spend_logging": litellm_facts.get("litellm_spend_logging"),
        "litellm_spend_logging_reason": litellm_facts.get("litellm_spend_logging_reason"),
        "systems": systems,
        "table": overhead_report.table_rows(systems),
        "goal": overhead_report.goal(systems, cfg.budget_ms),
        "routing_overhead": overhead_report.routing_overhead(systems),
    }
    return report


def _rates(text: str) -> list[float]:
    return [float(r) for r in text.split(",") if r.strip()]


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(description="Pitstop vs LiteLLM proxy gateway overhead")
    p.add_argument("--systems", default="pitstop,litellm",
                   help="comma list of pitstop, pitstop-routed (route group on a trained router), litellm")
    p.add_argument("--prompt", default=BenchConfig.prompt, help="user message of every request")
    p.add_argument("--routed-prompt", action="store_true", help="a RouterBench-sized prompt (~90 tokens)")
    p.add_argument("--router-artifact", type=Path, default=BenchConfig.router_artifact,
                   help="pitstop-routed's router (trained on RouterBench first when missing)")
    p.add_argument("--rates", default="50,200,500", help="fixed rates, req/s, non-streaming")
    p.add_argument("--stream-rates", default=None, help="fixed rates for streaming (default: --rates)")
    p.add_argument("--duration", type=float, default=8.0, help="recorded seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds before each point")
    p.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    p.add_argument("--no-search", action="store_true", help="skip the sustained-rate search")
    p.add_argument("--search-max", type=float, default=2000.0)
    p.add_argument("--budget-ms", type=float, default=50.0, help="p99 added latency budget for 'sustained'")
    p.add_argument("--delay-ms", type=float, default=20.0, help="mock upstream delay")
    p.add_argument("--chunks", type=int, default=10, help="mock stream chunks")
    p.add_argument("--chunk-interval-ms", type=float, default=5.0)
    p.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp")
    p.add_argument("--arrival", choices=["poisson", "uniform"], default="poisson")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--storage", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--pg-admin-dsn", default=DEFAULT_ADMIN_DSN)
    p.add_argument("--quiet-wait", type=float, default=10.0,
                   help="max seconds to wait before each point for the host to go idle (shared machines)")
    p.add_argument("--system-warmup", type=float, default=1.0, help="unrecorded seconds per mode at start")
    p.add_argument("--nice", type=int, default=0,
                   help="run everything at this niceness (e.g. -10 as root on a shared machine)")
    p.add_argument("--pitstop-model", default="hosted_vllm/mock",
                   help="Pitstop's litellm_params.model for the mock (e.g. pitstop-engine/mock: its own HTTP backend)")
    p.add_argument("--quick", action="store_true", help="short points, rates 50,200, search to 500")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    systems = [{"litellm_proxy": "litellm"}.get(s.strip(), s.strip()) for s in a.systems.split(",") if s.strip()]
    cfg = BenchConfig(systems=systems, rates=_rates(a.rates),
                      stream_rates=_rates(a.stream_rates) if a.stream_rates else None, duration_s=a.duration,
                      warmup_s=a.warmup, timeout_s=a.timeout, search=not a.no_search, search_max=a.search_max,
                      budget_ms=a.budget_ms, delay_ms=a.delay_ms, chunks=a.chunks,
                      chunk_interval_ms=a.chunk_interval_ms, client=a.client, arrival=a.arrival, seed=a.seed,
                      storage=a.storage, pg_admin_dsn=a.pg_admin_dsn, quiet_wait_s=a.quiet_wait,
                      pitstop_model=a.pitstop_model, system_warmup_s=a.system_warmup, nice=a.nice,
                      prompt=ROUTED_PROMPT if a.routed_prompt else a.prompt, router_artifact=a.router_artifact,
                      out=a.out)
    if a.quick:
        cfg.rates, cfg.duration_s, cfg.search_max, cfg.bisect_steps = [50, 200], 3.0, 500, 1
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if "pitstop-routed" in cfg.systems and not cfg.router_artifact.exists():
        from routers.train_job import train_and_save  # noqa: PLC0415  (only for the routed system)

        print(f"training the router artifact {cfg.router_artifact} on RouterBench", flush=True)
        train_and_save("pitstop", "routerbench", out=cfg.router_artifact)
    if "pitstop" in cfg.systems:
        ok, why = pitstop_gateway.available()
        if not ok:
            print(f"pitstop is not runnable ({why}); run with --systems litellm", file=sys.stderr)
            return 2
    if cfg.nice:
        os.setpriority(os.PRIO_PROCESS, 0, cfg.nice)  # the mock, gateways and load generators inherit it
    report = run_benchmark(cfg)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(report, indent=2) + "\n")
    print(overhead_report.format_table(report["table"]))
    print(json.dumps({k: v for k, v in report["goal"].items() if k != "comparisons"}, indent=2))
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
