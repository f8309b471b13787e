"""Request-path cost of the `listmle` family's sizes and scorers, side by side: `score(prompt, model)`
one request at a time on one thread, for each size on ONNX Runtime int8 (as served,
rankers/onnx_bert.py), on torch int8 and fp32 (rankers/lean_bert.py), and as `listmle-blend` (ONNX
Runtime int8 plus its cheap companion, fitted on all training prompts: `blend` with `lambdarank`, the
family's companion since stop 17, and `blend-pitstop` with the `pitstop` ensemble of before).

    .venv/bin/python -m bench.ranker_listmle_latency [--variants 4:24,4:32] [--passes 3]   # ~4 min

The cost of a forward pass does not depend on the weights' values, so each size is fitted for one
epoch on 64 training prompts (seconds) instead of its full fine-tuning; bench/ranker_listmle.py
measures quality. Held-out prompts of every source (AlpacaEval, GSM8K, RouterBench), the variants
taking turns by blocks of 50 requests, so that machine noise falls on all of them alike while each
stays warm in the caches as a gateway's one ranker would (request-by-request turns would evict each
model's weights between calls; each turn starts with 5 untimed requests to warm them), in `passes` passes;
per variant the p50 / p99 of this thread's CPU time over all requests of all passes, and each pass's
p99. Writes bench/results/rankers/listmle_latency_onnx.json (listmle_latency.json and
listmle_latency_*xeon.json are the torch-only runs of stops 13-15)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, command, machine_info, write_report
from rankers.base import Ranker
from rankers.data import LengthData

OUT = RESULTS / "rankers" / "listmle_latency_onnx.json"
BLOCK, WARM = 50, 5


def build_rankers(train: LengthData, variants: list[str], scorers: list[str]) -> dict[str, Ranker]:
    """Each size fitted once (one epoch, 64 prompts), then scored by each scorer on those weights."""
    from rankers.listmle import ListMLEBlendRanker, ListMLERanker, blend_companion  # noqa: PLC0415
    from rankers.train_job import make_featurizer  # noqa: PLC0415

    sample = train.rows(np.isin(train.prompt_ids, np.unique(train.prompt_ids)[:64]))
    companions = {scorer: scorer.partition("-")[2] or "lambdarank" for scorer in scorers if scorer.startswith("blend")}
    cheap = {scorer: blend_companion(companion, make_featurizer("default")).fit(train)
             for scorer, companion in companions.items()}
    rankers: dict[str, Ranker] = {}
    for variant in variants:
        layers, max_tokens = (int(x) for x in variant.split(":"))
        fitted = ListMLERanker(None, layers=layers, max_tokens=max_tokens, epochs=1).fit(sample)
        for scorer in scorers:
            runtime, _, precision = scorer.partition("-")
            ranker = ListMLERanker(None, layers=layers, max_tokens=max_tokens, epochs=1,
                                   runtime="onnx" if runtime == "blend" else runtime, int8=precision != "fp32")
            ranker.__dict__.update({k: v for k, v in fitted.__dict__.items() if k not in ("int8", "runtime", "_scorer")})
            if scorer in companions:
                blend = ListMLEBlendRanker(make_featurizer("default"), companion=companions[scorer],
                                           layers=layers, max_tokens=max_tokens)
                blend.parts = [ranker, cheap[scorer]]
                blend.fit_raw = lambda data, features: None  # parts fitted: only the blend's calibration
                ranker = blend.fit(sample)
            rankers[f"{variant} {scorer}"] = ranker
    return rankers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="4:24,4:32", help="layers:max_tokens, comma-separated")
    parser.add_argument("--scorers", default="onnx-int8,torch-int8,torch-fp32,blend,blend-pitstop",
                        help="comma-separated: onnx-int8, onnx-fp32, torch-int8, torch-fp32, blend, blend-pitstop")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch  # noqa: PLC0415

    from rankers.split import split_by_prompt  # noqa: PLC0415
    from rankers.train_job import load_many  # noqa: PLC0415

    train, test = split_by_prompt(load_many(["alpaca_eval", "gsm8k", "routerbench"]))
    rankers = build_rankers(train, args.variants.split(","), args.scorers.split(","))
    torch.set_num_threads(1)
    rows = np.random.default_rng(0).choice(len(test), size=min(args.requests, len(test)), replace=False)
    for ranker in rankers.values():
        for i in rows[:20]:
            ranker.score(test.prompts[i], test.models[i])
    times: dict[str, list[list[float]]] = {name: [] for name in rankers}
    for _ in range(args.passes):
        for series in times.values():
            series.append([])
        for block in range(0, len(rows), BLOCK):
            for name, ranker in rankers.items():
                for i in rows[block:block + WARM]:
                    ranker.score(test.prompts[i], test.models[i])
                for i in rows[block:block + BLOCK]:
                    started = time.thread_time()
                    ranker.score(test.prompts[i], test.models[i])
                    times[name][-1].append((time.thread_time() - started) * 1e3)
    results = {name: {"p50_ms": float(np.percentile(np.concatenate(passes), 50)),
                      "p99_ms": float(np.percentile(np.concatenate(passes), 99)),
                      "p99_ms_per_pass": [float(np.percentile(p, 99)) for p in passes]}
               for name, passes in times.items()}
    report = {"command": command("bench.ranker_listmle_latency"), "machine": machine_info(),
              "requests": len(rows), "passes": args.passes,
              "mean_prompt_chars": float(np.mean([len(test.prompts[i]) for i in rows])), "results": results}
    for name, row in results.items():
        print(f"{name}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms", flush=True)
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
