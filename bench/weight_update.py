"""What a new checkpoint costs an RL trainer's rollout server: `POST /update_weights_from_disk` on a running
`pitstop engine serve --allow-weight-updates` against restarting the server on the new folder, each timed
until the first answer of the new weights is back (a one-token completion).

Two random tiny models of the same shape (seeds 0 and 1) are written to a temporary folder; updates
alternate between them, and restarts alternate with updates so both see the same machine load. A
restart is timed from the launch to /healthz answering (polled every 0.2 s, bench/procs.py) plus the
first answer.

    .venv/bin/python -m bench.weight_update [--repeats 5] [--layers 8 --hidden 512 --vocab 32000]

Writes bench/results/weight_update.json."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import RESULTS, command, machine_info, write_report
from bench.procs import engine_serve, first_token

OUT = RESULTS / "weight_update.json"
SERVE_OPTIONS = ("--num-blocks", "256", "--allow-weight-updates")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    from engine.tiny_model import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="pitstop-weights-") as tmp, httpx.Client(timeout=300) as client:
        work = Path(tmp)
        models = [make_tiny_model(work / f"m{seed}", layers=args.layers, hidden=args.hidden, vocab_size=args.vocab,
                                  seed=seed) for seed in (0, 1)]
        size_mib = sum(f.stat().st_size for f in models[0].glob("*.safetensors")) / 2**20
        served, base = engine_serve(models[0], work, "served", *SERVE_OPTIONS)
        served.start(timeout_s=300)
        update_s: list[float] = []
        load_s: list[float] = []
        restart_s: list[float] = []
        try:
            firsts = {0: first_token(client, base)}
            for repeat in range(args.repeats):
                target = (repeat + 1) % 2
                t0 = time.perf_counter()
                update = client.post(f"{base}/update_weights_from_disk", json={"model_path": str(models[target])})
                update.raise_for_status()
                answer = first_token(client, base)
                update_s.append(time.perf_counter() - t0)
                load_s.append(update.json()["load_s"])
                firsts.setdefault(target, answer)
                assert answer == firsts[target], "an update must answer as the folder's weights do"
                restarted, restarted_base = engine_serve(models[target], work, f"restart{repeat}", *SERVE_OPTIONS)
                t0 = time.perf_counter()
                restarted.start(timeout_s=300)
                try:
                    assert first_token(client, restarted_base) == firsts[target]
                    restart_s.append(time.perf_counter() - t0)
                finally:
                    restarted.stop()
                print(f"repeat {repeat + 1}/{args.repeats}: update {update_s[-1]:.3f} s "
                      f"(load {load_s[-1]:.3f} s), restart {restart_s[-1]:.2f} s", flush=True)
        finally:
            served.stop()
    results = {"checkpoint_mib": round(size_mib, 1), "layers": args.layers, "hidden": args.hidden, "vocab": args.vocab,
               "update_to_first_answer_s": {"median": round(statistics.median(update_s), 4), "runs": update_s},
               "update_load_s": {"median": round(statistics.median(load_s), 4), "runs": load_s},
               "restart_to_first_answer_s": {"median": round(statistics.median(restart_s), 3), "runs": restart_s}}
    results["restart_over_update"] = round(results["restart_to_first_answer_s"]["median"] /  # type: ignore[index]
                                           results["update_to_first_answer_s"]["median"], 1)  # type: ignore[index]
    report = {"command": command("bench.weight_update", argv), "machine": machine_info(),
              "what": "seconds until the first answer of new weights: an update of the running server against a "
                      "restart on the new folder", "results": results}
    print(results)
    write_report(args.out, report)


if __name__ == "__main__":
    main()
