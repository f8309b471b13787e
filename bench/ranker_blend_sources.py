"""A trained `listmle-blend` artifact by source: each part alone, the blend, and the encoder with its ties
broken at random, on the held-out prompts of the split it was trained on.

    pitstop train ranker --family listmle-blend --out var/rankers/listmle-blend.joblib   # ~9 min, 2 cores
    .venv/bin/python -m bench.ranker_blend_sources var/rankers/listmle-blend.joblib       # ~1 min

Why the random tie-break: the encoder reads only the prompt's first tokens, and many RouterBench prompts
share their first tokens (few-shot preambles), so it scores them alike. Kendall's tau-b (the issue's
metric) counts such ties better than any order it cannot fully get right, although a scheduler serves a
tie first-come-first-served, no better than a random order on average. Writes
bench/results/rankers/listmle_blend_sources.json."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.common import RESULTS, command, machine_info, write_report
from rankers.artifact import load_ranker
from rankers.metrics import mean_tau, tau_per_model
from rankers.split import split_by_prompt
from rankers.train_job import load_many

OUT = RESULTS / "rankers" / "listmle_blend_sources.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, help="a listmle-blend artifact (pitstop train ranker)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    blend = load_ranker(args.artifact)
    if blend.family != "listmle-blend":
        parser.error(f"{args.artifact} holds a {blend.family!r} ranker, not listmle-blend")
    training = blend.manifest["training_data"]
    _, test = split_by_prompt(load_many(training["datasets"]), training["test_fraction"])
    prompts, models = list(test.prompts), list(test.models)
    encoder, cheap = (part.score_batch(prompts, models) for part in blend.parts)
    scores = {"listmle": encoder, blend.parts[1].family: cheap, "listmle-blend": blend.score_batch(prompts, models),
              "listmle, ties broken at random": encoder + np.random.default_rng(0).random(len(test)) * 1e-9}
    sources = np.array([p.split(".", 1)[0] for p in test.prompt_ids])
    rows = {}
    for source in [*np.unique(sources).tolist(), "all"]:
        mask = np.ones(len(test), bool) if source == "all" else sources == source
        part = test.rows(mask)
        rows[source] = {name: mean_tau(tau_per_model(part, s[mask])) for name, s in scores.items()}
        rows[source]["listmle_tied_share"] = float(1 - len(np.unique(encoder[mask])) / mask.sum())
        print(source, {k: round(v, 3) for k, v in rows[source].items()}, flush=True)
    report = {"command": command("bench.ranker_blend_sources"), "machine": machine_info(),
              "artifact": str(args.artifact), "version": blend.version, "weights": list(blend.weights or ()),
              "test_prompts": len(test.unique_prompt_ids), "tau_mean_by_source": rows}
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
