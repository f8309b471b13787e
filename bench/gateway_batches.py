"""What the Batch API costs against sending the same requests yourself: `pitstop serve` in front of a mock
upstream (bench/mock_upstream.py, `--delay-ms` before each answer), on SQLite and PostgreSQL.

- `batch`: `--requests` chat requests uploaded as one JSONL file and run as a batch (`batch_concurrency`
  8, the default), timed from the upload to the output file downloaded, the batch polled every 50 ms.
- `client`: the same requests sent by a client 8 at a time (8 threads, one connection each), timed from
  the first to the last answer.

Both send the upstream the same requests, 8 at a time; each leaves an outcome row. Reports requests a
second and the gateway's CPU a request (its process tree, /proc), modes alternating over `--repeats`.

    .venv/bin/python -m bench.gateway_batches [--requests 1000] [--repeats 3] [--delay-ms 5]

Writes bench/results/gateway_batches.json."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.bench_db import on_each_database_behind_a_mock, server_version
from bench.common import RESULTS, command, machine_info, write_report
from bench.procs import Service, mock_model_config, pitstop_serve

OUT = RESULTS / "gateway_batches.json"
CONCURRENCY = 8


def _body(i: int) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": f"question {i}: what comes next?"}]}


def _batch(http: httpx.Client, requests: int) -> None:
    lines = [json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions", "body": _body(i)})
             for i in range(requests)]
    uploaded = http.post("/v1/files", files={"file": ("in.jsonl", "\n".join(lines).encode())},
                         data={"purpose": "batch"}).raise_for_status().json()
    batch = http.post("/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions",
                                           "completion_window": "24h"}).raise_for_status().json()
    while batch["status"] not in ("completed", "failed", "cancelled"):
        time.sleep(0.05)
        batch = http.get(f"/v1/batches/{batch['id']}").raise_for_status().json()
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == requests, batch
    output = http.get(f"/v1/files/{batch['output_file_id']}/content").raise_for_status().content
    assert output.count(b"\n") == requests


def _client(url: str, requests: int) -> None:
    def send(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(worker, requests, CONCURRENCY):
                http.post("/v1/chat/completions", json=_body(i)).raise_for_status()

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(send, range(CONCURRENCY)))


def _timed(gateway: Service, run: object, *args: object) -> tuple[float, float]:
    cpu, started = gateway.cpu_seconds(), time.perf_counter()
    run(*args)  # type: ignore[operator]
    return time.perf_counter() - started, gateway.cpu_seconds() - cpu


def _run(storage: str, storage_url: str, mock_url: str, args: argparse.Namespace, work: Path) -> dict:
    gateway, url = pitstop_serve(mock_model_config(mock_url, storage_url, work), work / f"gateway-{storage}.log")
    gateway.start(timeout_s=300)
    seconds: dict[str, list[float]] = {"batch": [], "client": []}
    cpu: dict[str, list[float]] = {"batch": [], "client": []}
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            _batch(http, 20)  # warm: connections, statement caches
            _client(url, 20)
            for _ in range(args.repeats):
                for mode, run, arg in (("batch", _batch, http), ("client", _client, url)):
                    took, used = _timed(gateway, run, arg, args.requests)
                    seconds[mode].append(took)
                    cpu[mode].append(used)
    finally:
        gateway.stop()
    modes = {mode: {"requests_per_s": args.requests / statistics.median(values), "seconds_median": statistics.median(values),
                    "gateway_cpu_ms_per_request": statistics.median(cpu[mode]) * 1000 / args.requests}
             for mode, values in seconds.items()}
    return {"storage": storage, "modes": modes,
            "batch_vs_client_throughput": modes["batch"]["requests_per_s"] / modes["client"]["requests_per_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    runs = on_each_database_behind_a_mock("pitstop-bench-batches-", ["--delay-ms", str(args.delay_ms)],
                                          lambda storage, url, mock_url, work: _run(storage, url, mock_url, args, work))
    for run in runs:
        for mode, m in run["modes"].items():
            print(f"{run['storage']:10s} {mode:6s} {m['requests_per_s']:7.1f} requests/s  "
                  f"({m['seconds_median']:.2f} s for {args.requests})  gateway CPU {m['gateway_cpu_ms_per_request']:.2f} "
                  "ms a request", flush=True)
        print(f"{run['storage']:10s} batch/client throughput {run['batch_vs_client_throughput']:.2f}x", flush=True)
    write_report(args.out, {"command": command("bench.gateway_batches", argv), "machine": machine_info(),
                            "postgresql": server_version(), "delay_ms": args.delay_ms, "requests": args.requests,
                            "concurrency": CONCURRENCY, "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
