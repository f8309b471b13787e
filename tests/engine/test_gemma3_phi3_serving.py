"""Gemma 3 and Phi-3 through the rest of the engine: `pitstop engine make-tiny-model --family gemma3|phi3`
writes folders transformers loads as those families and agrees with; served, they answer the openai SDK and
reuse a repeated prompt's blocks; two tensor-parallel ranks generate as transformers does (Phi-3's fused
tensors cut after their split); int8 weights at load score close to full precision; `pitstop engine
quantize` writes Phi-3's fused projections as quantized parts; and a LoRA adapter on Phi-3's fused
projections is the adapter on their parts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model.config import ModelConfig
from engine.model.quant_linear import QuantizedLinear
from engine.sampling_params import SamplingParams
from engine.tiny_model import make_tiny_model
from engine.torch_runner import TorchModelRunner
from tests.engine.hf_checkpoints import runner_greedy, save_hf_model, transformers_greedy
from tests.engine.serving import engine_server, sdk

FAMILIES = {"gemma3": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM"}


def _prompt(length: int, seed: int = 0, vocab: int = 1000) -> list[int]:
    """Not token 0: transformers' `generate` takes it for padding (pad_token_id=0) and masks it out."""
    rng = random.Random(seed)
    return [rng.randrange(1, vocab) for _ in range(length)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_families")
    return {family: make_tiny_model(root / family, layers=2, hidden=64, family=family) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_families_are_real_models_that_serve_and_reuse_prefixes(tiny: dict[str, Path], family: str) -> None:
    from transformers import AutoModelForCausalLM

    model_dir = tiny[family]
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert type(reference).__name__ == FAMILIES[family]
    config = ModelConfig.from_dir(model_dir)
    assert config.num_params() == sum(p.numel() for p in reference.parameters())
    if family == "gemma3":  # layer 0 slides over 16 tokens, layer 1 reads everything: blocks stay
        assert config.sliding_layers == (0,) and config.sliding_window == 16
    prompt = _prompt(30)
    expected = transformers_greedy(model_dir, prompt, 12)
    runner = TorchModelRunner(model_dir, num_blocks=32, block_size=8, device="cpu")
    assert runner.attention_window is None
    assert len(set(expected)) > 3 and runner_greedy(runner, prompt, 12) == expected

    text = "def f(x):\n    return x * 2\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n" * 2
    with engine_server(model_dir, model_name=family) as url:
        client = sdk(url)
        chat = client.chat.completions.create(model=family, messages=[{"role": "user", "content": "Weather?"}],
                                              max_tokens=8, temperature=0)
        assert chat.choices[0].message.content and chat.usage.completion_tokens == 8
        first = client.completions.create(model=family, prompt=text, max_tokens=6, temperature=0)
        again = client.completions.create(model=family, prompt=text, max_tokens=6, temperature=0)
    assert again.choices[0].text == first.choices[0].text
    details = again.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == first.usage.prompt_tokens // 16 * 16 > 0


@pytest.mark.parametrize("kind", ["gemma3", "phi3_longrope"])
def test_two_ranks_generate_as_transformers(tmp_path: Path, kind: str) -> None:
    """Each rank takes its heads and widths of Phi-3's fused q/k/v and gate/up (split, then cut), and of
    Gemma 3's projections (its norms whole); transformers' checkpoints in shards of 100 KB."""
    model_dir = save_hf_model(kind, tmp_path / kind)
    prompt = _prompt(40, vocab=300)
    runner = TorchModelRunner(model_dir, 16, 16, device="cpu", tensor_parallel_size=2)
    try:
        assert runner.config.num_heads == 3  # this rank's half of 6
        assert runner_greedy(runner, prompt, 10) == transformers_greedy(model_dir, prompt, 10)
    finally:
        runner.close()


def _score(model_dir: Path, prompt: list[int], quantization: str | None = None,
           lora: tuple[str, Path] | None = None) -> torch.Tensor:
    runner = TorchModelRunner(model_dir, 32, 16, device="cpu", quantization=quantization)
    engine = LLMEngine(EngineConfig(num_blocks=32, max_model_len=512, max_num_batched_tokens=64), runner)
    if lora is not None:
        engine.add_lora(lora[0], str(lora[1]))
    seq = engine.add_request("score", prompt, SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0),
                             lora=lora[0] if lora else None)
    while engine.has_unfinished():
        engine.step()
    return torch.tensor([lp.logprob for lp in seq.prompt_logprobs])


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_weights_at_load_score_close(tiny: dict[str, Path], family: str) -> None:
    prompt = _prompt(100, seed=1)
    exact = _score(tiny[family], prompt)
    error = (_score(tiny[family], prompt, "int8") - exact).abs().mean().item()
    assert 0 < error < 0.05 * exact.abs().mean().item()
    runner = TorchModelRunner(tiny[family], 4, 16, device="cpu", quantization="int8")
    packed = runner.model.model.layers[0].self_attn.qkv_proj
    assert isinstance(packed, QuantizedLinear) and packed.output_sizes == [64, 32, 32]


def test_pitstop_engine_quantize_writes_phi3s_fused_projections_as_quantized_parts(tiny: dict[str, Path],
                                                                                   tmp_path: Path) -> None:
    """An int8 checkpoint scores exactly as int8 at load; an int4 one (groups of 32) loads and scores close."""
    from safetensors import safe_open

    from engine.quantize_checkpoint import quantize_checkpoint

    prompt = _prompt(100, seed=1)
    int8 = quantize_checkpoint(tiny["phi3"], tmp_path / "int8", "int8")
    assert torch.equal(_score(int8, prompt), _score(tiny["phi3"], prompt, "int8"))
    int4 = quantize_checkpoint(tiny["phi3"], tmp_path / "int4", "int4", group_size=32)
    with safe_open(str(int4 / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert "model.layers.0.self_attn.k_proj.weight_packed" in names and not any("qkv_proj" in n for n in names)
    exact = _score(tiny["phi3"], prompt)
    assert (_score(int4, prompt) - exact).abs().mean() < 0.1 * exact.abs().mean()


def test_a_lora_adapter_on_phi3s_fused_projections_is_the_adapter_on_their_parts(tiny: dict[str, Path],
                                                                                  tmp_path: Path) -> None:
    """PEFT targets Phi-3's `qkv_proj` and `gate_up_proj` as they are stored: the same factors written per
    part (A shared, B's rows cut) score the same, and differently from the base model."""
    model_dir, rank = tiny["phi3"], 4
    gen = torch.Generator().manual_seed(0)
    fused, parts = {}, {}
    for layer in range(2):
        for block, projection, sizes, in_size in (("self_attn", "qkv_proj", {"q_proj": 64, "k_proj": 32, "v_proj": 32}, 64),
                                                  ("mlp", "gate_up_proj", {"gate_proj": 192, "up_proj": 192}, 64)):
            a, b = torch.randn(rank, in_size, generator=gen) * 0.2, torch.randn(sum(sizes.values()), rank, generator=gen) * 0.2
            prefix = f"base_model.model.model.layers.{layer}.{block}"
            fused |= {f"{prefix}.{projection}.lora_A.weight": a, f"{prefix}.{projection}.lora_B.weight": b}
            for name, rows in zip(sizes, b.split(list(sizes.values())), strict=True):
                parts |= {f"{prefix}.{name}.lora_A.weight": a.clone(), f"{prefix}.{name}.lora_B.weight": rows.clone()}
    adapters = {}
    for name, tensors in (("fused", fused), ("parts", parts)):
        folder = tmp_path / name
        folder.mkdir()
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 8}))
        adapters[name] = folder
    prompt = _prompt(40, seed=2)
    by_fused, by_parts = (_score(model_dir, prompt, lora=(name, adapters[name])) for name in ("fused", "parts"))
    torch.testing.assert_close(by_fused, by_parts, rtol=0, atol=1e-5)
    assert (by_fused - _score(model_dir, prompt)).abs().mean() > 0.01
