"""The answer-length difficulty learner: it must find failures that answer length explains, and find
nothing when the lengths carry no signal; Pitstop's stack uses it only where lengths are known."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from routers.families import build_router
from routers.features.featurizer import FeatureSpec, Featurizer
from routers.features.static import StaticEncoder
from routers.models.difficulty import LengthDifficulty, compact_columns

SPEC = FeatureSpec("static", ("head", "focus"), True, 12)
WORDS = ["apples", "coins", "marbles", "books", "stamps", "shells", "cards", "pens"]


def multi_step_problems(n: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Word problems of 1-8 steps: answers grow with the steps; the weak model fails past 4 steps
    (10% of labels flipped); the strong one is right 95% of the time."""
    rng = np.random.default_rng(seed)
    prompts, steps = [], rng.integers(1, 9, n)
    for k in steps:
        word = WORDS[rng.integers(len(WORDS))]
        parts = [f"Ann has {rng.integers(2, 50)} {word}."]
        parts += [f"Then she {'gets' if rng.random() < 0.5 else 'gives away'} {rng.integers(2, 20)} more."
                  for _ in range(k)]
        prompts.append(" ".join(parts) + f" How many {word} does Ann have now?")
    tokens = np.column_stack([25 * steps + rng.normal(0, 10, n), 30 * steps + rng.normal(0, 10, n)]).clip(5)
    weak = (steps <= 4).astype(float)
    weak = np.where(rng.random(n) < 0.1, 1 - weak, weak)
    quality = np.column_stack([(rng.random(n) < 0.95).astype(float), weak])
    return prompts, tokens, quality, steps


@pytest.fixture()
def featurizer(tiny_encoder: Path) -> Featurizer:
    return Featurizer(SPEC, StaticEncoder.load(tiny_encoder))


def _weak_auc(featurizer: Featurizer, shuffle_lengths: bool) -> float:
    prompts, tokens, quality, _ = multi_step_problems(400, seed=1)
    train, test = np.arange(300), np.arange(300, 400)
    if shuffle_lengths:
        tokens = tokens[np.random.default_rng(2).permutation(len(tokens))]
    x = featurizer.transform(prompts)
    learner = LengthDifficulty()
    learner.fit_lengths(x.rows(train), tokens[train], quality[train], np.ones_like(quality[train]))
    predicted = learner.predict(x.rows(test))
    assert predicted.shape == (100, 2) and np.all((predicted > 0) & (predicted < 1))
    return roc_auc_score(quality[test, 1], predicted[:, 1])


def test_predicted_answer_length_finds_the_weak_models_failures(featurizer: Featurizer) -> None:
    real = _weak_auc(featurizer, shuffle_lengths=False)
    shuffled = _weak_auc(featurizer, shuffle_lengths=True)
    assert real > 0.8
    assert shuffled < real - 0.2  # no length signal, nothing learned


def test_compact_columns_keeps_only_known_buckets_in_order() -> None:
    import scipy.sparse as sp

    matrix = sp.csr_matrix(np.array([[0, 2, 0, 3, 0, 0, 5], [1, 0, 0, 0, 4, 0, 0]], dtype=np.float32))
    buckets = np.array([1, 3, 6])
    compact = compact_columns(matrix, buckets).toarray()
    assert compact.tolist() == [[2, 3, 5], [0, 0, 0]]
    assert compact_columns(matrix, np.zeros(0, dtype=np.int64)).shape == (2, 0)


def test_pitstop_stacks_the_length_learner_only_where_lengths_are_known(synthetic_data, tiny_encoder: Path) -> None:
    encoder = StaticEncoder.load(tiny_encoder)
    train = synthetic_data.split("train")
    with_lengths = build_router("pitstop", train.models, SPEC, encoder).fit(train)
    assert "length" in with_lengths.quality_model.names
    assert with_lengths.quality_model.output_tokens is None  # the artifact keeps no training rows
    no_lengths = dataclasses.replace(train, output_tokens=np.full_like(train.output_tokens, np.nan))
    without = build_router("pitstop", train.models, SPEC, encoder).fit(no_lengths)
    assert "length" not in without.quality_model.names
    quality, _ = without.estimate_batch(synthetic_data.split("test").prompts)
    assert np.all((quality >= 0) & (quality <= 1))


def test_models_with_few_known_lengths_do_not_break_the_folds(featurizer: Featurizer) -> None:
    prompts, tokens, quality, _ = multi_step_problems(200, seed=3)
    tokens = tokens.copy()
    tokens[60:, 1] = np.nan  # the second model: 60 known lengths, fewer than 50 in some inner folds
    x = featurizer.transform(prompts)
    learner = LengthDifficulty()
    learner.fit_lengths(x, tokens, quality, np.ones_like(quality))
    assert learner.lengths.columns.tolist() == [0, 1]
    tokens[:, :] = np.nan
    tokens[:30, 0] = 100.0  # nobody has enough: the learner falls back to mean quality
    learner.fit_lengths(x, tokens, quality, np.ones_like(quality))
    assert np.allclose(learner.predict(x.rows(np.arange(3))), quality.mean(axis=0), atol=1e-3)
