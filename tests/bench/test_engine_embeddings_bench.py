"""bench/engine_embeddings.py's two paths embed the same inputs alike, and its inputs share the
instruction prefix on every other one."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.engine_embeddings import INSTRUCTION_TOKENS, engine_embed, make_inputs, transformers_embed
from engine.tiny_model import make_tiny_model


def test_engine_and_padded_transformers_give_the_same_vectors(tmp_path: Path) -> None:
    from transformers import AutoModel

    model_dir = make_tiny_model(tmp_path / "tiny", family="qwen3", max_position_embeddings=1024)
    inputs = [x[:200] for x in make_inputs(6, seed=1, vocab=1024)]
    assert inputs[0][:INSTRUCTION_TOKENS] == inputs[2][:INSTRUCTION_TOKENS] != inputs[1][:INSTRUCTION_TOKENS]
    reference = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    _, padded = transformers_embed(reference, inputs, batch_size=4)
    for caching in (True, False):
        seconds, engine = engine_embed(model_dir, inputs, prefix_caching=caching)
        assert seconds > 0
        torch.testing.assert_close(torch.tensor(engine), torch.tensor(padded), atol=1e-5, rtol=1e-5)
