"""A Pitstop engine in the gateway's process marked `mode: embedding` serves /v1/embeddings (last-token
pooling) to the openai SDK; a chat to it, or embeddings from an engine model not so marked, are 400s."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import torch

from engine.tiny_model import make_tiny_model
from tests.gateway.harness import gateway_config, running_gateway


def test_an_engine_embedding_model_serves_the_embeddings_api(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny", family="qwen3")

    def local(name: str, **info: str) -> dict:
        return {"model_name": name, "model_info": info,
                "litellm_params": {"model": f"pitstop-local/{name}", "model_dir": str(model_dir), "num_blocks": 64,
                                   "max_model_len": 256}}

    config = gateway_config(tmp_path, [local("embedder", mode="embedding"), local("chat")])
    texts = ["Instruct: find the fox\nQuery: where is it?", "The fox is in the den."]
    with running_gateway(config) as gateway, gateway.openai() as client:
        answer = client.embeddings.create(model="embedder", input=texts)
        assert gateway.state is not None
        backend = next(d.backend for d in gateway.state.pool.deployments if d.model_name == "embedder")
        tokens = [backend.engine.encode(t) for t in texts]  # type: ignore[attr-defined]
        with pytest.raises(openai.BadRequestError, match="embeddings only for a model marked|serves no"):
            client.embeddings.create(model="chat", input="x")
        with pytest.raises(openai.BadRequestError, match="/v1/embeddings"):
            client.chat.completions.create(model="embedder", messages=[{"role": "user", "content": "hi"}])
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    for ids, item in zip(tokens, answer.data, strict=True):
        with torch.no_grad():
            hidden = reference(torch.tensor([ids])).last_hidden_state[0, -1]
        torch.testing.assert_close(torch.tensor(item.embedding), torch.nn.functional.normalize(hidden, dim=-1),
                                   atol=1e-5, rtol=1e-5)
    assert answer.usage.prompt_tokens == sum(len(ids) for ids in tokens)


def test_a_vector_store_embedded_by_an_engine_model(tmp_path: Path) -> None:
    """`vector_stores.embedding_model` naming an engine embedding model: chunks and queries embedded by
    the engine; a query equal to a file's text finds that file first."""
    from tests.gateway.test_gateway_vector_stores import completed_store, upload

    model_dir = make_tiny_model(tmp_path / "tiny", family="qwen3")
    embedder = {"model_name": "embedder", "model_info": {"mode": "embedding"},
                "litellm_params": {"model": "pitstop-local/embedder", "model_dir": str(model_dir), "num_blocks": 128,
                                   "max_model_len": 1024}}
    config = gateway_config(tmp_path, [embedder], vector_stores={"embedding_model": "embedder"})
    docs = {"coast.txt": "Lighthouses guide ships along dangerous coasts at night.",
            "bread.txt": "Sourdough needs a starter, flour, water and patience."}
    with running_gateway(config) as gateway, gateway.openai() as client:
        store_id = completed_store(client, list(upload(client, docs).values()))
        found = client.vector_stores.search(store_id, query=docs["bread.txt"])
        rows = [row for row in gateway.rows() if row["endpoint"] == "embedding"]
    assert found.data[0].filename == "bread.txt"
    assert rows and {row["model"] for row in rows} == {"embedder"}
