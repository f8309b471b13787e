"""The work score (rankers/work.py): prompt plus expected answer, placed among the model's training
requests, checked against hand-computed quantiles; fitted with every ranker; added to old artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rankers.data import LengthData
from rankers.work import CHARS_PER_TOKEN, WorkTable


def _data(rows: list[tuple[str, int, int]]) -> LengthData:
    """(model, prompt characters, answer tokens) per row."""
    models = [m for m, _, _ in rows]
    prompts = ["x" * chars for _, chars, _ in rows]
    ids = [f"p{i}" for i in range(len(rows))]
    return LengthData("hand", *(np.array(x, dtype=object) for x in (ids, prompts, models)),
                      np.array([a for _, _, a in rows]), {})


def test_a_work_score_is_the_share_of_training_requests_with_less_work():
    # "m": 100 prompts of 100 tokens (400 characters), answers of 1..100 tokens: work 101..200.
    # "few": 10 rows, under the 50 a model needs for its own table: it is scored on the pooled one.
    table = WorkTable.fit(_data([("m", 400, a) for a in range(1, 101)] + [("few", 0, 1000)] * 10))
    assert set(table.work_tokens) == {"", "m"}
    assert table.answer_tokens["m"][50] == pytest.approx(50.5)  # median of 1..100
    assert 100 * CHARS_PER_TOKEN == 400
    # rank 0.5 -> answer 50.5; with the prompt's 100 tokens, work 150.5: the median of 101..200
    assert table.score(0.5, "m", 400) == pytest.approx(0.5)
    # rank 0.25 -> answer 25.75; prompt 150 tokens: work 175.75, (175.75 - 101) / 99 of the way up
    assert table.score(0.25, "m", 600) == pytest.approx((175.75 - 101) / 99)
    assert table.score(0.5, "m", 0) == 0.0  # less work than any training request
    assert table.score(0.0, "m", 800) == 1.0  # more than all
    assert table.expected_work(1.0, "m", 40) == pytest.approx(10 + 100)
    # the pooled table, for a model without enough rows and for one never seen
    assert table.score(0.95, "few", 400) == table.score(0.95, "unseen", 400) != table.score(0.95, "m", 400)
    # monotone in both the rank score and the prompt's size, always in [0, 1]
    grid = np.array([[table.score(r, "m", c) for c in range(0, 1200, 40)] for r in np.linspace(0, 1, 21)])
    assert (np.diff(grid, axis=0) >= 0).all() and (np.diff(grid, axis=1) >= 0).all()
    assert grid.min() >= 0.0 and grid.max() <= 1.0
    # weighed at nothing, the prompt does not move the score: work is the answer alone
    answer_only = table.with_weight(0.0)
    assert answer_only.score(0.3, "m", 0) == answer_only.score(0.3, "m", 4000) == pytest.approx(0.3)
    assert table.with_weight(1.0) is table and answer_only.rows is table.rows


def test_a_longer_prompt_ranks_later_at_the_same_answer_score():
    from rankers.families import make_ranker
    from rankers.train_job import make_featurizer
    from tests.rankers.test_training import synthetic

    ranker = make_ranker("pitstop", make_featurizer("default")).fit(synthetic())
    table = ranker.work_table
    assert table is not None and set(table.answer_tokens) == {"", "terse", "verbose"}
    prompt = "Write a detailed essay about databases"
    answer = ranker.score(prompt, "verbose")
    assert table.score(answer, "verbose", len(prompt)) < table.score(answer, "verbose", len(prompt) + 4000)


def test_an_old_artifact_gets_the_table_its_training_would_fit(tmp_path: Path, shared_data: Path):
    from rankers.artifact import load_ranker, rewrite_ranker
    from rankers.train_job import add_work_table, train_and_save

    path, manifest = train_and_save("prompt-length", ["gsm8k"], tmp_path / "r.joblib", root=shared_data)
    fitted = load_ranker(path)
    assert fitted.work_table is not None
    old = load_ranker(path)
    old.work_table = None  # as artifacts from before work tables were stored
    rewrite_ranker(path, old, dict(old.manifest))
    assert load_ranker(path).work_table is None
    added = add_work_table(path, shared_data)
    again = load_ranker(path)
    assert again.version == manifest["version"] and added["work_table"]["rows"] == manifest["training_data"]["train_rows"]
    for model in fitted.work_table.work_tokens:
        np.testing.assert_array_equal(again.work_table.work_tokens[model], fitted.work_table.work_tokens[model])
        np.testing.assert_array_equal(again.work_table.answer_tokens[model], fitted.work_table.answer_tokens[model])
    prompts = ["Natalia sold clips to 48 of her friends.", "A robe takes 2 bolts of blue fiber."]
    assert list(again.score_batch(prompts, ["gpt-4-1106-preview"] * 2)) == list(
        fitted.score_batch(prompts, ["gpt-4-1106-preview"] * 2))


def test_the_committed_artifacts_carry_work_tables():
    from rankers.artifact import DEFAULT_ARTIFACT, read_manifest

    for path in (DEFAULT_ARTIFACT, DEFAULT_ARTIFACT.with_name("pitstop.joblib")):
        assert read_manifest(path)["work_table"]["prefill_weight"] == 1.0


def test_cached_prompt_tokens_cost_no_prefill():
    """An agent's returning turn whose context the engine still holds: only the new part of its
    prompt is work, and never less than none."""
    table = WorkTable.fit(_data([("m", 400, a) for a in range(1, 101)]))
    assert table.expected_work(0.5, "m", 800, cached_tokens=150) == pytest.approx(50 + 50.5)
    assert table.score(0.5, "m", 800, cached_tokens=100) == table.score(0.5, "m", 400) == pytest.approx(0.5)
    assert table.expected_work(0.5, "m", 400, cached_tokens=10_000) == pytest.approx(50.5)  # answer alone
    assert table.score(0.5, "m", 800, cached_tokens=100) < table.score(0.5, "m", 800)
    # weighed at nothing, a cache changes nothing either
    answer_only = table.with_weight(0.0)
    assert answer_only.score(0.3, "m", 800, cached_tokens=200) == answer_only.score(0.3, "m", 800)
