"""Training rankers (synthetic data with a known answer, then a small real slice), artifacts, fallback."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gateway.ranking import RequestRanker
from rankers.artifact import CHEAP_ARTIFACT, DEFAULT_ARTIFACT, load_ranker, read_manifest, save_ranker
from rankers.config import RankingConfig
from rankers.data import LengthData, load_lengths
from rankers.families import FAMILIES, make_ranker
from rankers.metrics import mean_tau, tau_per_model
from rankers.split import split_by_prompt
from rankers.train_job import make_featurizer, train_and_save

TOPICS = ["rivers", "the moon", "tea", "bridges", "owls", "glass", "trains", "salt", "maps", "bees"]
ASKS = [("Answer in one word: what colour is", 3), ("Name one fact about", 12),
        ("Explain how people use", 80), ("Write a detailed essay about", 400)]


def synthetic(seed: int = 0) -> LengthData:
    """Length follows the kind of request (and differs by model); prompt length does not."""
    rng = np.random.default_rng(seed)
    ids, prompts, models, lengths = [], [], [], []
    for i in range(240):
        ask, base = ASKS[i % len(ASKS)]
        prompt = f"{ask} {TOPICS[i % 10]}{' please' * int(rng.integers(0, 6))}? (#{i})"
        for model, scale in (("terse", 0.5), ("verbose", 2.0)):
            ids.append(f"s.{i}")
            prompts.append(prompt)
            models.append(model)
            lengths.append(max(1, int(base * scale * rng.lognormal(0, 0.3))))
    return LengthData("synthetic", *(np.array(x, dtype=object) for x in (ids, prompts, models)),
                      np.array(lengths), {})


@pytest.mark.parametrize("family", ["ridge", "lambdarank", "pitstop"])
def test_families_learn_what_makes_answers_long(family: str):
    train, test = split_by_prompt(synthetic())
    ranker = make_ranker(family, make_featurizer("default")).fit(train)
    scores = ranker.score_batch(list(test.prompts), list(test.models))
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    assert mean_tau(tau_per_model(test, scores)) > 0.6
    baseline = make_ranker("prompt-length", None).fit(train)
    assert mean_tau(tau_per_model(test, baseline.score_batch(list(test.prompts), list(test.models)))) < 0.3
    # One request at a time gives the batch's answer; an unseen model is still ranked by the prompt.
    assert ranker.score(test.prompts[0], test.models[0]) == pytest.approx(scores[0])
    essay, word = "Write a detailed essay about clouds?", "Answer in one word: what colour is snow?"
    assert ranker.score(essay, "never-seen") > ranker.score(word, "never-seen")


def test_artifact_round_trip(tmp_path: Path):
    train, test = split_by_prompt(synthetic(1))
    ranker = make_ranker("pitstop", make_featurizer("default")).fit(train)
    path = tmp_path / "ranker.joblib"
    manifest = save_ranker(ranker, path, {"datasets": ["synthetic"]}, {"kendall_tau_mean": 0.9})
    loaded = load_ranker(path)
    assert loaded.version == manifest["version"] == read_manifest(path)["version"]
    assert loaded.manifest["family"] == "pitstop" and loaded.models == ["terse", "verbose"]
    np.testing.assert_allclose(loaded.score_batch(list(test.prompts), list(test.models)),
                               ranker.score_batch(list(test.prompts), list(test.models)))
    assert json.loads((tmp_path / "ranker.joblib.json").read_text())["features"]["encoder"] == "none"
    (tmp_path / "bad.joblib").write_bytes(b"not a pickle")
    with pytest.raises(Exception):  # noqa: B017  (joblib raises its own unpickling errors)
        load_ranker(tmp_path / "bad.joblib")


def test_training_job_on_a_real_slice(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import rankers.train_job as job

    real = load_lengths("alpaca_eval", shared_data, limit_prompts=200)
    monkeypatch.setattr(job, "load_many", lambda names, root=None: real)
    path, manifest = train_and_save("pitstop", ["alpaca_eval"], tmp_path / "a.joblib", root=shared_data)
    metrics = manifest["metrics"]
    assert metrics["test_prompts"] > 20 and set(metrics["kendall_tau_per_model"]) == set(real.model_names)
    assert metrics["kendall_tau_mean"] > 0.1  # prompts held out from training, 10 models
    assert manifest["training_data"]["train_prompts"] + metrics["test_prompts"] == 200
    assert load_ranker(path).score("Write a poem about tea", "gemma-7b-it") >= 0.0


def test_committed_cheap_artifact_needs_no_encoder():
    ranker = load_ranker(CHEAP_ARTIFACT)
    assert ranker.featurizer is not None and ranker.featurizer.spec.encoder == "none"
    assert set(FAMILIES) >= {ranker.family}
    assert CHEAP_ARTIFACT.stat().st_size < 500_000
    assert read_manifest(CHEAP_ARTIFACT)["metrics"]["test_prompts"] > 0


def test_committed_default_is_the_fine_tuned_blend_and_scores_without_torch():
    # A fresh interpreter: loading and scoring the default must not import torch or transformers.
    probe = (f"import sys; from rankers.artifact import load_ranker; r = load_ranker({str(DEFAULT_ARTIFACT)!r}); "
             "s = r.score('Write a detailed essay about owls', 'gpt-4-1106-preview'); e, c = r.parts; "
             "print(r.family, e.family, e.runtime, e.int8, c.family, s, 'torch' in sys.modules, "
             "'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    assert out[:5] == ["listmle-blend", "listmle", "onnx", "True", "lambdarank"] and 0.0 <= float(out[5]) <= 1.0
    assert out[6:] == ["False", "False"]
    assert DEFAULT_ARTIFACT.stat().st_size < 16_000_000  # fine-tuned layers in fp16; the word table is the package's
    manifest = read_manifest(DEFAULT_ARTIFACT)
    assert manifest["family"] == "listmle-blend" and manifest["metrics"]["test_prompts"] > 0
    assert manifest["features"]["ngram_bits"] == 0  # the companion's trees need no n-grams
    # The same weights through torch score alike (int8 paths differ by rounding only).
    ranker = load_ranker(DEFAULT_ARTIFACT)
    prompts = ["Name a colour.", "Write a detailed essay about the history of clouds.", "What is 2 + 2?",
               "Summarise the plot of Hamlet in three paragraphs, then list its themes."]
    on_onnx = ranker.score_batch(prompts, ["gpt-4-1106-preview"] * 4)
    encoder = ranker.parts[0]
    encoder.runtime, encoder.int8, encoder._scorer = "torch", False, None
    on_torch = ranker.score_batch(prompts, ["gpt-4-1106-preview"] * 4)
    np.testing.assert_allclose(on_onnx, on_torch, atol=0.05)


def test_gateway_falls_back_to_unranked_when_the_artifact_is_missing(tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="pitstop.ranking"):
        ranking = RequestRanker.load(RankingConfig(artifact="missing.joblib"), {}, tmp_path)
    assert ranking.ranker is None and ranking.score("hello", "m") is None
    assert "missing.joblib" in caplog.text
    assert RequestRanker.load(RankingConfig(enabled=False), {}).ranker is None
    live = RequestRanker.load(RankingConfig(), {"tiny": "mistralai/Mixtral-8x7B-Instruct-v0.1"})
    assert 0.0 <= live.score("Write an essay on owls", "tiny") <= 1.0


def test_distilled_listmle_job_keeps_every_length_prompt_out_of_the_unlabeled_pool(
        shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import rankers.train_job as job
    import rankers.unlabeled as unlabeled
    from rankers.listmle import ListMLERanker

    # The job's plumbing is under test, not what training learns (tests/rankers/test_listmle.py): teacher and
    # student train 2 epochs, not the family's 16 (which were most of this test's time).
    init = ListMLERanker.__init__

    def brief(self: ListMLERanker, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)
        self.epochs = 2

    monkeypatch.setattr(ListMLERanker, "__init__", brief)
    real = load_lengths("alpaca_eval", shared_data, limit_prompts=40)
    monkeypatch.setattr(job, "load_many", lambda names, root=None: real)
    drawn: list[list[str]] = []
    draw = unlabeled.unlabeled_prompts
    monkeypatch.setattr(unlabeled, "unlabeled_prompts", lambda *a, **k: drawn.append(draw(*a, **k)) or drawn[-1])
    with pytest.raises(ValueError, match="listmle"):
        train_and_save("pitstop", ["alpaca_eval"], tmp_path / "p.joblib", root=shared_data, distil_from="1:16")
    path, manifest = train_and_save("listmle", ["alpaca_eval"], tmp_path / "d.joblib", root=shared_data,
                                    distil_from="1:16", unlabeled=30)
    assert manifest["training_data"]["distilled_from"] == "1:16"
    assert manifest["training_data"]["unlabeled_prompts"] == len(drawn[0]) == 30
    assert set(drawn[0]).isdisjoint(real.prompts.tolist())  # held-out prompts included
    assert manifest["metrics"]["test_prompts"] > 0
    loaded = load_ranker(path)
    assert (loaded.layers, loaded.max_tokens) == (4, 32)  # the student is the family's default size
    assert loaded.teacher is None and 0.0 <= loaded.score("Write a poem", "gemma-7b-it") <= 1.0


def test_gateways_in_one_process_share_a_loaded_artifact_until_it_changes(tmp_path: Path):
    path = tmp_path / "ranker.joblib"
    save_ranker(make_ranker("prompt-length", None).fit(synthetic()), path, {"datasets": ["synthetic"]})
    first = RequestRanker.load(RankingConfig(artifact=str(path)), {}).ranker
    assert RequestRanker.load(RankingConfig(artifact=str(path)), {}).ranker is first
    save_ranker(make_ranker("prompt-length", None).fit(synthetic(1)), path, {"datasets": ["synthetic"]})
    second = RequestRanker.load(RankingConfig(artifact=str(path)), {}).ranker
    assert second is not None and second is not first and second.version != first.version
