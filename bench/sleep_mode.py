"""What sleep mode gives an RL trainer colocated with its rollout server: `pitstop engine serve
--enable-sleep-mode --allow-weight-updates` put to sleep and woken, against a restart.

Memory: the server's resident memory (its process tree, /proc) awake, asleep at level 1 (the KV cache
freed; on this CPU the weights are host memory already and stay) and asleep at level 2 (the weights freed
too). Time: a level 1 sleep's wake-up until the first answer; a level 2 round as verl makes it (wake the
weights, POST /update_weights_from_disk with the other folder, wake the KV cache) until the first answer of
the new weights; a restart on that folder until its first answer (the launch to /healthz, polled every
0.2 s by bench/procs.py, plus the answer). Two random models of the same shape (seeds 0 and 1) take turns.

The host KV tier (`--host-tier-only`): two servers side by side, one with `--host-kv-memory` (1 GiB) and
one without, each slept at level 1 and woken in turns: their resident memory awake, asleep and after the
wake-up, and the seconds of the wake-up call itself (the tier's buffer allocated again, zeroed).

    .venv/bin/python -m bench.sleep_mode [--repeats 5] [--layers 8 --hidden 512 --vocab 32000] [--kv-cache 512MiB]
    .venv/bin/python -m bench.sleep_mode --host-tier-only [--host-kv 1GiB] [--repeats 5]

Writes bench/results/sleep_mode.json (bench/results/sleep_mode_host_tier.json with --host-tier-only)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import RESULTS, command, machine_info, write_report
from bench.procs import Service, engine_serve, first_token

OUT = RESULTS / "sleep_mode.json"
HOST_TIER_OUT = RESULTS / "sleep_mode_host_tier.json"
SERVE_OPTIONS = ("--enable-sleep-mode", "--allow-weight-updates")


def _server(model_dir: Path, work: Path, name: str, kv_cache: str, *options: str) -> tuple[Service, str]:
    return engine_serve(model_dir, work, name, *SERVE_OPTIONS, "--kv-cache-memory", kv_cache, *options)


def _post(client: httpx.Client, url: str, **kwargs: object) -> dict:
    response = client.post(url, **kwargs)  # type: ignore[arg-type]
    response.raise_for_status()
    return response.json()


def _median(values: list[float], digits: int = 4) -> dict:
    return {"median": round(statistics.median(values), digits), "runs": [round(v, digits) for v in values]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--kv-cache", default="512MiB", help="the server's --kv-cache-memory")
    parser.add_argument("--host-kv", default="1GiB", help="--host-tier-only: the server's --host-kv-memory")
    parser.add_argument("--host-tier-only", action="store_true", help="measure the host KV tier's release only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.host_tier_only:
        host_tier(args, argv)
        return
    from engine.tiny_model import make_tiny_model

    runs: dict[str, list[float]] = {name: [] for name in (
        "rss_awake_mib", "rss_level1_mib", "rss_level2_mib", "level1_sleep_s", "level1_wake_to_first_answer_s",
        "level2_sleep_s", "level2_round_to_first_answer_s", "restart_to_first_answer_s")}
    released: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="pitstop-sleep-") as tmp, httpx.Client(timeout=300) as client:
        work = Path(tmp)
        models = [make_tiny_model(work / f"m{seed}", layers=args.layers, hidden=args.hidden, vocab_size=args.vocab,
                                  seed=seed) for seed in (0, 1)]
        size_mib = sum(f.stat().st_size for f in models[0].glob("*.safetensors")) / 2**20
        served, base = _server(models[0], work, "served", args.kv_cache)
        served.start(timeout_s=300)
        try:
            firsts = {0: first_token(client, base)}
            for repeat in range(args.repeats):
                runs["rss_awake_mib"].append(served.rss_mib() or 0.0)
                t0 = time.perf_counter()
                _post(client, f"{base}/sleep?level=1")
                runs["level1_sleep_s"].append(time.perf_counter() - t0)
                runs["rss_level1_mib"].append(served.rss_mib() or 0.0)
                t0 = time.perf_counter()
                _post(client, f"{base}/wake_up")
                first_token(client, base)
                runs["level1_wake_to_first_answer_s"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                released = _post(client, f"{base}/sleep?level=2")["released_bytes"]
                runs["level2_sleep_s"].append(time.perf_counter() - t0)
                runs["rss_level2_mib"].append(served.rss_mib() or 0.0)
                target = (repeat + 1) % 2
                t0 = time.perf_counter()
                _post(client, f"{base}/wake_up?tags=weights")
                _post(client, f"{base}/update_weights_from_disk", json={"model_path": str(models[target])})
                _post(client, f"{base}/wake_up?tags=kv_cache")
                answer = first_token(client, base)
                runs["level2_round_to_first_answer_s"].append(time.perf_counter() - t0)
                assert answer == firsts.setdefault(target, answer), "a round must answer as the folder's weights do"
                restarted, restarted_base = _server(models[target], work, f"restart{repeat}", args.kv_cache)
                t0 = time.perf_counter()
                restarted.start(timeout_s=300)
                try:
                    assert first_token(client, restarted_base) == firsts[target]
                    runs["restart_to_first_answer_s"].append(time.perf_counter() - t0)
                finally:
                    restarted.stop()
                print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in runs.items()),
                      flush=True)
        finally:
            served.stop()
    results: dict = {"checkpoint_mib": round(size_mib, 1), "layers": args.layers, "hidden": args.hidden,
                     "vocab": args.vocab, "kv_cache": args.kv_cache,
                     "released_mib_level2": {tag: round(n / 2**20, 1) for tag, n in released.items()},
                     **{name: _median(values, 1 if name.startswith("rss") else 4) for name, values in runs.items()}}
    results["restart_over_level2_round"] = round(results["restart_to_first_answer_s"]["median"]
                                                 / results["level2_round_to_first_answer_s"]["median"], 1)
    report = {"command": command("bench.sleep_mode", argv), "machine": machine_info(),
              "what": "a rollout server's resident memory awake and asleep (levels 1 and 2), and the seconds until "
                      "its first answer after a wake-up (level 1) or a level 2 round with new weights, against a "
                      "restart on the new folder", "results": results}
    print(results)
    write_report(args.out or OUT, report)


def host_tier(args: argparse.Namespace, argv: list[str] | None) -> None:
    """Level 1 sleeps and wake-ups of a server with a host KV tier and one without, in turns."""
    from engine.tiny_model import make_tiny_model

    setups = {"host_tier": ("--host-kv-memory", args.host_kv), "no_host_tier": ()}
    runs: dict[str, dict[str, list[float]]] = {
        name: {key: [] for key in ("rss_awake_mib", "rss_asleep_mib", "rss_woken_mib", "wake_up_s",
                                   "wake_to_first_answer_s")} for name in setups}
    released: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="pitstop-sleep-") as tmp, httpx.Client(timeout=300) as client:
        work = Path(tmp)
        model = make_tiny_model(work / "m0", layers=args.layers, hidden=args.hidden, vocab_size=args.vocab, seed=0)
        servers = {name: _server(model, work, name, args.kv_cache, *options) for name, options in setups.items()}
        try:
            for service, base in servers.values():
                service.start(timeout_s=300)
                first_token(client, base)
            for repeat in range(args.repeats):
                for name, (service, base) in servers.items():
                    row = runs[name]
                    row["rss_awake_mib"].append(service.rss_mib() or 0.0)
                    released[name] = _post(client, f"{base}/sleep?level=1")["released_bytes"]
                    row["rss_asleep_mib"].append(service.rss_mib() or 0.0)
                    t0 = time.perf_counter()
                    _post(client, f"{base}/wake_up")
                    row["wake_up_s"].append(time.perf_counter() - t0)
                    first_token(client, base)
                    row["wake_to_first_answer_s"].append(time.perf_counter() - t0)
                    row["rss_woken_mib"].append(service.rss_mib() or 0.0)
                print(f"repeat {repeat + 1}/{args.repeats}: " + "; ".join(
                    f"{name} " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in row.items()) for name, row in runs.items()),
                    flush=True)
        finally:
            for service, _ in servers.values():
                service.stop()
    results: dict = {"layers": args.layers, "hidden": args.hidden, "vocab": args.vocab, "kv_cache": args.kv_cache,
                     "host_kv": args.host_kv}
    for name, row in runs.items():
        results[name] = {"released_mib": {tag: round(n / 2**20, 1) for tag, n in released[name].items()},
                         **{key: _median(values, 1 if key.startswith("rss") else 4) for key, values in row.items()}}
    results["wake_up_s_added_by_host_tier"] = round(results["host_tier"]["wake_up_s"]["median"]
                                                    - results["no_host_tier"]["wake_up_s"]["median"], 4)
    report = {"command": command("bench.sleep_mode", argv), "machine": machine_info(),
              "what": "the resident memory of a server with a host KV tier and one without, awake, asleep at level 1 "
                      "and woken, and the seconds of the wake-up call and until the first answer after it",
              "results": results}
    print(results)
    write_report(args.out or HOST_TIER_OUT, report)


if __name__ == "__main__":
    main()
