"""RoPE past engine/model/rope.py's TABLE_POSITIONS (Llama 4 Scout's 10.5M positions): no cos/sin table is built,
each call computes its positions' values, and they are the table's bit for bit (llama3 scaling, M-RoPE's 3 rows,
partial rotary); a checkpoint answers transformers' tokens either way; LongRoPE that long is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.model import rope as rope_module
from engine.model.config import ModelConfig
from engine.model.rope import RotaryEmbedding
from engine.torch_runner import TorchModelRunner
from tests.engine.hf_checkpoints import random_prompt, runner_greedy, save_hf_model, transformers_greedy
from tests.engine.test_model_config import LLAMA_31_8B

CPU = torch.device("cpu")
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


def _rotated(rope: RotaryEmbedding, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    count = positions.shape[-1]
    q, k = torch.randn(count, 4, 128, generator=generator), torch.randn(count, 2, 128, generator=generator)
    return rope(positions, q, k)


@pytest.mark.parametrize("extra", [{"rope_scaling": LLAMA3_SCALING}, {"rope_scaling": None, "partial_rotary_factor": 0.5},
                                   {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}},
                                   {"rope_scaling": None, "mrope_section": [16, 24, 24]}])
def test_computed_cos_sin_are_the_tables_rows(monkeypatch: pytest.MonkeyPatch, extra: dict) -> None:
    mrope = extra.pop("mrope_section", None)
    config = ModelConfig.from_dict({**LLAMA_31_8B, "max_position_embeddings": 4096, **extra})
    if mrope:
        from dataclasses import replace

        config = replace(config, mrope_section=mrope)
    positions = torch.tensor([0, 1, 7, 1023, 1024, 2049, 4095])
    if mrope:
        positions = torch.stack([positions, positions.flip(0), positions // 2])
    table = RotaryEmbedding(config, CPU, torch.bfloat16)
    monkeypatch.setattr(rope_module, "TABLE_POSITIONS", 1024)
    computed = RotaryEmbedding(config, CPU, torch.bfloat16)
    assert table.cos is not None and computed.cos is None
    for a, b in zip(_rotated(table, positions), _rotated(computed, positions), strict=True):
        assert torch.equal(a, b)


def test_scouts_ten_million_positions_build_no_table_and_rotate_as_transformers() -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    raw = {**LLAMA_31_8B, "max_position_embeddings": 10_485_760, "rope_scaling": LLAMA3_SCALING}
    rope = RotaryEmbedding(ModelConfig.from_dict(raw), CPU, torch.float32)
    assert rope.cos is None and rope.sin is None
    far = torch.tensor([[5, 131_073, 10_000_000]])
    hf = LlamaRotaryEmbedding(LlamaConfig(**{k: v for k, v in raw.items() if k != "architectures"}))
    expected_cos, expected_sin = hf(torch.zeros(1, 3, 8), far)
    cos, sin = rope.cos_sin(far[0])
    torch.testing.assert_close(cos, expected_cos[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, expected_sin[0], atol=1e-6, rtol=0)


def test_a_checkpoint_without_a_table_answers_transformers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = save_hf_model("llama3", tmp_path / "llama3")
    prompt = random_prompt()
    monkeypatch.setattr(rope_module, "TABLE_POSITIONS", 16)  # below the tiny model's 256 positions
    runner = TorchModelRunner(model_dir, num_blocks=32, block_size=8, device="cpu")
    assert runner.model.rope.cos is None  # type: ignore[union-attr]
    assert runner_greedy(runner, prompt, 16) == transformers_greedy(model_dir, prompt, 16)


def test_longrope_past_the_table_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.engine.test_gemma3_phi3 import PHI35_MINI

    # A Hub Phi-3.5 config: LongRoPE over 131,072 positions.

    monkeypatch.setattr(rope_module, "TABLE_POSITIONS", 4096)
    with pytest.raises(ValueError, match="LongRoPE over 131072 positions"):
        RotaryEmbedding(ModelConfig.from_dict(PHI35_MINI), CPU, torch.float32)
