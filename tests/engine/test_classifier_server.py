"""`pitstop engine serve` on a decoder classifier (engine/server/classifier_app.py) over a real socket, with httpx
(the openai SDK has no classify, score or rerank): vLLM's /classify (labels from id2label, softmax probs,
num_classes, token-id inputs), /score and /v1/rerank for a one-label model with sigmoid(logit) scores equal to
transformers', a shared query prefix-cached; bad input a 4xx in OpenAI's shape; and the CLI with --hf-overrides
serving a causal Qwen3 as a Qwen3-Reranker."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from engine.build import build_engine
from engine.classifier_config import classifier_head
from engine.decoder_scorer import qwen3_reranker_parts
from engine.server.classifier_app import create_classifier_app
from engine.tiny_classifier import make_tiny_classifier
from engine.tiny_model import make_tiny_model
from engine.tokenizer import Tokenizer
from tests.engine.cross_encoders import DOCUMENTS, QUERY
from tests.engine.serving import engine_serve_process, serve_in_thread

LABELS = ["negative", "neutral", "positive"]


def serve(model_dir: Path) -> Iterator[httpx.Client]:
    head = classifier_head(model_dir)
    assert head is not None
    engine = build_engine(model_dir, num_blocks=128, block_size=16, max_model_len=96)
    with serve_in_thread(create_classifier_app(engine, model_dir, head, "cls")) as url, \
            httpx.Client(base_url=url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_classifier(tmp_path_factory.mktemp("cls") / "three", "qwen3", 3, labels=LABELS)


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_classifier(tmp_path_factory.mktemp("cls") / "one", "llama", 1, seed=1)


@pytest.fixture(scope="module")
def three_client(three: Path) -> Iterator[httpx.Client]:
    yield from serve(three)


@pytest.fixture(scope="module")
def one_client(one: Path) -> Iterator[httpx.Client]:
    yield from serve(one)


def reference_logits(model_dir: Path, prompts: list[list[int]]) -> list[list[float]]:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].tolist() for ids in prompts]


@pytest.mark.parametrize("path", ["/classify", "/v1/classify"])
def test_classify_answers_as_vllm(three_client: httpx.Client, three: Path, path: str) -> None:
    tokenizer = Tokenizer(three)
    texts = ["a fine heap of items", "queue"]
    answer = three_client.post(path, json={"model": "cls", "input": [*texts, tokenizer.encode("queue")]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = reference_logits(three, [tokenizer.encode(t, add_special_tokens=True) for t in texts]
                                + [tokenizer.encode("queue")])
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and body["model"] == "cls"
    for item, logits in zip(body["data"], expected, strict=True):
        probs = torch.softmax(torch.tensor(logits), dim=0)
        assert item["probs"] == pytest.approx(probs.tolist(), abs=1e-5) and item["num_classes"] == 3
        assert item["label"] == LABELS[int(probs.argmax())]
    assert body["id"].startswith("classify-") and body["usage"]["prompt_tokens"] > 0
    single = three_client.post(path, json={"model": "cls", "input": texts[0]}).json()
    assert single["data"][0]["probs"] == pytest.approx(body["data"][0]["probs"], abs=1e-5)


def test_a_one_label_model_scores_and_reranks_with_a_shared_query(one_client: httpx.Client, one: Path) -> None:
    tokenizer = Tokenizer(one)
    prompts = [tokenizer.encode(QUERY, add_special_tokens=True) + tokenizer.encode(d) for d in DOCUMENTS]
    expected = [1 / (1 + math.exp(-row[0])) for row in reference_logits(one, prompts)]
    rerank = one_client.post("/v1/rerank", json={"model": "cls", "query": QUERY, "documents": DOCUMENTS, "top_n": 3})
    assert rerank.status_code == 200, rerank.text
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])[:3]
    assert [r["index"] for r in rerank.json()["results"]] == order
    assert [r["relevance_score"] for r in rerank.json()["results"]] == pytest.approx([expected[i] for i in order],
                                                                                     abs=1e-5)
    score = one_client.post("/score", json={"model": "cls", "text_1": QUERY, "text_2": DOCUMENTS}).json()
    assert [d["score"] for d in score["data"]] == pytest.approx(expected, abs=1e-5)
    assert score["usage"]["prompt_tokens"] == sum(map(len, prompts))
    classify = one_client.post("/classify", json={"model": "cls", "input": [prompts[0]]}).json()["data"][0]
    assert classify["probs"] == pytest.approx([expected[0]], abs=1e-5) and classify["num_classes"] == 1


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/classify", {"model": "cls", "input": ""}, 400, "input"),
    ("/classify", {"model": "cls", "input": []}, 400, "input"),
    ("/classify", {"model": "cls", "input": ["a", 3]}, 400, "input"),
    ("/classify", {"model": "cls", "input": list(range(200))}, 400, "input"),
    ("/classify", {"model": "cls", "input": "a", "temperature": 1}, 400, "temperature"),
    ("/classify", {"model": "cls", "input": "a", "truncate_prompt_tokens": 0}, 400, "truncate_prompt_tokens"),
    ("/classify", {"input": "a"}, 400, "model"),
    ("/classify", {"model": "other", "input": "a"}, 404, "model"),
    ("/v1/rerank", {"model": "cls", "query": "q", "documents": ["a"]}, 400, "model"),  # three labels: no score
    ("/v1/score", {"model": "cls", "text_1": "q", "text_2": "a"}, 400, "model"),
])
def test_bad_input_is_a_4xx_naming_the_field(three_client: httpx.Client, path: str, body: dict, status: int,
                                             param: str) -> None:
    answer = three_client.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["param"] == param


def test_a_pair_past_the_model_length_is_a_400_and_truncation_serves_it(one_client: httpx.Client) -> None:
    body = {"model": "cls", "query": QUERY, "documents": ["short", " ".join(DOCUMENTS * 3)]}
    refused = one_client.post("/v1/rerank", json=body)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "documents"
    served = one_client.post("/v1/rerank", json={**body, "truncate_prompt_tokens": -1})
    assert served.status_code == 200 and len(served.json()["results"]) == 2
    generation = one_client.post("/v1/chat/completions", json={"model": "cls", "messages": []})
    assert generation.status_code == 400 and "/classify" in generation.json()["error"]["message"]


def test_the_cli_serves_a_qwen3_reranker_with_hf_overrides(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    causal = make_tiny_model(tmp_path / "reranker", family="qwen3", layers=1)
    overrides = '{"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["n", "y"], ' \
                '"is_original_qwen3_reranker": true}'
    with engine_serve_process("--model", str(causal), "--hf-overrides", overrides, "--served-model-name", "rr",
                              "--num-blocks", "64", "--log-level", "warning") as (url, process):
        answer = httpx.post(f"{url}/v1/rerank", timeout=30, json={"model": "rr", "query": QUERY,
                                                                  "documents": DOCUMENTS[:3]})
        assert answer.status_code == 200, answer.text
    assert process.returncode == 0
    tokenizer = Tokenizer(causal)
    no, yes = tokenizer.token_to_id("n"), tokenizer.token_to_id("y")
    reference = AutoModelForCausalLM.from_pretrained(causal, dtype=torch.float32).eval()
    expected = []
    for document in DOCUMENTS[:3]:
        first, second = qwen3_reranker_parts(QUERY, document)
        with torch.no_grad():
            last = reference(torch.tensor([tokenizer.encode(first) + tokenizer.encode(second)])).logits[0, -1]
        expected.append(torch.softmax(last[[no, yes]], dim=0)[1].item())
    results = answer.json()["results"]
    assert [r["relevance_score"] for r in results] == pytest.approx([expected[r["index"]] for r in results], abs=1e-5)
    assert [r["index"] for r in results] == sorted(range(3), key=lambda i: -expected[i])


def test_truncate_prompt_tokens_keeps_the_last_tokens(three_client: httpx.Client, three: Path) -> None:
    ids = [(7 * i) % 900 + 5 for i in range(150)]  # past the 95 tokens the model reads
    assert three_client.post("/classify", json={"model": "cls", "input": [ids]}).status_code == 400
    answer = three_client.post("/classify", json={"model": "cls", "input": [ids], "truncate_prompt_tokens": 20})
    assert answer.status_code == 200, answer.text
    expected = torch.softmax(torch.tensor(reference_logits(three, [ids[-20:]])[0]), dim=0)
    assert answer.json()["data"][0]["probs"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert answer.json()["usage"]["prompt_tokens"] == 20
