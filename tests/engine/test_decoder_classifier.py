"""Decoder classifiers on the engine (engine/model/classifier.py): a tiny random Qwen3ForSequenceClassification
and LlamaForSequenceClassification (one label and three) give transformers' AutoModelForSequenceClassification
logits, in float32, for a batch of prompts of different lengths without padding and again from the prefix
cache; a causal Qwen3 with Qwen3-Reranker's overrides (vLLM's conversion) gives the CausalLM's "yes" logit
minus its "no" logit at the template's last token; heads that cannot be built are refused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

from engine.classifier_config import classifier_head
from engine.config import EngineConfig
from engine.cross_encoder_config import cross_encoder_config
from engine.decoder_scorer import qwen3_reranker_parts
from engine.hf_overrides import parse_hf_overrides, with_hf_overrides
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.tiny_classifier import make_tiny_classifier
from engine.tiny_model import make_tiny_model
from engine.tokenizer import Tokenizer
from engine.torch_runner import TorchModelRunner

POOL = SamplingParams(max_tokens=1, temperature=0, embed=True)
PROMPTS = [list(range(5, 40)), list(range(100, 117)), [7] * 50]
# Tiny vocabularies hold no "yes" or "no" token: two single-byte tokens stand in (the conversion is the same).
RERANKER = {"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["n", "y"],
            "is_original_qwen3_reranker": True}


def pooled(engine: LLMEngine, prompts: list[list[int]]) -> list[torch.Tensor]:
    ids = [f"p{i}-{engine.num_steps}" for i in range(len(prompts))]
    for request_id, prompt in zip(ids, prompts, strict=True):
        engine.add_request(request_id, prompt, POOL)
    out = {}
    while engine.has_unfinished():
        for step in engine.step():
            if step.finished:
                out[step.request_id] = torch.tensor(step.embedding)
    return [out[request_id] for request_id in ids]


def engine_on(model_dir: Path) -> LLMEngine:
    return LLMEngine(EngineConfig(num_blocks=64, max_model_len=512), TorchModelRunner(model_dir, 64, 16, device="cpu"))


@pytest.mark.parametrize(("family", "labels"), [("qwen3", 1), ("qwen3", 3), ("llama", 3), ("llama", 1)])
def test_logits_are_transformers_sequence_classification(tmp_path: Path, family: str, labels: int) -> None:
    from transformers import AutoModelForSequenceClassification

    model_dir = make_tiny_classifier(tmp_path / family, family, labels)
    assert cross_encoder_config(model_dir) is None  # the engine's, not transformers' cross-encoder runner
    engine = engine_on(model_dir)
    got = pooled(engine, PROMPTS)  # one batch of three lengths, no padding
    reference = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    for prompt, logits in zip(PROMPTS, got, strict=True):
        with torch.no_grad():
            expected = reference(torch.tensor([prompt])).logits[0]
        assert logits.shape == (labels,)
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    # Again, from the prefix cache: the same logits, most of each prompt not computed.
    before = engine.stats().blocks.prefix_hit_tokens
    again = pooled(engine, PROMPTS)
    assert engine.stats().blocks.prefix_hit_tokens - before >= 32 + 16 + 48
    for first, second in zip(got, again, strict=True):
        torch.testing.assert_close(first, second, atol=1e-5, rtol=1e-5)


def test_qwen3_reranker_conversion_is_the_yes_minus_no_logit(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    causal = make_tiny_model(tmp_path / "reranker", family="qwen3")
    model_dir = with_hf_overrides(causal, RERANKER, root=tmp_path / "overrides")
    head = classifier_head(model_dir)
    assert head is not None and head.num_labels == 1 and head.two_way and head.qwen3_reranker
    tokenizer = Tokenizer(causal)
    no, yes = tokenizer.token_to_id("n"), tokenizer.token_to_id("y")
    prompts = [tokenizer.encode(first) + tokenizer.encode(second) for first, second in
               (qwen3_reranker_parts("what orders a heap", document) for document in ("heapq keeps the least", "x"))]
    got = pooled(engine_on(model_dir), prompts)
    reference = AutoModelForCausalLM.from_pretrained(causal, dtype=torch.float32).eval()
    for prompt, logits in zip(prompts, got, strict=True):
        with torch.no_grad():
            last = reference(torch.tensor([prompt])).logits[0, -1]
        assert logits.shape == (1,)
        torch.testing.assert_close(logits[0], last[yes] - last[no], atol=1e-4, rtol=1e-4)
        # sigmoid(score) is P(yes) over the two tokens
        two = torch.softmax(last[[no, yes]], dim=0)[1]
        torch.testing.assert_close(torch.sigmoid(logits[0]), two, atol=1e-5, rtol=1e-5)
    assert (causal / "config.json").read_text().count("ForCausalLM")  # the original folder is left as it was


def test_heads_that_cannot_be_built_are_refused(tmp_path: Path) -> None:
    causal = make_tiny_model(tmp_path / "causal", family="qwen3")
    missing = with_hf_overrides(causal, {**RERANKER, "classifier_from_token": ["no", "yes"]}, root=tmp_path / "o")
    with pytest.raises(ValueError, match="not in the vocabulary: \\['no', 'yes'\\]"):
        TorchModelRunner(missing, 8, 16, device="cpu")
    one = with_hf_overrides(causal, {**RERANKER, "classifier_from_token": ["y"]}, root=tmp_path / "o")
    with pytest.raises(ValueError, match="needs two classifier_from_token"):
        classifier_head(one)
    for bad in ("[1, 2]", "{not json", '"text"'):
        with pytest.raises(ValueError, match="must be a JSON object"):
            parse_hf_overrides(bad)
    assert with_hf_overrides(causal, None) == causal.resolve() and classifier_head(causal) is None
    labelled = make_tiny_classifier(tmp_path / "labels", "llama", 2, labels=["negative", "positive"])
    assert classifier_head(labelled).labels == ("negative", "positive")  # type: ignore[union-attr]
    assert json.loads((labelled / "config.json").read_text())["num_labels"] == 2


def test_a_reranks_documents_share_its_query_from_the_prefix_cache(tmp_path: Path) -> None:
    from engine.build import build_engine
    from engine.decoder_scorer import DecoderScorer

    causal = make_tiny_model(tmp_path / "reranker", family="qwen3", layers=1)
    model_dir = with_hf_overrides(causal, RERANKER, root=tmp_path / "overrides")
    head = classifier_head(model_dir)
    assert head is not None
    documents = ["heapq keeps the least item first", "a FIFO queue", "queue", "sort the list in place"]

    async def rerank() -> tuple[list[float], int, int]:
        engine = build_engine(model_dir, num_blocks=64, max_model_len=512)
        scorer = DecoderScorer(engine, model_dir, head)
        await scorer.start()
        try:
            alone = [(await scorer.score([("what orders a heap", d)])).scores[0] for d in documents[:1]]
            before = (await engine.stats()).blocks.prefix_hit_tokens
            scored = await scorer.score([("what orders a heap", d) for d in documents])
            hits = (await engine.stats()).blocks.prefix_hit_tokens - before
            query = qwen3_reranker_parts("what orders a heap", "x")[0]
            return [*alone, *scored.scores], hits, len(Tokenizer(causal).encode(query))
        finally:
            await scorer.shutdown()

    scores, hits, query_length = asyncio.run(rerank())
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)  # from the cache as computed alone
    query_blocks = query_length // 16  # the template's query part fills these blocks whole
    assert query_blocks >= 4 and hits >= len(documents) * query_blocks * 16
