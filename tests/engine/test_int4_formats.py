"""4-bit checkpoints (W4A16) in each format the engine reads, packed by tests/engine/int4_checkpoints.py
from the published layouts: compressed-tensors pack-quantized (symmetric or with zero points, per group
or per channel, actorder), AutoAWQ gemm, GPTQ v1 and v2 (with desc_act). Each is served as its float
twin (the same weights dequantized): the same scores and greedy tokens on the fallback's float matmul,
close on the bf16 kernel; and each unsupported config is refused with its reason."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import engine.model.int4_linear as int4_linear
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model.int4_linear import Int4Linear
from engine.model.quant_config import QuantizationError, QuantScheme, checkpoint_scheme
from engine.sampling_params import SamplingParams
from engine.tiny_model import make_tiny_model
from engine.torch_runner import TorchModelRunner
from tests.engine.int4_checkpoints import quantization_config, write_int4_checkpoint


@pytest.fixture(scope="module")
def model_128(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Widths 128 and 256: whole groups of 32 to 128, and shapes the CPU kernel takes."""
    return make_tiny_model(tmp_path_factory.mktemp("int4") / "model", hidden=128, intermediate=256, seed=3)


def run(model_dir: Path, prompt: list[int], kernels: bool = False) -> tuple[torch.Tensor, list[int], TorchModelRunner]:
    """Teacher-forced log-probabilities of `prompt` and 12 greedy tokens after it."""
    previous = int4_linear.KERNELS_ENABLED
    int4_linear.KERNELS_ENABLED = kernels
    try:
        runner = TorchModelRunner(model_dir, 32, 16, device="cpu")
    finally:
        int4_linear.KERNELS_ENABLED = previous
    engine = LLMEngine(EngineConfig(num_blocks=32, max_model_len=512, max_num_batched_tokens=64), runner)
    scored = engine.add_request("score", prompt, SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0))
    greedy = engine.add_request("greedy", prompt[:40], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    return torch.tensor([lp.logprob for lp in scored.prompt_logprobs]), greedy.output_token_ids, runner


def prompt(seed: int = 0, length: int = 120) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000) for _ in range(length)]


