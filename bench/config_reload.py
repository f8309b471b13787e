"""What reloading the model list under load costs (gateway/config_reload.py): the same open-loop stream of
requests with no reload and with `POST /config/reload` every `--every` seconds, side by side.

    .venv/bin/python -m bench.config_reload [--rate 50] [--duration 20] [--every 0.5] [--policies]

One model on two of three mock upstreams (bench/mock_upstream.py: first byte after 20 ms, 10 chunks 5 ms
apart). Each reload swaps one of the two for the third (one deployment kept, one retired while its
requests finish, one built), so every request in flight on a retired deployment must still be answered.
With `--policies` each reload swaps the routing policies too (gateway/policy_reload.py): a fallback chain
to a second model, hedging, a blocklist guardrail (matching nothing sent) and num_retries 1, there and
gone on alternate reloads, so every other reload builds a new dispatcher under requests in flight.
Counted: requests answered and failed (none should fail), latency (whole answers) and time to first token
(streams) p50 / p99, the reloads done and each reload call's own time. Fresh processes for every run;
Poisson arrivals with the same seed (bench/loadgen.py; 2 s of warm-up, unrecorded). Writes
bench/results/config_reload.json (config_reload_policies.json with `--policies`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import RESULTS, machine_info, save_runs
from bench.loadgen import LoadSpec, percentile, run_load
from bench.procs import gateway_on_mocks

OUT = RESULTS / "config_reload.json"
MASTER = "sk-bench-reload"


# What `--policies` turns on at every other reload (and off at the others).
POLICIES = {"fallbacks": {"on_error": {"mock": ["spare"]}}, "hedging": {"enabled": True, "models": ["mock"]},
            "guardrails": [{"name": "codename", "kind": "blocklist", "patterns": ["(?i)project\\s+bluebird"]}],
            "server": {"num_retries": 1}}


def config(path: Path, bases: list[str], policies: bool | None = None) -> dict[str, Any]:
    """`policies`: None, no second model and no policy (the model list alone reloads); False / True: the
    `spare` model on the last base, and POLICIES off / on."""
    def entry(name: str, base: str) -> dict:
        return {"model_name": name, "litellm_params": {"model": f"hosted_vllm/{name}", "api_base": f"{base}/v1"},
                "model_info": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}}

    models = [entry("mock", base) for base in bases] + ([entry("spare", bases[-1])] if policies is not None else [])
    return {"model_list": models, "ranking": {"enabled": False}, "auth": {"master_key": MASTER, "require_keys": False},
            "storage": {"url": f"sqlite:///{path.parent / 'pitstop.db'}", "spool_path": str(path.parent / "spool.jsonl")},
            **(POLICIES if policies else {})}


class Reloader(threading.Thread):
    """Rewrites the config between the two model lists and reloads it every `every_s` until stopped."""

    def __init__(self, url: str, path: Path, lists: list[list[str]], every_s: float, policies: bool) -> None:
        super().__init__(daemon=True)
        self.url, self.path, self.lists, self.every_s, self.policies = url, path, lists, every_s, policies
        self.stop = threading.Event()
        self.seconds: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        turn = 1
        with httpx.Client(timeout=30) as client:
            while not self.stop.wait(self.every_s):
                policies = bool(turn % 2) if self.policies else None
                self.path.write_text(yaml.safe_dump(config(self.path, self.lists[turn % 2], policies), sort_keys=False))
                started = time.perf_counter()
                response = client.post(f"{self.url}/config/reload", headers={"Authorization": f"Bearer {MASTER}"})
                self.seconds.append(time.perf_counter() - started)
                if response.status_code != 200:
                    self.failures.append(response.text[:200])
                turn += 1


def run_one(stream: bool, every_s: float | None, args: argparse.Namespace) -> dict:
    mocks = [["--delay-ms", "20", "--chunks", "10", "--chunk-interval-ms", "5"]] * 3
    lists: list[list[str]] = []

    def write(path: Path, bases: list[str]) -> None:
        lists.extend([bases[:2], bases[1:]])
        path.write_text(yaml.safe_dump(config(path, lists[0], False if args.policies else None), sort_keys=False))

    with tempfile.TemporaryDirectory(prefix="pitstop-reload-") as tmp, gateway_on_mocks(
            Path(tmp), mocks, write) as (gateway_url, _):
        path = Path(tmp) / "pitstop.yaml"
        reloader = Reloader(gateway_url, path, lists, every_s, args.policies) if every_s else None
        spec = LoadSpec(url=f"{gateway_url}/v1/chat/completions", rate=args.rate, stream=stream,
                        duration_s=args.duration, model="mock", seed=args.seed, timeout_s=10.0, warmup_s=2.0)
        load_before = os.getloadavg()[0]
        if reloader is not None:
            reloader.start()
        result = asyncio.run(run_load(spec))
        if reloader is not None:
            reloader.stop.set()
            reloader.join(30)
    reloads = reloader.seconds if reloader is not None else []
    row = {"stream": stream, "reload_every_s": every_s, "sent": result["sent"], "ok": result["ok"],
           "error_kinds": result["error_kinds"], "latency_ms": result["latency_ms"], "ttft_ms": result["ttft_ms"],
           "reloads": len(reloads), "reload_failures": reloader.failures if reloader is not None else [],
           "reload_call_ms": {"median": round(statistics.median(reloads) * 1000, 1),
                              "p99": round((percentile(reloads, 99) or 0) * 1000, 1)} if reloads else None,
           "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    shown = row["ttft_ms"] if stream else row["latency_ms"]
    print(f"{'ttft' if stream else 'whole':5s} reload every {every_s or '-'} s: ok {row['ok']}/{row['sent']} "
          f"p50 {shown['p50']} p99 {shown['p99']} ms, {row['reloads']} reloads ({row['reload_call_ms']})", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="requests a second")
    parser.add_argument("--duration", type=float, default=20.0, help="recorded seconds a run")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between reloads")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--policies", action="store_true", help="reloads swap fallbacks, hedging, guardrails too")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or (OUT.with_name("config_reload_policies.json") if args.policies else OUT)
    machine = machine_info()
    rows = [run_one(stream, every, args) for stream in (False, True) for every in (None, args.every)]
    settings = {"rate_per_s": args.rate, "duration_s": args.duration, "reload_every_s": args.every,
                "warmup_s": 2.0, "first_byte_ms": 20, "chunks": 10, "chunk_interval_ms": 5,
                "policies": POLICIES if args.policies else None}
    return save_runs("bench.config_reload", argv, out, settings, rows, machine)


if __name__ == "__main__":
    main()
