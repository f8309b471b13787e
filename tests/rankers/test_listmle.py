"""The `listmle` family: the loss against hand-computed values, learning a known signal through the
fine-tuned encoder, and its artifact round trip (the frozen word table re-attached from the package)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rankers.artifact import load_ranker, save_ranker
from rankers.data import LengthData
from rankers.families import make_ranker
from rankers.listmle import ListMLEBlendRanker, ListMLERanker, listmle_loss
from rankers.metrics import kendall_tau, mean_tau, tau_per_model
from rankers.split import split_by_prompt
from rankers.train_job import make_featurizer
from tests.rankers.test_training import synthetic


def test_listmle_loss_by_hand():
    # Two items, the first longer: -log P = log(e^s1 + e^s2) - s1, and the last position adds 0.
    assert listmle_loss(torch.tensor([0.0, 0.0]), torch.tensor([10.0, 5.0])).item() == pytest.approx(math.log(2) / 2)
    # The longer one scored lower: the true order is (second, first).
    got = listmle_loss(torch.tensor([2.0, 0.0]), torch.tensor([5.0, 10.0])).item()
    assert got == pytest.approx(math.log(1 + math.e ** 2) / 2)
    # Scores in the true order with wide gaps: the loss goes to 0.
    assert listmle_loss(torch.tensor([30.0, 20.0, 10.0]), torch.tensor([3.0, 2.0, 1.0])).item() < 1e-4


@pytest.fixture(scope="module")
def fine_tuned() -> tuple[ListMLERanker, LengthData, LengthData]:
    """A ranker fine-tuned on synthetic(2)'s training prompts, and (train, test): one layer, a few epochs (the
    signal is a few words). Trained once (seeded) for the test of what it learned and the test it teaches."""
    train, test = split_by_prompt(synthetic(2))
    return ListMLERanker(None, layers=1, max_tokens=32, epochs=6, lr=1e-4).fit(train), train, test


def test_fine_tuned_encoder_learns_what_makes_answers_long_and_round_trips(
        tmp_path: Path, fine_tuned: tuple[ListMLERanker, LengthData, LengthData]):
    ranker, _, test = fine_tuned
    assert make_ranker("listmle", None).family == "listmle"
    scores = ranker.score_batch(list(test.prompts), list(test.models))
    assert mean_tau(tau_per_model(test, scores)) > 0.6
    essay, word = "Write a detailed essay about clouds?", "Answer in one word: what colour is snow?"
    assert ranker.score(essay, "never-seen") > ranker.score(word, "never-seen")
    path = tmp_path / "listmle.joblib"
    save_ranker(ranker, path, {"datasets": ["synthetic"]})
    assert path.stat().st_size < 8_000_000  # the 30k-token word table is not in the file
    loaded = load_ranker(path)
    # Fine-tuned weights are kept at the artifact's fp16, so the loaded ranker scores exactly alike.
    np.testing.assert_allclose(loaded.score_batch(list(test.prompts), list(test.models)), scores, atol=1e-9)
    assert loaded.int8 and loaded._scorer is not ranker.encoder


def test_a_prompt_is_encoded_on_its_own_tokens_not_padding():
    ranker = ListMLERanker(None, layers=1, max_tokens=32, int8=False)
    # The package's tokenizer file pads to 128; a short prompt must cost (and see) only its own tokens.
    assert len(ranker.tokenizer.encode("Name a colour.").ids) < 10
    assert len(ranker.tokenizer.encode("word " * 100).ids) == 32
    short, long_ = "Name a colour.", "Write a long story about the sea and the ships on it. " * 5
    alone = ranker._embed([short])
    batched = ranker._embed([short, long_])[:1]  # padded to the long prompt's width, masked
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)


def test_a_student_learns_the_teachers_ranking_from_prompts_without_answers(
        fine_tuned: tuple[ListMLERanker, LengthData, LengthData]):
    teacher, train, test = fine_tuned
    # The student's own labels say nothing: 30 prompts with their lengths shuffled.
    few = train.with_prompts(set(train.unique_prompt_ids[:30]))
    noise = np.random.default_rng(0).permutation(few.output_tokens)
    noisy = type(few)(few.name, few.prompt_ids, few.prompts, few.models, noise, few.source)
    unlabeled = sorted(set(train.prompts.tolist()) - set(few.prompts.tolist()))

    def tau(ranker: ListMLERanker) -> float:
        return mean_tau(tau_per_model(test, ranker.score_batch(list(test.prompts), list(test.models))))

    plain = ListMLERanker(None, layers=1, max_tokens=32, epochs=6, lr=1e-4).fit(noisy)
    student = ListMLERanker(None, layers=1, max_tokens=32, epochs=6, lr=1e-4, teacher=teacher,
                            unlabeled=unlabeled).fit(noisy)
    assert tau(plain) < 0.3 < 0.5 < tau(student)
    # The teacher and its prompts were for training only: neither stays on the student or in its artifact.
    assert student.teacher is None and not student.unlabeled
    assert not {"teacher", "unlabeled"} & set(student.__getstate__())


def _tau(ranker: object, data: LengthData) -> float:
    return mean_tau(tau_per_model(data, ranker.score_batch(list(data.prompts), list(data.models))))


def test_the_blend_ranks_by_what_the_truncated_encoder_cannot_see_and_round_trips(tmp_path: Path):
    # A greeting pushes the request's kind past the encoder's 6-token window; the cheap features see it.
    data = synthetic(3)
    greeted = np.array([f"Hello there my dear friend, good day. {p}" for p in data.prompts], dtype=object)
    train, test = split_by_prompt(LengthData("greeted", data.prompt_ids, greeted, data.models,
                                             data.output_tokens, {}))
    blend = ListMLEBlendRanker(make_featurizer("default"), layers=1, max_tokens=6, epochs=2, lr=1e-4).fit(train)
    assert make_ranker("listmle-blend", make_featurizer("default")).family == "listmle-blend"
    encoder, cheap = blend.parts
    prompts, models = list(test.prompts), list(test.models)
    assert len(set(encoder.score_batch(prompts, models).tolist())) <= len(test.model_names)  # it sees a greeting
    assert _tau(blend, test) > 0.6
    # The blend orders each model's prompts as the 0.8 / 0.2 mean of its parts' calibrated scores.
    mean = 0.8 * encoder.score_batch(prompts, models) + 0.2 * cheap.score_batch(prompts, models)
    scores = blend.score_batch(prompts, models)
    for model in test.model_names:
        rows = test.models == model
        assert kendall_tau(scores[rows], mean[rows]) > 0.99
    path = tmp_path / "blend.joblib"
    save_ranker(blend, path, {"datasets": ["greeted"]})
    np.testing.assert_allclose(load_ranker(path).score_batch(prompts, models), scores, atol=1e-9)



def test_a_long_prompt_is_tokenized_only_up_to_the_window_with_the_whole_prompts_tokens():
    ranker = ListMLERanker(None, layers=1, max_tokens=24)
    rng = np.random.default_rng(0)
    words = ["the", "unbelievably", "café", "naïve", "x", "Transformer's", "(a)", "3.14159", "e.g.,", "東京",
             "supercalifragilisticexpialidocious", "\n\n", "don't", "---", "emoji🙂", "tab\there"]
    prompts = [" ".join(rng.choice(words, size=int(rng.integers(1, 400)))) for _ in range(300)]
    prompts += ["a" * 5000, "word " * 2000, "x" * 190 + " " + "y" * 3000, "短" * 700, " " * 400 + "late start"]
    # Long words of few and of many word pieces: in some of these the window fills right at a cut
    # 192 characters in, where a plain cut would split a word and change the window's last tokens.
    common = ["international", "configuration", "responsibilities", "understanding", "nevertheless", "the"]
    letters = list("abcdefghijklmnopqrstuvwxyz")
    dense = [" ".join(str(rng.choice(common)) if rng.random() < 0.7 else "".join(rng.choice(letters, 8))
                      for _ in range(60)) for _ in range(300)]
    assert any(ranker.tokenizer.encode(p[:192]).ids != ranker.tokenizer.encode(p).ids for p in dense)
    for prompt in prompts + dense:
        assert ranker._token_ids(prompt) == ranker.tokenizer.encode(prompt).ids, prompt[:80]
    assert ranker.runtime == "onnx" and type(ranker._make_scorer()).__name__ == "OnnxBert"


def test_the_blend_companion_lambdarank_computes_no_ngrams_and_pitstop_still_blends():
    data = synthetic(3)
    train, test = split_by_prompt(data)
    featurizer = make_featurizer("default")
    assert featurizer.spec.ngram_bits > 0
    blend = ListMLEBlendRanker(featurizer, layers=1, max_tokens=32, epochs=1, lr=1e-4)
    cheap = blend.parts[1]
    assert cheap.family == "lambdarank"
    # Its trees read the dense block only: the request path builds no sparse n-gram row.
    assert blend.featurizer.spec.ngram_bits == 0 and cheap.featurizer is blend.featurizer
    assert blend.featurize([test.prompts[0]]).sparse is None
    blend.fit(train)
    assert _tau(cheap, test) > 0.6
    # The ensemble companion (what artifacts from before stop 17 hold) keeps its n-grams and still scores.
    old = ListMLEBlendRanker(featurizer, companion="pitstop", layers=1, max_tokens=32, epochs=1, lr=1e-4)
    assert old.parts[1].family == "pitstop" and old.featurizer.spec.ngram_bits == featurizer.spec.ngram_bits
    old.parts[0] = blend.parts[0]
    old.fit_raw = lambda data, features: old.parts[1].fit(data, features)  # the encoder is fitted above
    old.fit(train)
    assert 0.0 <= old.score(test.prompts[0], test.models[0]) <= 1.0
    with pytest.raises(KeyError):
        ListMLEBlendRanker(featurizer, companion="nope")
