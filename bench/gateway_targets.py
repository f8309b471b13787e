"""The systems the gateway benchmark drives: its config, a target (URL, headers, server process), one
load-generator run against a target, and starting Pitstop or the LiteLLM proxy with a fresh database."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import litellm_proxy, pitstop_gateway
from bench.bench_db import DEFAULT_ADMIN_DSN, BenchDatabase
from bench.procs import Service, free_port

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/results/gateway_overhead.json"
MODEL_INFO = {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}
# A RouterBench-sized question (MBPP style, ~90 tokens): what a router featurizes per request.
ROUTED_PROMPT = ("Write a python function to find the first repeated character in a given string. "
                 "Your code should pass these tests: assert first_repeated_char(\"abcabc\") == \"a\"; "
                 "assert first_repeated_char(\"abc\") == None; assert first_repeated_char(\"123123\") == \"1\". "
                 "Explain the time complexity of your solution in one sentence.")


@dataclass
class BenchConfig:
    systems: list[str] = field(default_factory=lambda: ["pitstop", "litellm"])
    rates: list[float] = field(default_factory=lambda: [50, 200, 500])
    stream_rates: list[float] | None = None  # None: the same as `rates`
    duration_s: float = 8.0
    warmup_s: float = 1.0
    timeout_s: float = 5.0
    search: bool = True
    search_max: float = 2000.0
    bisect_steps: int = 2
    budget_ms: float = 50.0
    delay_ms: float = 20.0
    chunks: int = 10
    chunk_interval_ms: float = 5.0
    client: str = "aiohttp"
    arrival: str = "poisson"
    seed: int = 1
    storage: str = "postgres"  # or "sqlite" (smoke test)
    pg_admin_dsn: str = DEFAULT_ADMIN_DSN
    settle_max_s: float = 20.0
    system_warmup_s: float = 1.0  # unrecorded load at 20 req/s per mode after a system starts
    quiet_wait_s: float = 10.0  # before each point, wait up to this long for other tenants' load to drop
    nice: int = 0  # niceness for the whole run (children inherit): < 0 (root) shields it from other tenants
    pitstop_model: str = "hosted_vllm/mock"  # litellm_params.model for Pitstop's one deployment
    prompt: str = "Say something short."  # every system gets the same request body
    # pitstop-routed: route group `auto` over two mock deployments, on this trained router artifact
    router_artifact: Path = ROOT / "var/routers/auto-pitstop.joblib"
    out: Path = OUT


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    service: Service | None  # None: the mock itself (direct baseline)
    model: str = "mock"


def run_loadgen(cfg: BenchConfig, target: Target, rate: float, stream: bool) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.loadgen", "--url", target.url, "--rate", str(rate),
            "--duration", str(cfg.duration_s), "--warmup", str(cfg.warmup_s), "--timeout", str(cfg.timeout_s),
            "--client", cfg.client, "--arrival", cfg.arrival, "--seed", str(cfg.seed),
            "--model", target.model, "--prompt", cfg.prompt]
    argv += ["--stream"] if stream else []
    for k, v in target.headers.items():
        argv += ["--header", f"{k}: {v}"]
    limit = cfg.warmup_s + cfg.duration_s + cfg.timeout_s + 60
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=limit)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sqlite_row_counts(path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in sorted(tables)}


def start_system(name: str, cfg: BenchConfig, work: Path, upstream: str) -> tuple[Target, dict[str, Any], Any]:
    """Start one system with its fresh database; returns (target, facts for the JSON, database or None)."""
    port = free_port()
    facts: dict[str, Any] = {}
    db = None
    if name in ("pitstop", "pitstop-routed"):
        if cfg.storage == "postgres":
            db = BenchDatabase.create(cfg.pg_admin_dsn)
            url = db.sqlalchemy_url
        else:
            url = f"sqlite:///{work / 'pitstop.db'}"
        config = work / "pitstop.yaml"
        routed = cfg.router_artifact if name == "pitstop-routed" else None
        pitstop_gateway.write_config(config, upstream, MODEL_INFO, url, port, work / "pitstop-spool.jsonl",
                                     cfg.pitstop_model, routed)
        svc = pitstop_gateway.service(config, port, work / f"{name}.log", work)
        facts.update(outcome_logging=True, storage=cfg.storage, database=db.name if db else url)
        if routed is not None:
            facts.update(router_artifact=str(routed), router=pitstop_gateway.router_facts(routed))
        target = Target(name, f"http://127.0.0.1:{port}/v1/chat/completions", {}, svc,
                        "auto" if routed is not None else "mock")
    elif name == "litellm":
        spend, reason = litellm_proxy.spend_logging_available()
        if spend and cfg.storage == "postgres":
            db = BenchDatabase.create(cfg.pg_admin_dsn)
        config = work / "litellm.yaml"
        litellm_proxy.write_config(config, upstream, MODEL_INFO)
        svc = litellm_proxy.service(config, port, work / "litellm.log", db.dsn if db else None)
        facts.update(litellm_spend_logging=bool(db), litellm_spend_logging_reason=reason,
                     database=db.name if db else None)
        target = Target("litellm_proxy", f"http://127.0.0.1:{port}/v1/chat/completions",
                        litellm_proxy.auth_headers(), svc)
    else:
        raise ValueError(f"unknown system {name!r} (pitstop, pitstop-routed, litellm)")
    try:
        svc.start(timeout_s=180)
    except RuntimeError:
        if name == "litellm" and db is not None:  # spend logging did not come up: run without it
            db.drop()
            facts.update(litellm_spend_logging=False, database=None,
                         litellm_spend_logging_reason=f"start-up with DATABASE_URL failed: {svc.log_tail(400)}")
            svc = litellm_proxy.service(config, port, work / "litellm-nodb.log", None)
            target.service, db = svc, None
            svc.start(timeout_s=180)
        else:
            raise
    facts["startup_s"] = svc.started_s
    return target, facts, db
