"""What a route group's `verify:` costs on the request path (gateway/verify.py): end-to-end latency and
the gateway's CPU per request for each outcome, beside the same group without verification; whole
responses and streams.

    .venv/bin/python -m bench.gateway_verify [--rounds 20] [--block 25] [--delay-ms 20]

Five mock upstreams (bench/mock_upstream.py, each answering after `--delay-ms`, a stream's words
`--chunk-interval-ms` apart): `weak` answers "B", `weak-text` a 12-word sentence (63 characters, past
the 32 a stream is held for), `judge` "B", `judge-no` "C", `strong` "D". Five route groups on the
tier prior, which picks the cheap weak model at cost preference 1:
  plain      weak, judge, strong; no verify                      one upstream call
  plain-text weak-text, judge, strong; no verify                 one call (the baseline of `unchecked`)
  unchecked  weak-text, judge, strong; verify with judge          one call (free text is not checked)
  accepted   weak, judge, strong; verify with judge               two calls, one after the other
  escalated  weak, judge-no, strong; verify with judge-no         three calls
One client sends one request at a time (closed loop, keep-alive), the groups, whole and streamed,
interleaved in blocks of `--block` requests, in a new random order every round; every response's
`x-pitstop-verify` header is checked against its group. A stream's time to first token is the client's
(its first content chunk). The gateway's CPU (its process tree, /proc) is read around each block.
Writes bench/results/gateway_verify.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from bench.procs import Service, free_port

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "gateway_verify.json"
UPSTREAMS = {"weak": "B", "weak-text": "The largest planet in the solar system is Jupiter, a gas giant.",
             "judge": "B", "judge-no": "C", "strong": "D"}
# (tier, input USD a token, output USD a token): the weak models are the cheapest, so the tier prior picks them.
MODELS = {"weak": ("weak", 1e-6, 2e-6), "weak-text": ("weak", 1e-6, 2e-6), "judge": ("weak", 2e-6, 3e-6),
          "judge-no": ("weak", 2e-6, 3e-6), "strong": ("strong", 1e-5, 3e-5)}
GROUPS = {  # name: (models, verifier or None, the outcome header expected)
    "plain": (["weak", "judge", "strong"], None, None),
    "plain-text": (["weak-text", "judge", "strong"], None, None),
    "unchecked": (["weak-text", "judge", "strong"], "judge", "unchecked"),
    "accepted": (["weak", "judge", "strong"], "judge", "accepted"),
    "escalated": (["weak", "judge-no", "strong"], "judge-no", "escalated"),
}
BASELINE = {"plain-text": "plain-text", "unchecked": "plain-text"}  # the rest: plain
CALLS = {"plain": 1, "plain-text": 1, "unchecked": 1, "accepted": 2, "escalated": 3}


def mock(name: str, answer: str, delay_ms: float, interval_ms: float, work: Path) -> Service:
    port = free_port()
    argv = [sys.executable, "-m", "bench.mock_upstream", "--port", str(port), "--delay-ms", str(delay_ms),
            "--answer", answer, "--chunk-interval-ms", str(interval_ms)]
    return Service(f"mock-{name}", argv, f"http://127.0.0.1:{port}/health", work / f"mock-{name}.log", cwd=ROOT)


def gateway_config(path: Path, bases: dict[str, str], port: int, work: Path) -> None:
    models = [{"model_name": name, "litellm_params": {"model": f"hosted_vllm/{name}", "api_base": bases[name],
                                                      "api_key": "none"},
               "model_info": {"tier": tier, "input_cost_per_token": price_in, "output_cost_per_token": price_out}}
              for name, (tier, price_in, price_out) in MODELS.items()]
    groups = []
    for name, (members, verifier, _) in GROUPS.items():
        group: dict[str, Any] = {"name": name, "models": members, "router": "tier-prior", "cost_preference": 1.0}
        if verifier is not None:
            group["verify"] = {"verifiers": [verifier], "escalate_to": "strong"}
        groups.append(group)
    config = {"model_list": models, "route_groups": groups, "ranking": {"enabled": False},
              "storage": {"url": f"sqlite:///{work / 'pitstop.db'}", "store_text": True,
                          "spool_path": str(work / "spool.jsonl")},
              "server": {"host": "127.0.0.1", "port": port}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def gateway(config: Path, port: int, work: Path) -> Service:
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "WARNING", "PYTHONPATH": str(ROOT)}
    return Service("pitstop", argv, f"http://127.0.0.1:{port}/readyz", work / "pitstop.log", env=env, cwd=work)


def block(client: httpx.Client, group: str, n: int, stream: bool) -> list[tuple[float, float]]:
    """(seconds to the whole answer, seconds to its first content) per request."""
    expected = GROUPS[group][2]
    timings = []
    for i in range(n):
        body = {"model": group, "stream": stream,
                "messages": [{"role": "user", "content": f"Which planet is largest? ({i})"}]}
        start = time.perf_counter()
        first = None
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200, response.read()
            assert response.headers.get("x-pitstop-verify") == expected, (group, dict(response.headers))
            if stream:
                for line in response.iter_lines():
                    if first is None and '"content":' in line and '"content":""' not in line:
                        first = time.perf_counter()
            else:
                response.read()
        end = time.perf_counter()
        timings.append((end - start, (first or end) - start))
    return timings


def summary(timings: list[tuple[float, float]], cpu_s: float, delay_ms: float, calls: int,
            stream: bool) -> dict[str, float]:
    ms, first_ms = (np.array([t[k] for t in timings]) * 1000 for k in (0, 1))
    out = {"requests": len(ms), "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
           "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
           "upstream_calls": calls, "p50_beyond_upstream_ms": float(np.percentile(ms, 50)) - calls * delay_ms,
           "gateway_cpu_ms_per_request": cpu_s * 1000 / len(ms)}
    if stream:
        out |= {"ttft_p50_ms": float(np.percentile(first_ms, 50)), "ttft_p99_ms": float(np.percentile(first_ms, 99))}
    return out


def run(rounds: int, n: int, delay_ms: float, seed: int, interval_ms: float = 5.0) -> dict[str, Any]:
    rng = random.Random(seed)
    cells = [(group, stream) for group in GROUPS for stream in (False, True)]
    with tempfile.TemporaryDirectory(prefix="pitstop-verify-bench-") as tmp:
        work = Path(tmp)
        mocks = {name: mock(name, answer, delay_ms, interval_ms, work) for name, answer in UPSTREAMS.items()}
        services: list[Service] = []
        try:
            for service in mocks.values():
                service.start()
                services.append(service)
            port = free_port()
            bases = {name: service.ready_url.rsplit("/health", 1)[0] + "/v1" for name, service in mocks.items()}
            gateway_config(work / "pitstop.yaml", bases, port, work)
            gw = gateway(work / "pitstop.yaml", port, work)
            gw.start()
            services.append(gw)
            latencies: dict[tuple[str, bool], list[tuple[float, float]]] = {c: [] for c in cells}
            cpu: dict[tuple[str, bool], float] = dict.fromkeys(cells, 0.0)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as client:
                for cell in cells:  # warm-up: imports, first connections; not recorded
                    block(client, cell[0], 5, cell[1])
                for _ in range(rounds):
                    for cell in rng.sample(cells, len(cells)):
                        before = gw.cpu_seconds()
                        latencies[cell] += block(client, cell[0], n, cell[1])
                        cpu[cell] += gw.cpu_seconds() - before
        finally:
            for service in reversed(services):
                service.stop()
    by_mode = {}
    for stream in (False, True):
        results = {g: summary(latencies[g, stream], cpu[g, stream], delay_ms, CALLS[g], stream) for g in GROUPS}
        for g in GROUPS:  # against the same answer unverified
            baseline = BASELINE.get(g, "plain")
            base, r = results[baseline], results[g]
            r["baseline"] = baseline
            r["p50_over_baseline_ms"] = r["p50_ms"] - base["p50_ms"]
            r["gateway_cpu_over_baseline_ms"] = r["gateway_cpu_ms_per_request"] - base["gateway_cpu_ms_per_request"]
            if stream:
                r["ttft_p50_over_baseline_ms"] = r["ttft_p50_ms"] - base["ttft_p50_ms"]
        by_mode["streamed" if stream else "groups"] = results
    return {"benchmark": "bench.gateway_verify", "rounds": rounds, "block": n, "upstream_delay_ms": delay_ms,
            "chunk_interval_ms": interval_ms, "seed": seed, **by_mode,
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "load_avg_after": os.getloadavg()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=25, help="requests of one group in a row")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="each mock upstream's answer delay")
    parser.add_argument("--chunk-interval-ms", type=float, default=5.0, help="between a mock stream's words")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    result = run(args.rounds, args.block, args.delay_ms, args.seed, args.chunk_interval_ms)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, r in result["groups"].items():
        print(f"{name:10s} calls {r['upstream_calls']}  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
              f"beyond upstream {r['p50_beyond_upstream_ms']:5.1f} ms  gateway CPU {r['gateway_cpu_ms_per_request']:.2f} ms")
    for name, r in result["streamed"].items():
        print(f"{name:10s} streamed  first token p50 {r['ttft_p50_ms']:6.1f} ms  p99 {r['ttft_p99_ms']:6.1f} ms  "
              f"whole p50 {r['p50_ms']:6.1f} ms  gateway CPU {r['gateway_cpu_ms_per_request']:.2f} ms")


if __name__ == "__main__":
    main()
