"""Request-path cost of the committed ranker: `score(prompt, model)` one request at a time.

    .venv/bin/python -m bench.ranker_latency [--requests 1000] [--artifact rankers/artifacts/pitstop.joblib]

Held-out prompts of every source (AlpacaEval, GSM8K, RouterBench), each scored once after a warm-up
pass. Timed on the wall clock and on this thread's CPU time (one thread: on a shared machine the CPU
time is what a dedicated core would show). Writes bench/results/rankers/latency.json."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, command, machine_info  # noqa: E402

OUT = RESULTS / "rankers" / "latency.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--artifact", type=Path, default=None, help="default: the committed default ranker")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from rankers.artifact import DEFAULT_ARTIFACT, load_ranker  # noqa: PLC0415
    from rankers.split import split_by_prompt  # noqa: PLC0415
    from rankers.train_job import load_many  # noqa: PLC0415

    _, test = split_by_prompt(load_many(["alpaca_eval", "gsm8k", "routerbench"]))
    rng = np.random.default_rng(0)
    rows = rng.choice(len(test), size=min(args.requests, len(test)), replace=False)
    artifact = args.artifact or DEFAULT_ARTIFACT
    ranker = load_ranker(artifact)
    for i in rows[:50]:
        ranker.score(test.prompts[i], test.models[i])
    wall, cpu = [], []
    for i in rows:
        w, c = time.perf_counter(), time.thread_time()
        ranker.score(test.prompts[i], test.models[i])
        cpu.append((time.thread_time() - c) * 1e3)
        wall.append((time.perf_counter() - w) * 1e3)
    report = {"command": command("bench.ranker_latency"), "machine": machine_info(),
              "artifact": str(artifact.name), "family": ranker.family, "version": ranker.version,
              "requests": len(rows),
              "mean_prompt_chars": float(np.mean([len(test.prompts[i]) for i in rows])),
              **{f"{name}_{q}_ms": float(np.percentile(v, int(q[1:]))) for name, v in (("cpu", cpu), ("wall", wall))
                 for q in ("p50", "p90", "p99")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
