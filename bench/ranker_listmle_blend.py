"""`listmle-blend`: the fine-tuned encoder and a cheap companion (`lambdarank`, or the `pitstop`
ensemble it replaced) blended, side by side with each alone in one run.

    .venv/bin/python -m bench.ranker_listmle_blend [--size 4:32] [--folds 3]   # ~10 min on 2 cores

The protocol of bench/ranker_listmle.py (AlpacaEval's training prompts, split by prompt; the held-out
prompts scored once, int8 as served). Selection: in each of 3 folds the encoder and both companions are
fitted on the fold's training prompts; each part's calibrated scores on the fold's prompts give the
cross-validated tau of every (companion, weight) on a grid (the blend's order is that of the weighted
mean: its own calibration is monotone). The best mean picks the family's default; the held-out prompts
then score the blend so chosen, each part alone, and (reported, not used) the rest of the grid. Cost:
`score(prompt, model)` on one thread, as bench/ranker_listmle.py times it, for each part and each blend.
The encoder is scored as served (ONNX Runtime int8), and its held-out tau on torch's int8 path is
reported beside. Writes bench/results/rankers/listmle_blend_companions.json (listmle_blend*.json beside it
are the runs of stops 14-16, with the `pitstop` companion alone)."""

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

OUT = RESULTS / "rankers" / "listmle_blend_companions.json"
GRID = [round(w, 2) for w in np.arange(0.0, 0.51, 0.05)]


COMPANIONS = ("lambdarank", "pitstop")


def fit_blend(data: LengthData, size: str, companion: str, weight: float):  # noqa: ANN201  (torch, lazily)
    from rankers.listmle import ListMLEBlendRanker  # noqa: PLC0415

    layers, max_tokens = (int(x) for x in size.split(":"))
    return ListMLEBlendRanker(make_featurizer("default"), companion=companion, companion_weight=weight,
                              layers=layers, max_tokens=max_tokens).fit(data)


def fit_parts(data: LengthData, size: str) -> dict:
    """The encoder once, and each companion, fitted on `data`: name -> fitted ranker."""
    from rankers.listmle import blend_companion  # noqa: PLC0415

    blend = fit_blend(data, size, COMPANIONS[0], 0.2)
    other = blend_companion(COMPANIONS[1], make_featurizer("default")).fit(data)
    return {"listmle": blend.parts[0], COMPANIONS[0]: blend.parts[1], COMPANIONS[1]: other}


def part_scores(parts: dict, data: LengthData) -> dict[str, np.ndarray]:
    prompts, models = list(data.prompts), list(data.models)
    return {name: part.score_batch(prompts, models) for name, part in parts.items()}


def grid_taus(scores: dict[str, np.ndarray], data: LengthData) -> dict[str, dict[float, float]]:
    return {companion: {w: mean_tau(tau_per_model(data, (1 - w) * scores["listmle"] + w * scores[companion]))
                        for w in GRID} for companion in COMPANIONS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4:32", help="the listmle part's layers:max_tokens")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    train, test, long_prompts = prepare()
    fold = prompt_folds(train, args.folds)
    folds = []
    for k in range(args.folds):
        started = time.perf_counter()
        held = train.rows(fold == k)
        folds.append(grid_taus(part_scores(fit_parts(train.rows(fold != k), args.size), held), held))
        for companion, grid in folds[-1].items():
            print(f"fold {k} {companion}: " + " ".join(f"{w}:{t:.3f}" for w, t in grid.items()), flush=True)
        print(f"fold {k}: {time.perf_counter() - started:.0f} s", flush=True)
    cv = {c: {w: float(np.mean([f[c][w] for f in folds])) for w in GRID} for c in COMPANIONS}
    companion, weight = max(((c, w) for c in COMPANIONS for w in GRID), key=lambda cw: cv[cw[0]][cw[1]])
    started = time.perf_counter()
    blend = fit_blend(train, args.size, companion, weight)
    fit_s = time.perf_counter() - started
    parts = {"listmle": blend.parts[0], companion: blend.parts[1]}
    from rankers.listmle import blend_companion  # noqa: PLC0415

    for other in COMPANIONS:
        if other != companion:
            parts[other] = blend_companion(other, make_featurizer("default")).fit(train)
    held_parts = part_scores(parts, test)
    held_grid = grid_taus(held_parts, test)
    held_out = mean_tau(tau_per_model(test, blend.score_batch(list(test.prompts), list(test.models))))
    # The same fitted encoder scored by torch's int8 path (rankers/lean_bert.py) instead of ONNX Runtime's.
    on_torch = copy.copy(blend.parts[0])
    on_torch.runtime, on_torch._scorer = "torch", None
    torch_scores = held_parts | {"listmle": on_torch.score_batch(list(test.prompts), list(test.models))}
    torch_grid = grid_taus(torch_scores, test)
    model, alpaca = test.model_names[0], list(dict.fromkeys(test.prompts.tolist()))
    blends = {"listmle-blend": blend}
    for other in COMPANIONS:
        if other != companion:
            twin = copy.copy(blend)
            twin.parts, twin.featurizer = [blend.parts[0], parts[other]], parts[other].featurizer
            twin.fit_raw = lambda data, features: None  # parts fitted: only its own calibration
            blends[f"listmle-blend ({other})"] = twin.fit(train)
    timed = parts | blends
    latency = {name: {"alpaca": cpu_ms(r, alpaca, model), "long_prompts": cpu_ms(r, long_prompts, model)}
               for name, r in timed.items()}
    print(f"{companion} at {weight}: cv {cv[companion][weight]:.3f} (listmle alone {cv[companion][0.0]:.3f}); "
          f"held out {held_out:.3f} (listmle alone {held_grid[companion][0.0]:.3f}); p99 " + ", ".join(
              f"{n} {v['alpaca']['p99_ms']:.2f} ms" for n, v in latency.items()), flush=True)
    report = {"command": command("bench.ranker_listmle_blend"), "machine": machine_info(),
              "data": "alpaca_eval training prompts (rankers/split.py); held-out AlpacaEval prompts",
              "size": args.size, "folds": args.folds, "train_prompts": len(train.unique_prompt_ids),
              "test_prompts": len(test.unique_prompt_ids), "weight_on_companion": "grid; 0 = listmle alone",
              "cv_tau_folds": folds, "cv_tau_mean": cv, "chosen": {"companion": companion, "weight": weight},
              "fit_s": fit_s, "heldout_tau_blend": held_out, "heldout_tau_grid": held_grid,
              "heldout_tau_alone": {name: mean_tau(tau_per_model(test, s)) for name, s in held_parts.items()},
              "scorer": "ONNX Runtime int8 (rankers/onnx_bert.py)",
              "heldout_tau_torch_int8_scorer": {"listmle": torch_grid[companion][0.0],
                                                "listmle-blend": torch_grid[companion][weight]},
              "latency_ms": latency}
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
