"""What loading the default ranker costs a gateway's start, as gateway/ranking.py does it: the artifact
read (`load_ranker`) and the warm-up score that gives the `listmle` encoder its ONNX Runtime session,
each in a fresh interpreter, seconds apiece, and whether `onnx` was imported (a build) or not (the graph
came from rankers/onnx_cache.py's cache, which a first launch of this checkout fills).

    .venv/bin/python -m bench.ranker_load [--repeats 5] [--baseline DIR]

`--baseline DIR` times another checkout (e.g. `git worktree add /tmp/base HEAD~1`) with the same
virtualenv, alternating with this one launch by launch. Writes bench/results/ranker_load.json."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import RESULTS, ROOT, command, machine_info, write_report

OUT = RESULTS / "ranker_load.json"
SCRIPT = """import json, sys, time
started = time.perf_counter()
from rankers.artifact import DEFAULT_ARTIFACT, load_ranker
ranker = load_ranker(DEFAULT_ARTIFACT)
loaded = time.perf_counter()
ranker.score("warm up", "")
print(json.dumps({"load_s": loaded - started, "warm_s": time.perf_counter() - loaded,
                  "onnx_imported": "onnx" in sys.modules}))"""


def _launch(source: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=source, capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout, timed alternately with this one")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    sources = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    _launch(ROOT)  # a first launch fills this checkout's graph cache, as a gateway's first start does
    runs: dict[str, list[dict]] = {name: [] for name in sources}
    for repeat in range(args.repeats):
        for name, source in sources.items():
            runs[name].append(_launch(source))
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{name} {r[-1]['load_s']:.2f} + {r[-1]['warm_s']:.2f} s" for name, r in runs.items()), flush=True)
    results: dict[str, dict] = {}
    for name, rows in runs.items():
        results[name] = {key: statistics.median(r[key] for r in rows) for key in ("load_s", "warm_s")}
        results[name]["total_s"] = statistics.median(r["load_s"] + r["warm_s"] for r in rows)
        results[name]["onnx_imported"] = sorted({r["onnx_imported"] for r in rows})
    if args.baseline:
        results["baseline_over_this"] = {key: results["baseline"][key] / results["this"][key]
                                         for key in ("warm_s", "total_s")}
    report = {"command": command("bench.ranker_load", argv), "machine": machine_info(),
              "what": "medians of seconds to load the default ranker and to score its warm-up prompt, fresh interpreters",
              "baseline": str(args.baseline) if args.baseline else None, "results": results, "runs": runs}
    print(json.dumps(results, indent=2))
    write_report(args.out, report)


if __name__ == "__main__":
    main()
