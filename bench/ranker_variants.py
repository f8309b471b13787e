"""Ranker variants tried against the default `pitstop` ranker and rejected; the record of why.

Each is selected the way `pitstop eval ranker` selects: 5-fold cross-validation on the training
prompts only, Kendall's tau on AlpacaEval's models (the held-out prompts are reported, never used to
choose). Variants:
- `lambdarank-per-source`: LambdaRank queries and length grades per (model, data source) instead of
  per model, so the loss spends nothing on telling AlpacaEval from multiple-choice prompts;
- `lambdarank-ngrams`: LambdaRank on the hashed n-grams as well as the dense features;
- `lambdarank-stacked`: LambdaRank with the ridge's cross-fitted prediction as one more input;
- each also in the `pitstop` ensemble (mean with ridge).

    .venv/bin/python -m bench.ranker_variants    # ~6 min on one core; bench/results/rankers/variants.json"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bench.common import RESULTS, command, machine_info
from rankers.base import length_grades
from rankers.data import LengthData
from rankers.evaluate import Frame, _is_alpaca, cross_validated_tau
from rankers.families import FAMILIES, EnsembleRanker, LambdaRankRanker, RidgeRanker
from rankers.features import RankFeatures, RankFeaturizer
from rankers.metrics import mean_tau
from rankers.split import prompt_folds, split_mask
from rankers.train_job import load_many, make_featurizer


def _queries(rows_by_group: list[np.ndarray], size: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    order, groups = [], []
    for rows in rows_by_group:
        rows = rng.permutation(rows)
        for start in range(0, len(rows), size):
            order.append(rows[start:start + size])
            groups.append(len(order[-1]))
    return np.concatenate(order), groups


class PerSourceLambdaRank(LambdaRankRanker):
    family = "lambdarank-per-source"

    def fit_raw(self, data: LengthData, features: RankFeatures | None) -> None:
        assert features is not None
        source = np.array([p.split(".")[0] for p in data.prompt_ids], dtype=object)
        grades, groups_rows = np.zeros(len(data), dtype=np.int32), []
        for model in data.model_names:
            for name in sorted(set(source.tolist())):
                rows = np.flatnonzero((data.models == model) & (source == name))
                if len(rows) < 2:
                    continue
                rank = np.argsort(np.argsort(data.output_tokens[rows], kind="stable"), kind="stable")
                grades[rows] = (rank * 10) // len(rows)
                groups_rows.append(rows)
        index, groups = _queries(groups_rows, self.query_size, self.seed)
        self.model.fit(self._design(features.rows(index), list(data.models[index])), grades[index], group=groups)


class NgramLambdaRank(LambdaRankRanker):
    family = "lambdarank-ngrams"

    def _design(self, features: RankFeatures, models: list[str]) -> sp.csr_matrix:  # type: ignore[override]
        dense = sp.csr_matrix(super()._design(features, models))
        return dense if features.sparse is None else sp.hstack([dense, features.sparse]).tocsr()


class StackedLambdaRank(LambdaRankRanker):
    family = "lambdarank-stacked"

    def __init__(self, featurizer: RankFeaturizer) -> None:
        super().__init__(featurizer)
        self.ridge = RidgeRanker(featurizer)

    def fit_raw(self, data: LengthData, features: RankFeatures | None) -> None:
        assert features is not None
        folds, cross_fitted = prompt_folds(data, 5, salt="stack"), np.zeros(len(data))
        for k in range(5):
            train, held = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
            part = RidgeRanker(self.featurizer)
            part.fit_raw(data.rows(train), features.rows(train))
            cross_fitted[held] = part.raw_scores([], features.rows(held), [])
        self.ridge.fit_raw(data, features)
        index, groups = _queries([np.flatnonzero(data.models == m) for m in data.model_names], self.query_size,
                                 self.seed)
        design = np.hstack([super()._design(features.rows(index), list(data.models[index])),
                            cross_fitted[index, None].astype(np.float32)])
        self.model.fit(design, length_grades(data)[index], group=groups)

    def _design(self, features: RankFeatures, models: list[str]) -> np.ndarray:  # type: ignore[override]
        ridge = self.ridge.raw_scores([], features, models)
        return np.hstack([super()._design(features, models), ridge[:, None].astype(np.float32)])


def _ensemble(part: type[LambdaRankRanker]) -> type[EnsembleRanker]:
    class Ensemble(EnsembleRanker):
        family = f"pitstop[{part.family}]"

        def __init__(self, featurizer: RankFeaturizer) -> None:
            super().__init__(featurizer)
            self.parts = [RidgeRanker(featurizer), part(featurizer)]

    return Ensemble


VARIANTS = [PerSourceLambdaRank, NgramLambdaRank, StackedLambdaRank]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "rankers" / "variants.json")
    args = parser.parse_args(argv)
    families = ["lambdarank", "pitstop"]
    for variant in VARIANTS:
        ensemble = _ensemble(variant)
        FAMILIES[variant.family], FAMILIES[ensemble.family] = variant, ensemble
        families += [variant.family, ensemble.family]
    data = load_many(["alpaca_eval", "routerbench", "gsm8k"])
    featurizer = make_featurizer("default")
    frame = Frame(data, featurizer.transform(list(data.prompts)))
    is_test = split_mask(data)
    train, test = frame.rows(~is_test), frame.rows(is_test)
    rows = []
    for family in families:
        started = time.perf_counter()
        cv = cross_validated_tau(family, featurizer, train, 5)
        held_out = mean_tau(test.rows(_is_alpaca(test.data)).taus(train.fit(family, featurizer)))
        rows.append({"family": family, "cv_tau_alpaca": cv, "heldout_tau_alpaca_mean": held_out,
                     "wall_s": round(time.perf_counter() - started, 1)})
        print(f"{family:36s} cv {cv:.3f}  held-out {held_out:.3f}", flush=True)
    report = {"command": command("bench.ranker_variants", argv), "machine": machine_info(),
              "selection": "5-fold CV on training prompts (AlpacaEval models' mean tau)", "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
