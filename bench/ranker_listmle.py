"""vllm-ltr's method on this data: MiniLM fine-tuned with ListMLE (`listmle`, rankers/listmle.py),
beside the committed default family (`pitstop`, cheap features), side by side in one run.

    .venv/bin/python -m bench.ranker_listmle [--variants 6:128,4:32,3:32] [--folds 3]   # ~30 min on 2 cores

Protocol (as `pitstop eval ranker`, rankers/evaluate.py): AlpacaEval's training prompts only (the
headline's source; the other two would multiply the fine-tuning time), split by prompt. Selection:
k-fold cross-validation on the training prompts; the held-out prompts are scored once per variant,
after the variants were fixed (6 layers / 128 tokens / 16 epochs; 4 and 3 layers / 32 tokens, the
sizes whose int8 encoder measured near 2 ms p99 a request before any of them was trained). Scores
come from the int8 encoder the family serves with; held-out tau is also given in fp32. Cost:
`score(prompt, model)` one request at a time on one thread, int8 and fp32, on held-out AlpacaEval
prompts and on long RouterBench prompts (truncation bounds the transformer's work). Writes
bench/results/rankers/listmle.json."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, command, machine_info, write_report
from rankers.base import Ranker
from rankers.data import LengthData, load_lengths
from rankers.families import make_ranker
from rankers.metrics import mean_tau, tau_per_model
from rankers.split import prompt_folds, split_by_prompt
from rankers.train_job import make_featurizer

OUT = RESULTS / "rankers" / "listmle.json"


def build(variant: str) -> Ranker:
    if variant == "pitstop":
        return make_ranker("pitstop", make_featurizer("default"))
    from rankers.listmle import ListMLERanker  # noqa: PLC0415

    layers, max_tokens = (int(x) for x in variant.split(":"))
    return ListMLERanker(None, layers=layers, max_tokens=max_tokens)


def taus(ranker: Ranker, data: LengthData) -> dict[str, float]:
    return tau_per_model(data, ranker.score_batch(list(data.prompts), list(data.models)))


def cpu_ms(ranker: Ranker, prompts: list[str], model: str) -> dict[str, float]:
    """This thread's CPU time per request, torch on this one thread (a dedicated core's view)."""
    import torch  # noqa: PLC0415

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for prompt in prompts[:20]:
        ranker.score(prompt, model)
    times = []
    for prompt in prompts:
        started = time.thread_time()
        ranker.score(prompt, model)
        times.append((time.thread_time() - started) * 1e3)
    torch.set_num_threads(threads)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)), "requests": len(times)}


def measure(variant: str, train: LengthData, test: LengthData, long_prompts: list[str], folds: int) -> dict:
    fold = prompt_folds(train, folds)
    cv = []
    for k in range(folds):
        started = time.perf_counter()
        cv.append(mean_tau(taus(build(variant).fit(train.rows(fold != k)), train.rows(fold == k))))
        print(f"{variant}: fold {k}: tau {cv[-1]:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    started = time.perf_counter()
    ranker = build(variant).fit(train)
    fit_s = time.perf_counter() - started
    held_out = taus(ranker, test)
    model, alpaca = test.model_names[0], list(dict.fromkeys(test.prompts.tolist()))
    row = {"variant": variant, "cv_tau_folds": cv, "cv_tau_mean": float(np.mean(cv)), "fit_s": fit_s,
           "heldout_tau_mean": mean_tau(held_out), "heldout_tau": held_out,
           "latency_alpaca": cpu_ms(ranker, alpaca, model), "latency_long_prompts": cpu_ms(ranker, long_prompts, model)}
    if getattr(ranker, "int8", False):  # the same fine-tuned weights scored in fp32, for comparison
        ranker.int8, ranker._scorer = False, None
        row |= {"heldout_tau_mean_fp32": mean_tau(taus(ranker, test)),
                "latency_alpaca_fp32": cpu_ms(ranker, alpaca, model),
                "latency_long_prompts_fp32": cpu_ms(ranker, long_prompts, model)}
    print(f"{variant}: cv {row['cv_tau_mean']:.3f}, held out {row['heldout_tau_mean']:.3f}, p99 "
          f"{row['latency_alpaca']['p99_ms']:.2f} / {row['latency_long_prompts']['p99_ms']:.2f} ms", flush=True)
    return row


def prepare() -> tuple[LengthData, LengthData, list[str]]:
    """Torch on both cores for training (scoring is timed on one); AlpacaEval's training and held-out
    prompts; the 200 longest held-out RouterBench prompts (the token cap's worst case)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch  # noqa: PLC0415

    torch.set_num_threads(2)
    train, test = split_by_prompt(load_lengths("alpaca_eval"))
    _, routerbench_test = split_by_prompt(load_lengths("routerbench"))
    return train, test, sorted(set(routerbench_test.prompts.tolist()), key=len)[-200:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="6:128,4:32,3:32", help="listmle layers:max_tokens, comma-separated")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    train, test, long_prompts = prepare()
    rows = []
    for variant in ["pitstop", *args.variants.split(",")]:
        rows.append(measure(variant, train, test, long_prompts, args.folds))
    report = {"command": command("bench.ranker_listmle"), "machine": machine_info(),
              "data": "alpaca_eval training prompts (rankers/split.py); held-out AlpacaEval prompts",
              "train_prompts": len(train.unique_prompt_ids), "test_prompts": len(test.unique_prompt_ids),
              "folds": args.folds, "listmle": {"epochs": 16, "lr": 3e-5, "batch_size": 32}, "results": rows}
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