CASES = {
    "ct-asym-g64": dict(fmt="compressed-tensors", group=64, symmetric=False),
    "ct-sym-g128": dict(fmt="compressed-tensors", group=128, symmetric=True),
    "ct-sym-channel": dict(fmt="compressed-tensors", group=None, symmetric=True),
    "ct-actorder-g32": dict(fmt="compressed-tensors", group=32, symmetric=True, act_order=True),
    "awq-g64": dict(fmt="awq", group=64),
    "awq-channel": dict(fmt="awq", group=None),
    "gptq-v1-sym-g128": dict(fmt="gptq", group=128, symmetric=True),
    "gptq-v1-asym-desc-act-g32": dict(fmt="gptq", group=32, symmetric=False, act_order=True),
    "gptq-v2-asym-g64": dict(fmt="gptq", group=64, symmetric=False, v1=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_4_bit_checkpoint_serves_as_its_dequantized_float_twin(model_128: Path, tmp_path: Path, case: str) -> None:
    options = CASES[case]
    packed, twin = write_int4_checkpoint(model_128, tmp_path / case, seed=len(case), **options)  # type: ignore[arg-type]
    tokens = prompt(seed=len(case))
    exact, exact_greedy, _ = run(twin, tokens)
    scores, greedy, runner = run(packed, tokens)
    assert runner.quantization == "int4"
    projections = [m for m in runner.model.modules() if isinstance(m, Int4Linear)]
    assert len(projections) == 4 * runner.config.num_layers and all(m.kernel is None for m in projections)
    assert all((m.perm is not None) == bool(options.get("act_order")) for m in projections)
    # The fallback multiplies by the dequantized weight in float32: the float twin's numbers.
    torch.testing.assert_close(scores, exact, rtol=0, atol=2e-4)
    assert greedy == exact_greedy
    # The CPU kernel takes activations in bf16: close, not equal.
    kernel_scores, _, kernel_runner = run(packed, tokens, kernels=True)
    assert all(m.kernel == "cpu" for m in kernel_runner.model.modules() if isinstance(m, Int4Linear))
    error = (kernel_scores - exact).abs()
    assert error.mean().item() < 0.01 * exact.abs().mean().item() and error.max().item() < 0.25


def test_groups_the_kernel_cannot_take_run_on_the_fallback(model_128: Path, tmp_path: Path) -> None:
    """Groups of 16 columns: the tinygemm kernels take 32 to 256, so the weight stays dequantized per call."""
    packed, twin = write_int4_checkpoint(model_128, tmp_path / "g16", fmt="awq", group=16)
    tokens = prompt(seed=5)
    scores, greedy, runner = run(packed, tokens, kernels=True)
    assert all(m.kernel is None for m in runner.model.modules() if isinstance(m, Int4Linear))
    exact, exact_greedy, _ = run(twin, tokens)
    torch.testing.assert_close(scores, exact, rtol=0, atol=2e-4)
    assert greedy == exact_greedy


def test_what_each_format_says_becomes_the_scheme() -> None:
    assert checkpoint_scheme(quantization_config("gptq", 128, True, False, True)) == QuantScheme(
        "int4", source="gptq", group_size=128, symmetric=True, zero_offset=1)
    assert checkpoint_scheme(quantization_config("gptq", None, False, True, False)) == QuantScheme(
        "int4", source="gptq", group_size=None, symmetric=False, act_order=True)
    awq = checkpoint_scheme({"quant_method": "awq", "w_bit": 4, "q_group_size": 128, "version": "GEMM",
                             "modules_to_not_convert": ["visual"]})
    assert (awq.group_size, awq.symmetric, awq.source) == (128, False, "awq")
    assert not awq.quantizes("model.visual.blocks.0.proj") and awq.quantizes("model.layers.0.mlp.up_proj")
    ct = checkpoint_scheme(quantization_config("compressed-tensors", 32, True, True, True))
    assert (ct.group_size, ct.symmetric, ct.act_order, ct.source) == (32, True, True, "compressed-tensors")
    # GPTQ's modules_in_block_to_quantize: what it leaves out stays in full precision.
    partial = checkpoint_scheme({**quantization_config("gptq", 128, True, False, True), "modules_in_block_to_quantize": [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"]]})
    assert partial.quantizes("model.layers.3.self_attn.o_proj") and not partial.quantizes("model.layers.3.mlp.up_proj")


def _ct(**weights: object) -> dict:
    config = quantization_config("compressed-tensors", 128, True, False, True)
    config["config_groups"]["group_0"]["weights"].update(weights)
    return config


@pytest.mark.parametrize(("config", "message"), [
    (_ct(num_bits=8), "pack-quantized 8-bit int weights are not supported"),
    (_ct(num_bits=2), "pack-quantized 2-bit"),
    (_ct(type="float"), "4-bit float"),
    (_ct(strategy="tensor"), "strategy 'tensor'"),
    (_ct(strategy="group", group_size=None), "positive group_size"),
    (_ct(dynamic=True), "dynamic 4-bit"),
    ({**_ct(), "config_groups": {"group_0": {**_ct()["config_groups"]["group_0"], "input_activations": {
        "num_bits": 8, "type": "int", "dynamic": True, "strategy": "token"}}}}, "W4A8"),
    ({"quant_method": "awq", "bits": 4, "version": "gemv"}, "AWQ version 'gemv'"),
    ({"quant_method": "awq", "bits": 4, "version": "gemm", "zero_point": False}, "without zero points"),
    ({"quant_method": "awq", "bits": 8}, "8-bit AWQ"),
    ({"quant_method": "gptq", "bits": 8, "group_size": 128}, "8-bit GPTQ"),
    ({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}, "checkpoint_format 'marlin'"),
    ({"quant_method": "gptq", "bits": 4, "lm_head": True}, "LM head"),
    ({"quant_method": "gptq", "bits": 4, "dynamic": {"-:.*down": {}}}, "per-module overrides"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 0}, "group_size 0"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "quant_method 'bitsandbytes'"),
])
def test_unsupported_4_bit_configs_are_refused_with_the_reason(config: dict, message: str) -> None:
    with pytest.raises(QuantizationError, match=message):
        checkpoint_scheme(config)


def test_bad_4_bit_checkpoints_fail_at_start_with_what_is_wrong(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "model", hidden=64, intermediate=192)
    packed, _ = write_int4_checkpoint(model, tmp_path / "g32", fmt="compressed-tensors", group=32)
    # A group size that does not divide a projection's width is named at start, not in a forward.
    import json

    config = json.loads((packed / "config.json").read_text())
    config["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] = 128
    (packed / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantizationError, match="q_proj's 64 input columns are not whole groups of 128"):
        TorchModelRunner(packed, 4, 16, device="cpu")
    # The wrong layout for the config: GPTQ tensors read as AWQ have the wrong shapes.
    gptq, _ = write_int4_checkpoint(model, tmp_path / "gptq", fmt="gptq", group=32)
    config = json.loads((gptq / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemm"}
    (gptq / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="qweight: expected shape"):
        TorchModelRunner(gptq, 4, 16, device="cpu")
    # desc_act checkpoints whose q/k/v parts disagree on the column order cannot share one input.
    act, _ = write_int4_checkpoint(model, tmp_path / "act", fmt="gptq", group=32, act_order=True)
    from safetensors.torch import load_file, save_file

    tensors = load_file(act / "model.safetensors")
    tensors["model.layers.0.self_attn.k_proj.g_idx"] = torch.arange(64, dtype=torch.int32) // 32
    save_file(tensors, act / "model.safetensors")
    with pytest.raises(QuantizationError, match="different act-order column orders"):
        TorchModelRunner(act, 4, 16, device="cpu")
