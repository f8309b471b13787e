"""Two gateway replicas and one provider quota: per-deployment rate limits (litellm_params `rpm`) kept by
each replica alone against shared through Redis (gateway/deployment_limits_sync.py), on one schedule:
the 429s the provider answered, the share of requests answered, latency.

    .venv/bin/python -m bench.gateway_deployment_limits_shared [--rate 1.5] [--duration 45] [--quota-rpm 40]
        [--sync-interval 0.25] [--quick]

One mock provider (bench/mock_upstream.py answering after `--delay-ms`, `--limit-rpm quota`: past its
quota in a sliding 60 s window, a 429 with retry-after) behind one model `m` with `rpm: quota`, served by
two `pitstop serve` replicas. One client: open-loop Poisson arrivals at `--rate` a second (seeded: both
variants get the same schedule), the requests split between the replicas in turn. Variants: `local`
(no redis_url: each replica keeps its own window, so together they may send twice the quota) and
`shared` (redis_url: the windows synced every `--sync-interval` s; one variant for each interval given). Fresh processes and Redis keys each
variant. Writes bench/results/gateway_deployment_limits_shared.json (`--quick`: a 10 s smoke size)."""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

from bench.common import RESULTS, command, machine_info, write_report
from bench.loadgen import percentile
from bench.procs import mock_upstream, pitstop_serve

OUT = RESULTS / "gateway_deployment_limits_shared.json"


