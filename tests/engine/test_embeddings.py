"""Embeddings from the engine: last-token pooling equals transformers' final hidden state, normalised,
for every prompt of a batch and from cached prefixes; served as OpenAI's /v1/embeddings (floats or
base64, Matryoshka `dimensions`, token-id inputs) with 4xx answers for what cannot be embedded."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
import torch

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.tiny_model import make_tiny_model
from engine.torch_runner import TorchModelRunner
from tests.engine.serving import engine_server, sdk

EMBED = SamplingParams(max_tokens=1, temperature=0, embed=True)
PROMPTS = [list(range(5, 40)), list(range(100, 117)), [7] * 50]


def _embed(engine: LLMEngine, prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    for i, prompt in enumerate(prompts):
        engine.add_request(f"e{i}-{len(engine.sequences)}-{engine.num_steps}", prompt, EMBED)
    vectors = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                assert out.embedding is not None and out.num_output_tokens == 1
                vectors[out.request_id] = torch.tensor(out.embedding)
    return dict(sorted(vectors.items()))


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_last_token_pooling_is_transformers_final_hidden_state(tmp_path: Path, family: str) -> None:
    from transformers import AutoModel

    model_dir = make_tiny_model(tmp_path / family, family=family)
    engine = LLMEngine(EngineConfig(num_blocks=64, max_model_len=512), TorchModelRunner(model_dir, 64, 16, device="cpu"))
    got = list(_embed(engine, PROMPTS).values())  # one batch
    reference = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    for prompt, vector in zip(PROMPTS, got, strict=True):
        with torch.no_grad():
            hidden = reference(torch.tensor([prompt])).last_hidden_state[0, -1]
        torch.testing.assert_close(vector, torch.nn.functional.normalize(hidden, dim=-1), atol=1e-5, rtol=1e-5)
        assert vector.norm().item() == pytest.approx(1.0, abs=1e-5)
    # Again, from the prefix cache: the same vectors, most of each prompt not computed.
    before = engine.stats().blocks.prefix_hit_tokens
    again = list(_embed(engine, PROMPTS).values())
    assert engine.stats().blocks.prefix_hit_tokens - before >= 32 + 16 + 48
    for first, second in zip(got, again, strict=True):
        torch.testing.assert_close(first, second, atol=1e-5, rtol=1e-5)


def test_embeddings_api_serves_the_openai_sdk(tiny_model_dir: Path) -> None:
    with engine_server(tiny_model_dir, max_model_len=256) as url:
        client = sdk(url)
        texts = ["the quick brown fox", "jumps over the lazy dog"]
        encoded = client.embeddings.create(model="tiny", input=texts)  # the SDK asks for base64
        floats = client.embeddings.create(model="tiny", input=texts, encoding_format="float")
        short = client.embeddings.create(model="tiny", input=texts[0], dimensions=8, encoding_format="float")
        ids, second = (httpx.post(f"{url}/tokenize", json={"model": "tiny", "prompt": t}).json()["tokens"] for t in texts)
        by_ids = client.embeddings.create(model="tiny", input=ids, encoding_format="float")

        def post(**body: object) -> httpx.Response:
            return httpx.post(f"{url}/v1/embeddings", json={"model": "tiny", "input": "x"} | body)

        refused = {"empty": post(input=""), "none": post(input=[]), "mixed": post(input=["a", 3]),
                   "format": post(encoding_format="hex"), "dimensions": post(dimensions=100_000),
                   "too long": post(input=list(range(300))), "unknown": post(temperature=0.5)}
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model="other", input="x")
    assert [d.index for d in floats.data] == [0, 1] and floats.model == "tiny"
    for a, b in zip(encoded.data, floats.data, strict=True):
        torch.testing.assert_close(torch.tensor(a.embedding), torch.tensor(b.embedding), atol=1e-6, rtol=0)
    full = torch.tensor(floats.data[0].embedding)
    torch.testing.assert_close(torch.tensor(short.data[0].embedding), torch.nn.functional.normalize(full[:8], dim=0),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(by_ids.data[0].embedding), full, atol=1e-6, rtol=0)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == len(ids) + len(second)
    assert by_ids.usage.prompt_tokens == len(ids)
    assert {k: r.status_code for k, r in refused.items()} == dict.fromkeys(refused, 400)
    assert refused["dimensions"].json()["error"]["param"] == "dimensions"
    assert refused["too long"].json()["error"]["param"] == "input"
