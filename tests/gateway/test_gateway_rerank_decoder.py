"""/v1/rerank through the gateway on decoder scorers (engine/decoder_scorer.py), over real sockets with httpx: a
causal Qwen3 made a Qwen3-Reranker by `hf_overrides` in the gateway's process (`pitstop-local/`, `mode:
rerank`: an engine of the gateway's own behind gateway/backends/cross_encoder.py), and a one-label
LlamaForSequenceClassification served by `pitstop engine serve`'s classifier app, reached as a vLLM server
(`hosted_vllm/`) and as a Pitstop engine (`pitstop-engine/`). Each way the scores are transformers' own, ordered
as vLLM's; a pair past the model's length is a 400; the config refuses heads it cannot rank with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from engine.build import build_engine
from engine.classifier_config import classifier_head
from engine.decoder_scorer import qwen3_reranker_parts
from engine.server.classifier_app import create_classifier_app
from engine.tiny_classifier import make_tiny_classifier
from engine.tiny_cross_encoder import make_tiny_cross_encoder
from engine.tiny_model import make_tiny_model
from engine.tokenizer import Tokenizer
from gateway.config import ConfigError, parse_settings
from gateway.deployment_build import make_backend
from tests.engine.cross_encoders import DOCUMENTS, QUERY
from tests.engine.serving import serve_in_thread
from tests.gateway.harness import PRICE_IN, Gateway, gateway_config, running_gateway

RERANK = {"mode": "rerank", "input_cost_per_token": PRICE_IN, "output_cost_per_token": 0.0}
# Tiny vocabularies hold no "yes" or "no" token: two single-byte tokens stand in.
RERANKER = {"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["n", "y"],
            "is_original_qwen3_reranker": True}


def local(name: str, folder: Path, **params: object) -> dict:
    return {"model_name": name, "model_info": RERANK,
            "litellm_params": {"model": f"pitstop-local/{name}", "model_dir": str(folder), **params}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gw-dec")
    return {"qwen3": make_tiny_model(root / "qwen3", family="qwen3", layers=1),
            "llama": make_tiny_classifier(root / "llama", "llama", 1, layers=1, seed=2)}


def expected_scores(folders: dict[str, Path]) -> dict[str, list[float]]:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    qwen3, llama = Tokenizer(folders["qwen3"]), Tokenizer(folders["llama"])
    no, yes = qwen3.token_to_id("n"), qwen3.token_to_id("y")
    causal = AutoModelForCausalLM.from_pretrained(folders["qwen3"], dtype=torch.float32).eval()
    classifier = AutoModelForSequenceClassification.from_pretrained(folders["llama"], dtype=torch.float32).eval()
    reranked, classified = [], []
    with torch.no_grad():
        for document in DOCUMENTS:
            first, second = qwen3_reranker_parts(QUERY, document)
            last = causal(torch.tensor([qwen3.encode(first) + qwen3.encode(second)])).logits[0, -1]
            reranked.append(torch.softmax(last[[no, yes]], dim=0)[1].item())
            ids = llama.encode(QUERY, add_special_tokens=True) + llama.encode(document)
            classified.append(torch.sigmoid(classifier(torch.tensor([ids])).logits[0, 0]).item())
    return {"in-process": reranked, "vllm-direct": classified, "engine-http": classified}


@pytest.fixture(scope="module")
def gw(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    llama = folders["llama"]
    engine = build_engine(llama, num_blocks=64, max_model_len=64)
    with serve_in_thread(create_classifier_app(engine, llama, classifier_head(llama), "llama-rr")) as url:  # type: ignore[arg-type]
        remote = [{"model_name": name, "model_info": RERANK,
                   "litellm_params": {"model": f"{provider}/llama-rr", "api_base": f"{url}/v1"}}
                  for name, provider in (("vllm-direct", "hosted_vllm"), ("engine-http", "pitstop-engine"))]
        raw = gateway_config(tmp_path_factory.mktemp("gw-dec-config"),
                             [local("in-process", folders["qwen3"], hf_overrides=RERANKER), *remote])
        with running_gateway(raw) as gateway:
            yield gateway


@pytest.mark.parametrize("model", ["in-process", "vllm-direct", "engine-http"])
def test_decoder_scorers_rank_with_transformers_scores(gw: Gateway, folders: dict[str, Path], model: str) -> None:
    expected = expected_scores(folders)[model]
    with gw.http() as http:
        answer = http.post("/v1/rerank", json={"model": model, "query": QUERY, "documents": DOCUMENTS, "top_n": 4})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])[:4]
    assert [r["index"] for r in body["results"]] == order
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([expected[i] for i in order], abs=1e-5)
    row = gw.row(answer.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["status"], row["model"]) == ("rerank", "ok", model)
    assert row["prompt_tokens"] == body["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("model", ["in-process", "vllm-direct"])
def test_a_pair_past_the_models_length_is_a_400_unless_truncated(gw: Gateway, model: str) -> None:
    body = {"model": model, "query": QUERY, "documents": ["short", " ".join(DOCUMENTS * 40)]}
    with gw.http() as http:
        refused = http.post("/v1/rerank", json=body)
        truncated = http.post("/v1/rerank", json={**body, "truncate_prompt_tokens": -1})
    assert refused.status_code == 400, refused.text
    assert truncated.status_code == 200 and len(truncated.json()["results"]) == 2


def test_the_config_refuses_heads_it_cannot_rank_with(folders: dict[str, Path], tmp_path: Path) -> None:
    three = make_tiny_classifier(tmp_path / "three", "qwen3", 3, layers=1)
    for entry, match in ((local("rr", three), "classifies into 3 labels"),
                         (local("rr", folders["qwen3"], hf_overrides={**RERANKER, "classifier_from_token": ["no", "yes"]}),
                          "not in the vocabulary"),
                         ({"model_name": "chat", "litellm_params": {"model": "pitstop-local/chat",
                                                                    "model_dir": str(folders["llama"])}},
                          "sequence classifier of 1 label.*set model_info.mode: rerank"),
                         ({"model_name": "chat", "litellm_params": {"model": "pitstop-local/chat",
                                                                    "model_dir": str(three)}},
                          "sequence classifier of 3 label.*/classify serves it"),
                         (local("rr", make_tiny_cross_encoder(tmp_path / "bert", "bert", layers=1, hidden=32),
                                num_blocks=8), "a cross-encoder has no KV cache: num_blocks do not apply")):
        settings = parse_settings(gateway_config(tmp_path, [entry]))
        with pytest.raises(ConfigError, match=match):
            make_backend(settings.model_list[0], settings)


def test_a_decoder_rerankers_engine_takes_its_sizing_keys(folders: dict[str, Path], tmp_path: Path) -> None:
    entry = local("rr", folders["qwen3"], hf_overrides=RERANKER, num_blocks=24, max_model_len=48)
    settings = parse_settings(gateway_config(tmp_path, [entry]))
    backend = make_backend(settings.model_list[0], settings)
    engine = backend.encoder.engine  # type: ignore[attr-defined]
    assert (engine.engine.config.num_blocks, engine.max_model_len) == (24, 48)