def write_config(path: Path, upstream: str, quota_rpm: int, redis_url: str | None, prefix: str,
                 sync_interval_s: float | None) -> None:
    config: dict[str, Any] = {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "hosted_vllm/m", "api_base": f"{upstream}/v1",
                                                              "rpm": quota_rpm},
                        "model_info": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}}],
        "ranking": {"enabled": False},
        "storage": {"url": f"sqlite:///{path.parent / 'pitstop.db'}", "spool_path": str(path.parent / 'spool.jsonl')}}
    if redis_url is not None:
        config |= {"redis_url": redis_url,
                   "deployment_limits": {"redis_prefix": prefix, "sync_interval_s": sync_interval_s}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


async def split_load(urls: list[str], rate: float, duration_s: float, seed: int,
                     timeout_s: float = 30.0) -> list[dict]:
    """Poisson arrivals at `rate` for `duration_s`, the i-th to urls[i % len(urls)]; each request's status,
    error code and latency from its scheduled time (open loop: no coordinated omission)."""
    rng, offsets, t = random.Random(seed), [], 0.0
    while (t := t + rng.expovariate(rate)) < duration_s:
        offsets.append(t)
    body = {"model": "m", "messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 16}
    results: list[dict] = []

    async def one(client: httpx.AsyncClient, url: str, scheduled: float) -> None:
        try:
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            code = None if response.status_code == 200 else (response.json().get("error") or {}).get("code")
            results.append({"status": response.status_code, "code": code,
                            "latency_s": time.perf_counter() - scheduled})
        except httpx.HTTPError as exc:
            results.append({"status": None, "code": type(exc).__name__, "latency_s": None})

    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        start, tasks = time.perf_counter() + 0.05, []
        for i, offset in enumerate(offsets):
            await asyncio.sleep(max(start + offset - time.perf_counter(), 0.0))
            tasks.append(asyncio.create_task(one(client, urls[i % len(urls)], start + offset)))
        await asyncio.gather(*tasks)
    return results


def _ms(values: list[float], p: float) -> float | None:
    value = percentile(values, p)
    return None if value is None else round(value * 1000, 1)


def _metric_sum(metrics: str, name: str, labels: str = "") -> float:
    return sum(float(v) for v in re.findall(rf"^{name}\{{[^}}]*{labels}[^}}]*\}} ([0-9.e+]+)$", metrics, re.M))


def run_variant(variant: str, sync_interval_s: float | None, args: argparse.Namespace) -> dict:
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="pitstop-shared-limits-") as tmp:
        work = Path(tmp)
        mock, mock_url = mock_upstream(work, "--delay-ms", str(args.delay_ms), "--limit-rpm", str(args.quota_rpm))
        gateways = []
        for name in ("one", "two"):
            (work / name).mkdir()
            write_config(work / name / "pitstop.yaml", mock_url, args.quota_rpm,
                         args.redis_url if variant == "shared" else None, prefix, sync_interval_s)
            gateways.append(pitstop_serve(work / name / "pitstop.yaml", work / name / "pitstop.log"))
        services = [mock, *(service for service, _ in gateways)]
        try:
            mock.start()
            with ThreadPoolExecutor(len(gateways)) as starting:  # the replicas import side by side
                list(starting.map(lambda service: service.start(), (service for service, _ in gateways)))
            results = asyncio.run(split_load([url for _, url in gateways], args.rate, args.duration, args.seed))
            upstream = httpx.get(f"{mock_url}/stats", timeout=10).json()
            metrics = [httpx.get(f"{url}/metrics", timeout=10).text for _, url in gateways]
        finally:
            for service in reversed(services):
                service.stop()
            if variant == "shared":
                with redis.Redis.from_url(args.redis_url) as client:
                    keys = list(client.scan_iter(match=f"pitstop:{prefix}:*"))
                    if keys:
                        client.delete(*keys)
    answered = [r["latency_s"] for r in results if r["status"] == 200]
    refused = [r["latency_s"] for r in results if r["code"] == "deployment_rate_limited"]
    other = {}
    for r in results:
        if r["status"] != 200 and r["code"] != "deployment_rate_limited":
            kind = f"{r['status']} {r['code']}"
            other[kind] = other.get(kind, 0) + 1
    row = {"variant": variant, "sync_interval_s": sync_interval_s, "sent": len(results), "answered": len(answered),
           "answered_share": round(len(answered) / len(results), 4) if results else None,
           "provider_served": upstream["served"], "provider_429s": upstream["rate_limited"],
           "refused_by_gateway": len(refused), "other_errors": other,
           "latency_ms": {"p50": _ms(answered, 50), "p99": _ms(answered, 99)},
           "refusal_latency_ms": {"p50": _ms(refused, 50), "p99": _ms(refused, 99)},
           "syncs": {outcome: int(sum(_metric_sum(m, "pitstop_deployment_limit_syncs_total", f'outcome="{outcome}"')
                                      for m in metrics)) for outcome in ("ok", "failed")}}
    print(f"{variant} (sync {sync_interval_s}): answered {row['answered']}/{row['sent']}, provider served {row['provider_served']} "
          f"429s {row['provider_429s']}, refused by the gateway {row['refused_by_gateway']}, other {other}, "
          f"p50 / p99 {row['latency_ms']['p50']} / {row['latency_ms']['p99']} ms", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1.5, help="requests a second, both replicas together")
    parser.add_argument("--duration", type=float, default=45.0, help="seconds a variant")
    parser.add_argument("--quota-rpm", type=int, default=40, help="the provider's requests a minute, and `rpm`")
    parser.add_argument("--sync-interval", type=float, nargs="+", default=[0.25],
                        help="deployment_limits.sync_interval_s: a shared variant each")
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a smoke size: 10 s, a quota of 10, 2 req/s")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.quota_rpm, args.rate = 10.0, 10, 2.0
    rows = [run_variant("local", None, args), *(run_variant("shared", interval, args) for interval in args.sync_interval)]
    report = {"benchmark": "gateway_deployment_limits_shared",
              "command": command("bench.gateway_deployment_limits_shared", argv), "machine": machine_info(),
              "settings": {"rate_per_s": args.rate, "duration_s": args.duration, "quota_rpm": args.quota_rpm,
                           "replicas": 2, "sync_interval_s": args.sync_interval, "upstream_delay_ms": args.delay_ms,
                           "seed": args.seed},
              "runs": rows}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
