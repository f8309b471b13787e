"""The engine's cross-encoder runner (engine/cross_encoder.py) on tiny random BERT, RoBERTa and XLM-RoBERTa
rerankers: its scores are transformers' own (sigmoid of the logit, the pair tokenized as the checkpoint's
tokenizer pairs it) within 1e-5, whatever the batching and padding; lengths and truncation as vLLM; the
checkpoint's own activation; its forward passes on one torch thread of its own."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from engine.cross_encoder import CrossEncoder, _batches
from engine.cross_encoder_config import cross_encoder_config
from engine.sampling_params import InvalidRequestError
from engine.tiny_cross_encoder import make_tiny_cross_encoder
from engine.tiny_model import make_tiny_model
from tests.engine.cross_encoders import DOCUMENTS, QUERY, reference_scores

FAMILIES = ["bert", "roberta", "xlm-roberta"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cross-encoders")
    return {family: make_tiny_cross_encoder(root / family, family, max_positions=64) for family in FAMILIES}


@pytest.fixture(scope="module")
def encoders(folders: dict[str, Path]) -> dict[str, CrossEncoder]:
    return {family: CrossEncoder(folder, "cpu") for family, folder in folders.items()}


PAIRS = [(QUERY, document) for document in DOCUMENTS]


@pytest.mark.parametrize("family", FAMILIES)
def test_scores_are_transformers_own_sigmoid_of_the_logit(folders: dict, encoders: dict, family: str) -> None:
    expected = reference_scores(folders[family], PAIRS)
    scored = asyncio.run(encoders[family].score(PAIRS))
    assert scored.scores == pytest.approx(expected, abs=1e-5)
    assert max(expected) - min(expected) > 0.01  # the pairs' scores differ: an order to check elsewhere
    tokenizer = AutoTokenizer.from_pretrained(folders[family])
    assert scored.tokens == sum(len(tokenizer(q, d)["input_ids"]) for q, d in PAIRS)


def test_the_pair_is_tokenized_as_the_checkpoint_pairs_texts(folders: dict) -> None:
    tokenizer = AutoTokenizer.from_pretrained(folders["bert"])
    ids = tokenizer(QUERY, "a queue")["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_batching_and_padding_change_no_score(encoders: dict, family: str) -> None:
    encoder = encoders[family]
    whole = encoder.score_now(PAIRS).scores
    one_by_one = [encoder.score_now([pair]).scores[0] for pair in PAIRS]
    lengths = sorted(len(encoder.tokenizer(q, d)["input_ids"]) for q, d in PAIRS)
    assert lengths[0] < lengths[1] < lengths[-1]
    in_twos = encoder.score_now(PAIRS, batch_tokens=2 * lengths[1]).scores  # the shortest padded beside another
    reversed_order = encoder.score_now(PAIRS[::-1]).scores[::-1]
    assert whole == pytest.approx(one_by_one, abs=1e-6)
    assert in_twos == pytest.approx(one_by_one, abs=1e-6)
    assert reversed_order == pytest.approx(one_by_one, abs=1e-6)


def test_a_pair_past_the_model_length_is_refused_unless_truncated_as_vllm_truncates(folders: dict,
                                                                                    encoders: dict) -> None:
    encoder = encoders["bert"]
    assert encoder.max_model_len == 64 and encoders["roberta"].max_model_len == 64  # RoBERTa: 66 positions - 2
    long_document = " ".join(DOCUMENTS * 4)
    with pytest.raises(InvalidRequestError, match="maximum context length is 64 tokens"):
        encoder.score_now([(QUERY, "short"), (QUERY, long_document)])
    cut = encoder.score_now([(QUERY, long_document)], truncate_prompt_tokens=-1)
    assert cut.tokens == 64
    assert cut.scores == pytest.approx(reference_scores(folders["bert"], [(QUERY, long_document)], 64), abs=1e-5)
    shorter = encoder.score_now([(QUERY, long_document)], truncate_prompt_tokens=20)
    assert shorter.tokens == 20
    assert shorter.scores == pytest.approx(reference_scores(folders["bert"], [(QUERY, long_document)], 20), abs=1e-5)
    both_long = (" ".join(DOCUMENTS[:3]), long_document)  # the longer text of the pair is cut first
    assert encoder.score_now([both_long], truncate_prompt_tokens=40).scores == pytest.approx(
        reference_scores(folders["bert"], [both_long], 40), abs=1e-5)
    for bad in (65, 0, -2):
        with pytest.raises(InvalidRequestError, match="truncate_prompt_tokens"):
            encoder.score_now(PAIRS, truncate_prompt_tokens=bad)


def test_the_checkpoint_names_its_activation(folders: dict, tmp_path: Path) -> None:
    folder = make_tiny_cross_encoder(tmp_path / "identity", "bert", max_positions=64)
    config = json.loads((folder / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    (folder / "config.json").write_text(json.dumps(config))
    raw = CrossEncoder(folder, "cpu").score_now(PAIRS).scores
    sigmoid = reference_scores(folder, PAIRS)
    assert torch.sigmoid(torch.tensor(raw)).tolist() == pytest.approx(sigmoid, abs=1e-5)
    config["sentence_transformers"] = {"activation_fn": "os.system"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a torch.nn.modules class"):
        CrossEncoder(folder, "cpu")


def test_forward_passes_run_on_one_torch_thread_off_the_callers(encoders: dict) -> None:
    encoder = encoders["bert"]
    seen: list[tuple[int, int]] = []
    forward = encoder.model.forward

    def recording(*args, **kwargs):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return forward(*args, **kwargs)

    encoder.model.forward = recording
    try:
        threads_before = torch.get_num_threads()
        asyncio.run(encoder.score(PAIRS))
    finally:
        del encoder.model.forward
    assert seen and all(thread != threading.get_ident() and threads == 1 for thread, threads in seen)
    assert torch.get_num_threads() == threads_before  # the caller's own pool untouched


def test_only_a_one_label_sequence_classifier_is_a_cross_encoder(folders: dict, tmp_path: Path) -> None:
    assert cross_encoder_config(folders["xlm-roberta"])["architectures"] == ["XLMRobertaForSequenceClassification"]
    assert cross_encoder_config(make_tiny_model(tmp_path / "lm")) is None
    two_labels = tmp_path / "two"
    two_labels.mkdir()
    (two_labels / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    assert cross_encoder_config(two_labels) is None  # transformers' default: two labels, a classifier
    assert cross_encoder_config(tmp_path / "nowhere") is None
    with pytest.raises(ValueError, match="not a cross-encoder"):
        CrossEncoder(two_labels)


def test_roberta_reads_two_positions_fewer_than_it_has(folders: dict, tmp_path: Path) -> None:
    """RoBERTa's positions start after its padding index: 66 of them read 64 tokens, whatever the tokenizer
    says (many checkpoints' tokenizers set no limit)."""
    folder = tmp_path / "roberta"
    shutil.copytree(folders["roberta"], folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": int(1e30)}))
    assert json.loads((folder / "config.json").read_text())["max_position_embeddings"] == 66
    assert CrossEncoder(folder, "cpu").max_model_len == 64


def test_batches_group_similar_lengths_within_the_token_budget() -> None:
    assert _batches([10, 50, 12, 11], 36) == [[0, 3, 2], [1]]  # 3 pairs padded to 12 fit 36; 50 goes alone
    assert _batches([10, 50, 12, 11], 35) == [[0, 3], [2], [1]]
    assert _batches([80], 16) == [[0]]  # a pair past the budget still runs, alone
