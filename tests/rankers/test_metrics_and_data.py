"""Kendall's tau against hand-computed cases; loaders on small slices; splits by prompt."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rankers.base import QUANTILES, Ranker
from rankers.data import LengthData, load_lengths
from rankers.metrics import kendall_tau, mean_tau, other_models_scores, tau_per_model
from rankers.names import canonical_model
from rankers.split import prompt_folds, split_by_prompt
from routers.tokens import count_tokens


def test_kendall_tau_hand_computed():
    assert kendall_tau(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert kendall_tau(np.array([4, 3, 2, 1]), np.array([10, 20, 30, 40])) == pytest.approx(-1.0)
    # pairs: 5 concordant, 1 discordant ((2,3) vs (30,20)): (5 - 1) / 6
    assert kendall_tau(np.array([1, 2, 3, 4]), np.array([10, 30, 20, 40])) == pytest.approx(4 / 6)
    # tau-b with a tie in the scores: 2 concordant, 0 discordant, 1 tied pair: 2 / sqrt(2 x 3)
    assert kendall_tau(np.array([1, 1, 2]), np.array([1, 2, 3])) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(kendall_tau(np.array([5, 5, 5]), np.array([1, 2, 3])))  # a constant ranker has no tau
    assert math.isnan(kendall_tau(np.array([1.0]), np.array([2.0])))


def _data(models: list[str], prompts: list[str], lengths: list[int]) -> LengthData:
    return LengthData("t", np.array(prompts, dtype=object), np.array(prompts, dtype=object),
                      np.array(models, dtype=object), np.array(lengths), {})


def test_calibration_is_the_share_ranked_below_with_ties_counting_half():
    ranker = Ranker(None)
    # 40 of the model's 100 training answers share the lowest raw score (0); the rest are 1..60.
    training = np.array([0.0] * 40 + list(range(1, 61)))
    ranker.model_quantiles = {"m": np.quantile(training, QUANTILES)}
    ranker.raw_quantiles = np.quantile(training * 2, QUANTILES)  # an unseen model's: a different scale
    # np.quantile puts the tied stretch over the grid's first 0.39 (index 39 of 99): the tie gets its middle.
    got = ranker.calibrate(np.array([0.0, -5.0, 100.0, 30.5, 0.0]), ["m", "m", "m", "m", "other"])
    assert got[0] == pytest.approx(0.195, abs=1e-6)
    assert got[1] == 0.0 and got[2] == 1.0  # outside the training range: clipped
    assert got[3] == pytest.approx(69.5 / 99, abs=0.003)  # halfway from 30 (index 69) to 31 (index 70)
    assert got[4] == pytest.approx(0.195, abs=1e-6)  # 0 is the pooled tie too


def test_tau_per_model_and_mean_skip_undefined_models():
    data = _data(["a", "a", "a", "b", "b"], ["p1", "p2", "p3", "p1", "p2"], [1, 2, 3, 5, 5])
    per = tau_per_model(data, np.array([0.1, 0.2, 0.3, 0.1, 0.2]))
    assert per["a"] == pytest.approx(1.0) and math.isnan(per["b"])  # b's lengths are constant
    assert mean_tau(per) == pytest.approx(1.0)


def test_other_models_scores_leave_the_model_itself_out():
    # Two models agree on which prompt is long; "c" answered only p1: nobody else to learn from on p2.
    data = _data(["a", "a", "b", "b", "c"], ["p1", "p2", "p1", "p2", "p1"], [10, 100, 20, 200, 7])
    scores = other_models_scores(data)
    assert scores[0] == pytest.approx(np.mean([-1.0, 0.0]))  # b's z on p1 (-1) and c's (a lone answer: 0)
    assert scores[1] == pytest.approx(1.0)  # b's z on p2
    assert scores[4] == pytest.approx(-1.0)  # a's and b's z on p1
    assert tau_per_model(data, scores)["a"] == pytest.approx(1.0)


def test_model_names_are_canonical_across_sources():
    assert canonical_model("mistralai/Mixtral-8x7B-Instruct-v0.1") == "mixtral-8x7b-instruct"
    assert canonical_model("mistralai/mixtral-8x7b-chat") == "mixtral-8x7b-instruct"
    assert canonical_model("gpt4_1106_preview") == canonical_model("gpt-4-1106-preview")


def test_alpaca_loader_counts_answer_tokens(shared_data: Path):
    data = load_lengths("alpaca_eval", shared_data, limit_prompts=12)
    assert len(data.unique_prompt_ids) == 12 and len(data.model_names) == 10
    rows = [json.loads(line) for line in (shared_data / "alpaca_eval_outputs/outputs.jsonl").open()]
    first = next(r for r in rows if r["instruction"] == data.prompts[0] and
                 canonical_model(r["model"]) == data.models[0])
    assert data.output_tokens[0] == count_tokens([first["output"]])[0] > 0
    assert set(data.source) == {str(shared_data / "alpaca_eval_outputs/outputs.jsonl")}


def test_gsm8k_loader_and_outcome_export(shared_data: Path, tmp_path: Path):
    gsm = load_lengths("gsm8k", shared_data)
    assert gsm.model_names == ["gpt-4-1106-preview", "mixtral-8x7b-instruct"]
    assert len(gsm) == 2 * len(gsm.unique_prompt_ids) and gsm.output_tokens.min() > 0
    export = tmp_path / "outcomes.jsonl"
    export.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "hi", "model": "tiny-small", "completion_tokens": 7, "status": "ok", "finish_reason": "stop"},
        {"prompt": "cut", "model": "tiny-small", "completion_tokens": 16, "status": "ok", "finish_reason": "length"},
        {"prompt": "err", "model": "tiny-small", "completion_tokens": None, "status": "error"},
    ]) + "\n")
    outcomes = load_lengths(f"outcomes:{export}")
    # A truncated answer's length is not its natural length: left out, as are failures.
    assert list(outcomes.prompts) == ["hi"] and list(outcomes.output_tokens) == [7]


def test_split_is_by_prompt_and_stable(shared_data: Path):
    data = load_lengths("alpaca_eval", shared_data, limit_prompts=60)
    train, test = split_by_prompt(data)
    assert set(train.prompt_ids).isdisjoint(test.prompt_ids) and len(train) + len(test) == len(data)
    assert 0 < len(test.unique_prompt_ids) < len(train.unique_prompt_ids)
    # Every model's answer to a held-out prompt is held out with it.
    assert all((test.prompt_ids == p).sum() == 10 for p in test.unique_prompt_ids)
    again, _ = split_by_prompt(load_lengths("alpaca_eval", shared_data, limit_prompts=60))
    assert list(again.prompt_ids) == list(train.prompt_ids)
    folds = prompt_folds(data, 5)
    for p in data.unique_prompt_ids:
        assert len(set(folds[data.prompt_ids == p])) == 1


def test_unlabeled_prompts_are_seeded_distinct_and_never_excluded_ones(shared_data: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    import functools

    import rankers.unlabeled as unlabeled
    from rankers.unlabeled import unlabeled_prompts

    # The draws are under test, not the loaders: each source is parsed once for the three draws.
    monkeypatch.setattr(unlabeled, "load_long", functools.cache(unlabeled.load_long))
    alpaca = load_lengths("alpaca_eval", shared_data).prompts.tolist()
    pool = unlabeled_prompts(500, exclude=alpaca, extra=["an extra prompt"], root=shared_data)
    assert len(pool) == len(set(pool)) == 500 and set(pool).isdisjoint(alpaca)
    assert pool == unlabeled_prompts(500, exclude=alpaca, extra=["an extra prompt"], root=shared_data)
    everything = unlabeled_prompts(10**6, exclude=alpaca, extra=["an extra prompt"], root=shared_data)
    # MT-Bench shares prompts with AlpacaEval: excluded, while the rest of both sources is drawn from.
    assert "an extra prompt" in everything and len(everything) > 6000
