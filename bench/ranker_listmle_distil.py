"""Distilling the `listmle` family's in-budget size from its largest, side by side in one run.

    .venv/bin/python -m bench.ranker_listmle_distil [--teacher 6:128] [--student 3:32] [--unlabeled 3000]
    # ~45 min on 2 cores

The same protocol as bench/ranker_listmle.py (AlpacaEval's training prompts, 3-fold CV on them, the
held-out prompts scored once, int8 as served): per fold, a teacher (6 layers / 128 tokens, about 5x
over the 2 ms budget) is fine-tuned; then the student size (default 3 layers / 32 tokens; `--student 4:24` is the family's default) is
fine-tuned twice on the same prompts: plainly, and distilled (ListMLE on the true lengths plus a
squared error to the teacher's standardised head outputs, on the labelled prompts and on `unlabeled`
prompts without answers, rankers/unlabeled.py). Writes bench/results/rankers/listmle_distil.json."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, command, machine_info, write_report
from rankers.data import LengthData, load_lengths
from rankers.metrics import mean_tau, tau_per_model
from rankers.split import prompt_folds, split_by_prompt
from rankers.train_job import load_many
from rankers.unlabeled import unlabeled_prompts

OUT = RESULTS / "rankers" / "listmle_distil.json"


def tau(ranker: object, data: LengthData) -> float:
    return mean_tau(tau_per_model(data, ranker.score_batch(list(data.prompts), list(data.models))))


def run(train: LengthData, test: LengthData, teacher_size: str, student_size: str, pool: list[str]
        ) -> dict[str, float]:
    from rankers.listmle import ListMLERanker  # noqa: PLC0415

    def size(text: str) -> dict[str, int]:
        layers, max_tokens = (int(x) for x in text.split(":"))
        return {"layers": layers, "max_tokens": max_tokens}

    out, started = {}, time.perf_counter()
    teacher = ListMLERanker(None, **size(teacher_size)).fit(train)
    out["teacher"], out["teacher_fit_s"] = tau(teacher, test), time.perf_counter() - started
    started = time.perf_counter()
    out["student"] = tau(ListMLERanker(None, **size(student_size)).fit(train), test)
    out["student_fit_s"], started = time.perf_counter() - started, time.perf_counter()
    distilled = ListMLERanker(None, **size(student_size), teacher=teacher, unlabeled=pool).fit(train)
    out["distilled"], out["distilled_fit_s"] = tau(distilled, test), time.perf_counter() - started
    distilled.int8, distilled._scorer = False, None
    out["distilled_fp32"] = tau(distilled, test)
    print({k: round(v, 3) for k, v in out.items()}, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="6:128", help="layers:max_tokens")
    parser.add_argument("--student", default="3:32", help="layers:max_tokens")
    parser.add_argument("--unlabeled", type=int, default=3000, help="prompts without answers, for distillation")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    alpaca = load_lengths("alpaca_eval")
    train, test = split_by_prompt(alpaca)
    other_train, _ = split_by_prompt(load_many(["gsm8k", "routerbench"]))
    pool = unlabeled_prompts(args.unlabeled, exclude=alpaca.prompts.tolist(), extra=other_train.prompts.tolist())
    fold = prompt_folds(train, args.folds)
    cv = [run(train.rows(fold != k), train.rows(fold == k), args.teacher, args.student, pool)
          for k in range(args.folds)]
    held_out = run(train, test, args.teacher, args.student, pool)
    variants = ("teacher", "student", "distilled")
    report = {"command": command("bench.ranker_listmle_distil"), "machine": machine_info(),
              "data": "alpaca_eval training prompts (rankers/split.py); held-out AlpacaEval prompts",
              "train_prompts": len(train.unique_prompt_ids), "test_prompts": len(test.unique_prompt_ids),
              "teacher": args.teacher, "student": args.student, "unlabeled_prompts": len(pool),
              "cv_tau_mean": {v: float(np.mean([f[v] for f in cv])) for v in variants},
              "cv_folds": cv, "held_out": held_out}
    print({v: round(report["cv_tau_mean"][v], 3) for v in variants}, flush=True)
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
