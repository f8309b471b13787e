"""`listmle-blend`: the fine-tuned encoder and the cheap `pitstop` ensemble blended, side by side with
each alone in one run.

    .venv/bin/python -m bench.ranker_listmle_blend [--size 4:24] [--folds 3]   # ~5 min on 2 cores

The protocol of bench/ranker_listmle.py (AlpacaEval's training prompts, split by prompt; the held-out
prompts scored once, int8 as served). Selection: in each of 3 folds the blend is fitted, which fits both
parts; each part's calibrated scores on the fold's prompts give the cross-validated tau of every weight
on a grid (the blend's order is that of the weighted mean: its own calibration is monotone). The weight
with the best mean is the family's default; the held-out prompts then score the blend at that weight,
each part alone, and (reported, not used) the rest of the grid. Cost: `score(prompt, model)` on one
thread, as bench/ranker_listmle.py times it, for each part and the blend. The encoder is scored as
served (ONNX Runtime int8), and its held-out tau on torch's int8 path is reported beside. Writes
bench/results/rankers/listmle_blend.json."""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, command, machine_info, write_report
from bench.ranker_listmle import cpu_ms, prepare
from rankers.data import LengthData
from rankers.metrics import mean_tau, tau_per_model
from rankers.split import prompt_folds
from rankers.train_job import make_featurizer

OUT = RESULTS / "rankers" / "listmle_blend.json"
GRID = [round(w, 2) for w in np.arange(0.0, 0.51, 0.05)]


def fit_blend(data: LengthData, size: str, weight: float):  # noqa: ANN201  (torch, imported lazily)
    from rankers.listmle import ListMLEBlendRanker  # noqa: PLC0415

    layers, max_tokens = (int(x) for x in size.split(":"))
    return ListMLEBlendRanker(make_featurizer("default"), companion_weight=weight, layers=layers,
                              max_tokens=max_tokens).fit(data)


def part_scores(blend: object, data: LengthData) -> list[np.ndarray]:
    prompts, models = list(data.prompts), list(data.models)
    return [part.score_batch(prompts, models) for part in blend.parts]  # type: ignore[attr-defined]


def grid_taus(parts: list[np.ndarray], data: LengthData) -> dict[float, float]:
    encoder, cheap = parts
    return {w: mean_tau(tau_per_model(data, (1 - w) * encoder + w * cheap)) for w in GRID}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4:24", help="the listmle part's layers:max_tokens")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    train, test, long_prompts = prepare()
    fold = prompt_folds(train, args.folds)
    folds = []
    for k in range(args.folds):
        started = time.perf_counter()
        held = train.rows(fold == k)
        folds.append(grid_taus(part_scores(fit_blend(train.rows(fold != k), args.size, 0.25), held), held))
        print(f"fold {k}: " + " ".join(f"{w}:{t:.3f}" for w, t in folds[-1].items())
              + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    cv = {w: float(np.mean([f[w] for f in folds])) for w in GRID}
    chosen = max(GRID, key=lambda w: cv[w])
    started = time.perf_counter()
    blend = fit_blend(train, args.size, chosen)
    fit_s = time.perf_counter() - started
    held_parts = part_scores(blend, test)
    held_grid = grid_taus(held_parts, test)
    held_out = mean_tau(tau_per_model(test, blend.score_batch(list(test.prompts), list(test.models))))
    # The same fitted encoder scored by torch's int8 path (rankers/lean_bert.py) instead of ONNX Runtime's.
    on_torch = copy.copy(blend.parts[0])
    on_torch.runtime, on_torch._scorer = "torch", None
    torch_grid = grid_taus([on_torch.score_batch(list(test.prompts), list(test.models)), held_parts[1]], test)
    model, alpaca = test.model_names[0], list(dict.fromkeys(test.prompts.tolist()))
    names = {"listmle": blend.parts[0], "pitstop": blend.parts[1], "listmle-blend": blend}
    latency = {name: {"alpaca": cpu_ms(r, alpaca, model), "long_prompts": cpu_ms(r, long_prompts, model)}
               for name, r in names.items()}
    print(f"weight {chosen}: cv {cv[chosen]:.3f} (listmle alone {cv[0.0]:.3f}); held out {held_out:.3f} "
          f"(listmle alone {held_grid[0.0]:.3f}); p99 " + ", ".join(
              f"{n} {v['alpaca']['p99_ms']:.2f} ms" for n, v in latency.items()), flush=True)
    report = {"command": command("bench.ranker_listmle_blend"), "machine": machine_info(),
              "data": "alpaca_eval training prompts (rankers/split.py); held-out AlpacaEval prompts",
              "size": args.size, "folds": args.folds, "train_prompts": len(train.unique_prompt_ids),
              "test_prompts": len(test.unique_prompt_ids), "weight_on_pitstop": "grid; 0 = listmle alone",
              "cv_tau_folds": folds, "cv_tau_mean": cv, "chosen_weight": chosen, "fit_s": fit_s,
              "heldout_tau_blend": held_out, "heldout_tau_grid": held_grid,
              "heldout_tau_pitstop_alone": mean_tau(tau_per_model(test, held_parts[1])),
              "scorer": "ONNX Runtime int8 (rankers/onnx_bert.py)",
              "heldout_tau_torch_int8_scorer": {"listmle": torch_grid[0.0], "listmle-blend": torch_grid[chosen]},
              "latency_ms": latency}
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
