"""What the committed default ranker (`listmle-blend`: ONNX int8 encoder plus LambdaRank) costs a request
in the gateway, scored on the event loop or in a worker thread (`ranking.offload`, the default), beside
the committed cheap ranker and no ranking at all, side by side.

    .venv/bin/python -m bench.ranking_offload [--rates 25,50,100] [--duration 8] [--repeats 2]   # ~10 min

One gateway process per configuration (`pitstop serve`, SQLite outcome log) in front of the gateway
benchmark's mock upstream (20 ms a reply), non-streamed requests from its open-loop load generator,
each carrying the same RouterBench-sized prompt (it runs to the ranker's 32-token cap). The
configurations take turns at each rate, `repeats` times: the cheap ranker (rankers/artifacts/pitstop.joblib)
and the gateway's default artifact (rankers/artifacts/default.joblib), each with `ranking.offload` false
and true, all on a vLLM deployment (`hosted_vllm/mock`: the rank is its `priority`, so each request
waits for it); the default artifact on an API deployment (`openai/mock`: the rank is only logged, so it
is scored beside the call, `default-beside`); and ranking off. Reports latency p50 / p99 (ms, from the
scheduled send time) per configuration and rate, and the median over repeats. Writes
bench/results/rankers/ranking_offload.json. `--configs` picks others, e.g. the size of the ranking
thread pool (`ranking.threads`):

    .venv/bin/python -m bench.ranking_offload --configs default-offload,default-offload-1-thread,default-offload-6-threads,off \
        --out bench/results/rankers/ranking_threads.json"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench import pitstop_gateway
from bench.common import RESULTS, command, machine_info, write_report
from bench.gateway_targets import MODEL_INFO, ROOT, ROUTED_PROMPT, BenchConfig, Target, run_loadgen
from bench.procs import Service, free_port
from rankers.artifact import CHEAP_ARTIFACT, DEFAULT_ARTIFACT, read_manifest

OUT = RESULTS / "rankers" / "ranking_offload.json"
VLLM, API = "hosted_vllm/mock", "openai/mock"
# name -> (the gateway's `ranking:` section, its one deployment's litellm model)
CONFIGS: dict[str, tuple[dict[str, Any], str]] = {
    "cheap-inline": ({"artifact": str(CHEAP_ARTIFACT), "offload": False}, VLLM),
    "cheap-offload": ({"artifact": str(CHEAP_ARTIFACT), "offload": True}, VLLM),
    "default-inline": ({"offload": False}, VLLM),
    "default-offload": ({"offload": True}, VLLM),  # ranking.threads: the number of cores, at most 4
    "default-offload-1-thread": ({"offload": True, "threads": 1}, VLLM),
    "default-offload-6-threads": ({"offload": True, "threads": 6}, VLLM),  # asyncio's default pool on 2 cores
    "default-beside": ({"offload": True}, API),
    "off": ({"enabled": False}, VLLM),
}
DEFAULT_CONFIGS = "cheap-inline,cheap-offload,default-inline,default-offload,default-beside,off"


def gateway(work: Path, name: str, upstream: str, ranking: dict[str, Any], model: str) -> tuple[Service, str]:
    port = free_port()
    config = work / f"{name}.yaml"
    raw = pitstop_gateway.write_config(config, upstream, MODEL_INFO, f"sqlite:///{work / name}.db", port,
                                       work / f"{name}-spool.jsonl", model=model)
    config.write_text(yaml.safe_dump(raw | {"ranking": ranking}, sort_keys=False))
    service = pitstop_gateway.service(config, port, work / f"{name}.log", work)
    service.start(timeout_s=180)
    return service, f"http://127.0.0.1:{port}/v1/chat/completions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="25,50,100", help="requests per second, comma-separated")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    cfg = BenchConfig(duration_s=args.duration, prompt=ROUTED_PROMPT)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="pitstop-offload-") as tmp:
        work = Path(tmp)
        configs = {name: CONFIGS[name] for name in args.configs.split(",")}
        port = free_port()
        mock = Service("mock", [sys.executable, "-m", "bench.mock_upstream", "--port", str(port), "--delay-ms", "20"],
                       f"http://127.0.0.1:{port}/health", work / "mock.log", env={"PYTHONPATH": str(ROOT)}, cwd=ROOT)
        mock.start(timeout_s=60)
        services = {}
        try:
            for name, (ranking, model) in configs.items():
                services[name] = gateway(work, name, f"http://127.0.0.1:{port}/v1", ranking, model)
            for _ in range(args.repeats):
                for rate in rates:
                    for name, (service, url) in services.items():
                        service.settle()
                        run = run_loadgen(cfg, Target(name, url, {}, service), rate, stream=False)
                        latency = run["latency_ms"]
                        row = {"rate": rate, "ok": run["ok"], "errors": run["errors"],
                               "p50_ms": latency["p50"], "p99_ms": latency["p99"]}
                        results.setdefault(name, {}).setdefault(str(rate), []).append(row)
                        print(name, row, flush=True)
        finally:
            for service, _ in services.values():
                service.stop()
            mock.stop()
    summary = {name: {rate: {k: float(np.median([r[k] for r in rows])) for k in ("p50_ms", "p99_ms")}
                      for rate, rows in by_rate.items()} for name, by_rate in results.items()}
    report = {"command": command("bench.ranking_offload"), "machine": machine_info(), "prompt": ROUTED_PROMPT,
              "artifacts": {name: {"path": str(path.relative_to(ROOT)), "family": manifest["family"], "version": manifest["version"]}
                            for name, path in (("cheap", CHEAP_ARTIFACT), ("default", DEFAULT_ARTIFACT))
                            for manifest in [read_manifest(path)]},
              "deployments": {name: model for name, (_, model) in configs.items()}, "upstream_delay_ms": 20, "duration_s": args.duration, "repeats": args.repeats,
              "median_over_repeats": summary, "runs": results}
    print(yaml.safe_dump(summary, sort_keys=False))
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
