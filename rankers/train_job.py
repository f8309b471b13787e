"""Train a ranker on length data and write its artifact (`pitstop train ranker`).

Training uses the training prompts only (rankers/split.py); the held-out prompts measure the
artifact's Kendall's tau, stored in its manifest. The default feature spec needs no encoder table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rankers.artifact import load_ranker, rewrite_ranker, save_ranker
from rankers.base import Ranker
from rankers.data import LengthData, concat, load_lengths
from rankers.families import make_ranker
from rankers.features import RankFeaturizer
from rankers.metrics import mean_tau, tau_per_model
from rankers.split import split_by_prompt
from routers.features.featurizer import FeatureSpec

DEFAULT_SPEC = FeatureSpec(encoder="none", views=(), stats=True, ngram_bits=14)
STATIC_SPEC = FeatureSpec(encoder="static", views=("head", "focus"), stats=True, ngram_bits=14)
# The transformer itself (15-150 ms a request on one core): offline evaluation only, as the ceiling
# the cheap feature sets are measured against.
MINILM_SPEC = FeatureSpec(encoder="minilm", views=("head",), stats=True, ngram_bits=14)
SPECS = {"default": DEFAULT_SPEC, "static": STATIC_SPEC, "minilm": MINILM_SPEC}


def make_featurizer(spec_name: str, encoder_path: str | Path | None = None) -> RankFeaturizer:
    spec = SPECS[spec_name]
    encoder = None
    if spec.encoder == "static":
        from routers.encoder_store import load_or_distil  # noqa: PLC0415

        encoder = load_or_distil(encoder_path)
    return RankFeaturizer(spec, encoder)


def load_many(names: list[str], root: Path | None = None) -> LengthData:
    parts = [load_lengths(n, root) for n in names]
    return parts[0] if len(parts) == 1 else concat(parts)


def held_out_metrics(ranker: Ranker, test: LengthData) -> dict[str, Any]:
    scores = ranker.score_batch(list(test.prompts), list(test.models))
    per_model = tau_per_model(test, scores)
    alpaca = np.array([p.startswith("alpaca.") for p in test.prompt_ids], dtype=bool)
    metrics = {"kendall_tau_mean": mean_tau(per_model), "kendall_tau_per_model": per_model,
               "test_prompts": len(test.unique_prompt_ids), "test_rows": len(test)}
    if alpaca.any() and not alpaca.all():  # the headline: AlpacaEval's 10 models on its held-out prompts
        metrics["kendall_tau_mean_alpaca_eval"] = mean_tau(tau_per_model(test.rows(alpaca), scores[alpaca]))
    return metrics


def distilled_listmle(train: LengthData, exclude: list[str], teacher_size: str, unlabeled: int,
                      root: Path | None = None) -> tuple[Ranker, dict[str, Any]]:
    """The `listmle` family's default size, distilled from a larger one (bench/ranker_listmle_distil.py):
    the teacher is fine-tuned on `train`, then scores `unlabeled` prompts without answers for the student."""
    from rankers.listmle import ListMLERanker  # noqa: PLC0415  (torch, only for this family)
    from rankers.unlabeled import unlabeled_prompts  # noqa: PLC0415

    try:
        layers, max_tokens = (int(x) for x in teacher_size.split(":"))
    except ValueError:
        raise ValueError(f"teacher size {teacher_size!r}: expected LAYERS:MAX_TOKENS, e.g. 6:128") from None
    teacher = ListMLERanker(None, layers=layers, max_tokens=max_tokens).fit(train)
    pool = unlabeled_prompts(unlabeled, exclude, root=root)
    student = ListMLERanker(None, teacher=teacher, unlabeled=pool).fit(train)
    return student, {"distilled_from": teacher_size, "unlabeled_prompts": len(pool)}


def train_and_save(family: str, data_names: list[str], out: Path | None, spec_name: str = "default",
                   encoder_path: str | Path | None = None, root: Path | None = None,
                   test_fraction: float = 0.2, distil_from: str | None = None, unlabeled: int = 3000
                   ) -> tuple[Path, dict[str, Any]]:
    data = load_many(data_names, root)
    train, test = split_by_prompt(data, test_fraction)
    distillation: dict[str, Any] = {}
    if distil_from is None:
        ranker = make_ranker(family, make_featurizer(spec_name, encoder_path)).fit(train)
    elif family != "listmle":
        raise ValueError(f"distillation applies to the listmle family, not {family!r}")
    else:  # every loaded prompt is kept out of the unlabeled pool, held-out ones included
        ranker, distillation = distilled_listmle(train, data.prompts.tolist(), distil_from, unlabeled, root)
    metrics = held_out_metrics(ranker, test) if len(test) else {}
    training_data = {"datasets": data_names, "source": data.source, "split": "by prompt (rankers/split.py)",
                     "test_fraction": test_fraction, "train_prompts": len(train.unique_prompt_ids),
                     "train_rows": len(train), "spec": spec_name} | distillation
    path = out or Path("var/rankers") / f"{family}-{spec_name}.joblib"
    manifest = save_ranker(ranker, path, training_data, metrics)
    return path, manifest


def add_work_table(path: Path, root: Path | None = None) -> dict[str, Any]:
    """Give an artifact trained before work tables existed (rankers/work.py) the table its training
    would now fit: the same data sets (their files' sha256 must match the manifest's), the same split.
    Its scores and version do not change; the manifest records the addition."""
    from rankers.work import WorkTable  # noqa: PLC0415

    ranker = load_ranker(path)
    manifest = dict(ranker.manifest)
    reference = manifest["training_data"]
    data = load_many(list(reference["datasets"]), root)
    if sorted(data.source.values()) != sorted(reference["source"].values()):
        raise ValueError(f"{path}: the training data files differ from the ones it was trained on")
    train, _ = split_by_prompt(data, reference.get("test_fraction", 0.2))
    ranker.work_table = WorkTable.fit(train)
    manifest["work_table"] = {"fitted_on": "the artifact's training split", "rows": len(train),
                              "prefill_weight": ranker.work_table.prefill_weight}
    rewrite_ranker(path, ranker, manifest)
    return manifest
