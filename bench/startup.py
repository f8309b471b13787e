"""How long Pitstop's servers take to start: seconds from the process's launch to their health
endpoint answering, for

  engine            `pitstop engine serve --model M` on a tiny local model (4 layers, hidden 128)
  gateway-embedded  `pitstop serve` on the embedded default (config/pitstop.yaml: two in-process engines,
                    the default ranker), its route group on the tier prior so that no router trains in
                    the background while the others are timed
  gateway-upstream  `pitstop serve` with one model behind an OpenAI-compatible URL, ranking off

    .venv/bin/python -m bench.startup [--repeats 5] [--baseline DIR]

`--baseline DIR` times another checkout of the repository (e.g. `git worktree add /tmp/base HEAD~1`) with
the same virtualenv, alternating with this one launch by launch, so both see the same machine load.
Writes bench/results/startup.json."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

from bench.common import RESULTS, ROOT, command, machine_info, write_report
from bench.procs import Service, free_port

OUT = RESULTS / "startup.json"
TARGETS = ("engine", "gateway-embedded", "gateway-upstream")


def _embedded_config(work: Path) -> Path:
    """config/pitstop.yaml with its paths under `work` and its route group on the tier prior."""
    raw = yaml.safe_load((ROOT / "config" / "pitstop.yaml").read_text())
    for group in raw.get("route_groups", []):
        for key in ("router_artifact", "train_data"):
            group.pop(key, None)
        group["router"] = "tier-prior"
    path = work / "embedded.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _upstream_config(work: Path) -> Path:
    raw = {"model_list": [{"model_name": "m", "litellm_params": {"model": "hosted_vllm/m",
                                                                 "api_base": "http://127.0.0.1:9/v1"}}],
           "storage": {"url": f"sqlite:///{work / 'upstream.db'}", "spool_path": str(work / "spool.jsonl")},
           "ranking": {"enabled": False}}
    path = work / "upstream.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _service(target: str, source: Path, work: Path, configs: dict[str, Path], model_dir: Path) -> Service:
    """The target's server from checkout `source`, run in `work` (where relative `var/` paths land)."""
    port = free_port()
    base = [sys.executable, "-m", "gateway.cli"]
    if target == "engine":
        argv = [*base, "engine", "serve", "--model", str(model_dir), "--port", str(port)]
    else:
        argv = [*base, "serve", "--config", str(configs[target]), "--port", str(port), "--log-level", "warning"]
    return Service(target, argv, f"http://127.0.0.1:{port}/healthz", work / f"{target}.log", cwd=work,
                   env={"PYTHONPATH": str(source), "LITELLM_LOCAL_MODEL_COST_MAP": "True"})


def _time_start(service: Service) -> float:
    service.start(timeout_s=300)
    try:
        assert service.started_s is not None
        return service.started_s
    finally:
        service.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout, timed alternately with this one")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    sources = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    with tempfile.TemporaryDirectory(prefix="pitstop-startup-") as tmp:
        work = Path(tmp)
        from engine.tiny_model import make_tiny_model

        model_dir = make_tiny_model(work / "tiny", layers=4, hidden=128)
        configs = {"gateway-embedded": _embedded_config(work), "gateway-upstream": _upstream_config(work)}
        seconds: dict[str, dict[str, list[float]]] = {t: {s: [] for s in sources} for t in targets}
        for target in targets:  # a first launch each builds what the target builds once (models, the db)
            _time_start(_service(target, ROOT, work, configs, model_dir))
        for repeat in range(args.repeats):
            for target in targets:
                for name, source in sources.items():
                    seconds[target][name].append(_time_start(_service(target, source, work, configs, model_dir)))
            print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
                f"{t} {'/'.join(f'{seconds[t][s][-1]:.2f}' for s in sources)} s" for t in targets), flush=True)
    results = {t: {s: {"median_s": statistics.median(v), "min_s": min(v), "runs_s": v} for s, v in by.items()}
               for t, by in seconds.items()}
    if args.baseline:
        for by in results.values():
            by["baseline_over_this"] = by["baseline"]["median_s"] / by["this"]["median_s"]
    report = {"command": command("bench.startup", argv), "machine": machine_info(),
              "what": "seconds from a server's launch to its /healthz answering (polled every 0.2 s)",
              "baseline": str(args.baseline) if args.baseline else None, "results": results}
    print(yaml.safe_dump(results, sort_keys=False))
    write_report(args.out, report)


if __name__ == "__main__":
    main()
