"""W8A8 weight quantization (`--quantization int8|fp8`, compressed-tensors and fp8 checkpoints): the
rounding, the 8-bit matmuls against a float64 reference, the runner's one-byte weights and its scores,
checkpoints written by `pitstop engine quantize` and by hand, refusals, LoRA on a quantized base,
what the roofline and a simulation price, and an engine served over HTTP."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.build import build_engine
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model.quant_config import QuantizationError, QuantScheme, checkpoint_scheme, serving_scheme
from engine.model.quant_linear import QuantizedLinear, quantize_rows
from engine.quantize_checkpoint import quantization_config, quantize_checkpoint
from engine.roofline import RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.step_time import LinearStepTime, save_profile
from engine.tiny_lora import make_tiny_lora
from engine.torch_runner import TorchModelRunner
from gateway.cli import main as cli_main
from tests.engine.serving import engine_server, sdk

INT8, FP8 = QuantScheme("int8"), QuantScheme("fp8")


@pytest.mark.parametrize("scheme", [INT8, FP8])
def test_rows_are_scaled_to_the_formats_maximum_and_read_back_within_its_rounding(scheme: QuantScheme) -> None:
    weight = torch.randn(48, 64) * torch.logspace(-3, 1, 48)[:, None]  # rows four decades apart
    quantized, scale = quantize_rows(weight, scheme)
    assert quantized.dtype == scheme.weight_dtype and scale.dtype == torch.float32
    assert torch.equal(quantized.float().abs().amax(dim=1), torch.full((48,), scheme.quant_max))
    back = quantized.float() * scale[:, None]
    if scheme.method == "int8":  # uniform steps: half a step at most
        assert ((back - weight).abs() <= scale[:, None] / 2 + 1e-7).all()
    else:  # e4m3 keeps 3 mantissa bits: within 1/16 of the value, or the smallest step near zero
        assert ((back - weight).abs() <= weight.abs() / 16 + scale[:, None] * 2**-9).all()


@pytest.mark.parametrize("scheme", [INT8, FP8])
def test_a_quantized_projection_multiplies_the_8_bit_values_exactly(scheme: QuantScheme) -> None:
    """Its output is (8-bit x) . (8-bit w) x row scale x column scale, against float64; and close to the
    full-precision product (int8 closer than fp8)."""
    torch.manual_seed(0)
    weight, x = torch.randn(40, 64), torch.randn(7, 64) * torch.logspace(-2, 2, 7)[:, None]
    layer = QuantizedLinear(64, [24, 16], bias=True, scheme=scheme, dtype=torch.float32)
    assert layer.load_part("weight", 0, weight[:24]) == ["weight:0", "weight_scale:0"]
    layer.load_part("weight", 1, weight[24:])
    layer.load_part("bias", 0, torch.ones(24))
    layer.load_part("bias", 1, torch.zeros(16))
    # Part by part is the whole at once: every row has its own scale.
    whole, whole_scale = quantize_rows(weight, scheme)
    assert torch.equal(layer.weight.float(), whole.float()) and torch.equal(layer.weight_scale, whole_scale)
    out = layer(x)
    x_scale = x.abs().amax(dim=1, keepdim=True) / scheme.quant_max
    x_q, _ = quantize_rows(x, scheme)
    reference = (x_q.double() @ whole.double().T) * x_scale.double() * whole_scale.double()
    reference[:, :24] += 1
    torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-6 * reference.abs().max().item())
    exact = x @ weight.T
    exact[:, :24] += 1
    error = ((out - exact).abs().amax(dim=1) / exact.abs().amax(dim=1)).max().item()
    assert 0 < error < (0.03 if scheme.method == "int8" else 0.12)
    left, right = layer.split(out)
    assert left.shape == (7, 24) and right.shape == (7, 16)


def test_a_static_input_scale_quantizes_every_row_with_it_and_clamps() -> None:
    scheme = QuantScheme("int8", static_input=True, source="compressed-tensors")
    layer = QuantizedLinear(8, [4, 4], bias=False, scheme=scheme, dtype=torch.float32)
    weight = torch.randn(8, 8)
    stored, scale = quantize_rows(weight, scheme)
    for part in (0, 1):
        layer.load_part("weight", part, stored[part * 4:(part + 1) * 4])
        layer.load_part("weight_scale", part, scale[part * 4:(part + 1) * 4, None])
        layer.load_part("input_scale", part, torch.tensor([0.01, 0.02][part]))
    x = torch.tensor([[0.5] * 8, [9.0] * 8])  # 0.5 / 0.02 = 25 steps; 9.0 / 0.02 = 450 clamps at 127
    expected = torch.tensor([[25.0] * 8, [127.0] * 8]).double() @ stored.double().T * 0.02 * scale.double()
    torch.testing.assert_close(layer(x).double(), expected)
    with pytest.raises(ValueError, match="stored in torch.float32"):  # a checkpoint's weights must be 8-bit
        layer.load_part("weight", 0, weight[:4])


def _score(model_dir: Path, prompt: list[int], quantization: str | None = None,
           lora: tuple[str, Path] | None = None) -> torch.Tensor:
    runner = TorchModelRunner(model_dir, 32, 16, device="cpu", quantization=quantization)
    engine = LLMEngine(EngineConfig(num_blocks=32, max_model_len=512, max_num_batched_tokens=64), runner)
    if lora is not None:
        engine.add_lora(*map(str, lora))
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0)
    seq = engine.add_request("score", prompt, params, lora=lora[0] if lora else None)
    while engine.has_unfinished():
        engine.step()
    return torch.tensor([lp.logprob for lp in seq.prompt_logprobs])


def _prompt(length: int = 160, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000) for _ in range(length)]


def test_a_quantized_runner_holds_one_byte_a_projection_weight_and_scores_close(tiny_model_dir: Path) -> None:
    prompt = _prompt()
    exact = _score(tiny_model_dir, prompt)
    errors = {method: (_score(tiny_model_dir, prompt, method) - exact).abs().mean().item() for method in ("int8", "fp8")}
    assert 0 < errors["int8"] < errors["fp8"] < 0.05 * exact.abs().mean().item()
    full = TorchModelRunner(tiny_model_dir, 4, 16, device="cpu")
    runner = TorchModelRunner(tiny_model_dir, 4, 16, device="cpu", quantization="int8")
    assert runner.quantization == "int8" and full.quantization is None
    projections = [m for m in runner.model.modules() if isinstance(m, QuantizedLinear)]
    assert len(projections) == 4 * runner.config.num_layers  # q/k/v and gate/up packed, o, down
    packed = runner.model.model.layers[0].self_attn.qkv_proj
    assert packed.weight.dtype == torch.int8 and packed.output_sizes == [64, 32, 32]
    weight_bytes = sum(p.numel() * p.element_size() for m in projections for p in (m.weight, m.weight_scale))
    full_bytes = sum(p.numel() * p.element_size() for n, p in full.model.named_parameters() if n.endswith("_proj.weight"))
    assert weight_bytes < 0.3 * full_bytes  # a byte for four, plus a scale a row


@pytest.mark.parametrize("method", ["int8", "fp8"])
def test_pitstop_engine_quantize_writes_a_checkpoint_that_loads_as_the_runtime_scheme(
        tiny_model_dir: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / method
    assert cli_main(["engine", "quantize", "--model", str(tiny_model_dir), "--out", str(out),
                     "--quantization", method]) == 0
    config = json.loads((out / "config.json").read_text())
    assert checkpoint_scheme(config["quantization_config"]) == QuantScheme(method, source="compressed-tensors",
                                                                           ignore=("lm_head",))
    tensors = load_file(out / "model.safetensors")
    assert tensors["model.layers.0.self_attn.q_proj.weight"].dtype == QuantScheme(method).weight_dtype
    assert tensors["model.layers.0.self_attn.q_proj.weight_scale"].shape == (64, 1)
    assert tensors["lm_head.weight"].dtype == torch.float32 and (out / "tokenizer.json").exists()
    # No flag needed; the flag naming the same scheme is accepted; another is refused.
    prompt = _prompt(96, seed=1)
    stored = _score(out, prompt)
    assert torch.equal(stored, _score(tiny_model_dir, prompt, method)) and torch.equal(stored, _score(out, prompt, method))
    other = "fp8" if method == "int8" else "int8"
    with pytest.raises(QuantizationError, match=f"quantized as {method}"):
        TorchModelRunner(out, 4, 16, device="cpu", quantization=other)
    assert cli_main(["engine", "quantize", "--model", str(out), "--out", str(tmp_path / "again")]) == 2


def test_an_fp8_checkpoint_with_per_tensor_weights_and_static_inputs(tiny_model_dir: Path, tmp_path: Path) -> None:
    """AutoFP8's layout (quant_method fp8, one weight scale and one input scale a projection): each
    part keeps its weight scale, the packed projection quantizes its input with its parts' largest."""
    out = tmp_path / "fp8_static"
    shutil.copytree(tiny_model_dir, out)
    tensors = load_file(out / "model.safetensors")
    for name in [n for n in tensors if n.startswith("model.layers.") and n.endswith("_proj.weight")]:
        weight = tensors[name]
        scale = weight.abs().max() / 448
        tensors[name] = (weight / scale).to(torch.float8_e4m3fn)
        tensors[name.removesuffix("weight") + "weight_scale"] = scale.reshape(())
        tensors[name.removesuffix("weight") + "input_scale"] = torch.tensor(0.02 if ".k_proj" in name else 0.01)
    save_file(tensors, out / "model.safetensors")
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "static", "ignored_layers": ["lm_head"]}
    (out / "config.json").write_text(json.dumps(config))
    runner = TorchModelRunner(out, 4, 16, device="cpu")
    qkv = runner.model.model.layers[1].self_attn.qkv_proj
    assert isinstance(qkv, QuantizedLinear) and runner.quantization == "fp8" and qkv.scheme.static_input
    q_scale = tensors["model.layers.1.self_attn.q_proj.weight_scale"].item()
    k_scale = tensors["model.layers.1.self_attn.k_proj.weight_scale"].item()
    assert torch.equal(qkv.weight_scale, torch.tensor([q_scale] * 64 + [k_scale] * 32 + [
        tensors["model.layers.1.self_attn.v_proj.weight_scale"].item()] * 32))
    assert qkv.input_scale is not None and qkv.input_scale.tolist() == pytest.approx([0.01, 0.02, 0.01])
    prompt = _prompt(96, seed=2)
    exact = _score(tiny_model_dir, prompt)
    assert (_score(out, prompt) - exact).abs().mean().item() < 0.1 * exact.abs().mean().item()


@pytest.mark.parametrize(("change", "message"), [
    ({"format": "pack-quantized"}, "pack-quantized 8-bit int weights are not supported"),  # W8A16
    ({"weights": {"num_bits": 4}}, "4-bit int weights"),
    ({"weights": {"symmetric": False}}, "asymmetric"),
    ({"weights": {"strategy": "group", "group_size": 128}}, "weight strategy 'group'"),
    ({"input_activations": None}, "weight-only"),
    ({"input_activations": {"dynamic": True, "strategy": "tensor"}}, "dynamic tensor activation scales"),
    ({"targets": ["re:.*down_proj"]}, "targets"),
])
def test_unsupported_compressed_tensors_schemes_are_refused_with_the_reason(change: dict, message: str) -> None:
    config = quantization_config("int8")
    group = config["config_groups"]["group_0"]
    for key, value in change.items():
        if key == "format":
            config["format"] = value
        elif isinstance(value, dict):
            group[key] = {**group[key], **value}
        else:
            group[key] = value
    with pytest.raises(QuantizationError, match=message):
        checkpoint_scheme(config)
    with pytest.raises(QuantizationError, match="3-bit GPTQ"):  # 4-bit ones: tests/engine/test_int4_formats.py
        checkpoint_scheme({"quant_method": "gptq", "bits": 3})
    with pytest.raises(QuantizationError, match="block-wise"):
        checkpoint_scheme({"quant_method": "fp8", "weight_block_size": [128, 128]})


def test_ignored_projections_stay_in_full_precision_and_a_quantized_head_is_refused(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    out = quantize_checkpoint(tiny_model_dir, tmp_path / "int8", "int8")
    config = json.loads((out / "config.json").read_text())
    # llm-compressor's ignore list: names and `re:` patterns. Layer 1's MLP left in float32.
    config["quantization_config"]["ignore"] = ["lm_head", "re:.*layers\\.1\\.mlp\\..*"]
    (out / "config.json").write_text(json.dumps(config))
    tensors = load_file(out / "model.safetensors")
    for part in ("gate", "up", "down"):
        name = f"model.layers.1.mlp.{part}_proj.weight"
        tensors[name] = tensors[name].float() * tensors.pop(name + "_scale")
    save_file(tensors, out / "model.safetensors")
    runner = TorchModelRunner(out, 4, 16, device="cpu")
    layers = runner.model.model.layers
    assert isinstance(layers[1].self_attn.qkv_proj, QuantizedLinear)
    assert not isinstance(layers[1].mlp.down_proj, QuantizedLinear) and isinstance(layers[0].mlp.down_proj, QuantizedLinear)
    assert serving_scheme(out, None) == QuantScheme("int8", source="compressed-tensors", ignore=tuple(config["quantization_config"]["ignore"]))
    # A tensor stored in 8 bits that the engine keeps in full precision is refused, not silently widened.
    tensors["lm_head.weight"] = tensors["lm_head.weight"].to(torch.int8)
    save_file(tensors, out / "model.safetensors")
    with pytest.raises(ValueError, match="lm_head.weight is stored quantized"):
        TorchModelRunner(out, 4, 16, device="cpu")


def test_a_lora_adapter_adds_its_delta_to_a_quantized_base(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter = make_tiny_lora(tiny_model_dir, tmp_path / "adapter", rank=4, seed=1)
    prompt = _prompt(80, seed=3)
    float_adapted = _score(tiny_model_dir, prompt, lora=("a", adapter))
    int8_adapted = _score(tiny_model_dir, prompt, "int8", lora=("a", adapter))
    int8_base = _score(tiny_model_dir, prompt, "int8")
    to_float = (int8_adapted - float_adapted).abs().mean().item()
    assert to_float < 0.05 * float_adapted.abs().mean().item()
    assert to_float < 0.5 * (int8_base - float_adapted).abs().mean().item()  # the delta is there


def test_the_roofline_prices_quantized_projections_at_a_byte_and_their_formats_rate() -> None:
    bf16 = RooflineStepTime.builtin("llama-3.1-8b")
    int8 = RooflineStepTime.builtin("llama-3.1-8b", quantization="int8")
    m = bf16.model
    # Embeddings and the LM head stay bf16: 8.03B parameters, 6.98B of them in the projections.
    assert int8.model.weight_memory_bytes == 2 * m.num_params - m.projection_params
    assert 0.55 < int8.model.weight_memory_bytes / m.weight_memory_bytes < 0.6
    assert int8.kv_capacity_blocks() > 1.1 * bf16.kv_capacity_blocks()  # 7 GB more of 55
    from tests.engine.test_roofline import decode, prefill

    assert 0.5 < int8.predict(decode(1, 500)) / bf16.predict(decode(1, 500)) < 0.65
    assert 0.5 < int8.predict(prefill(4096)) / bf16.predict(prefill(4096)) < 0.7  # the head and attention stay bf16
    # An A100 has int8 tensor cores but no fp8 ones: fp8 weights still halve the traffic, not the FLOPs.
    a100 = {q: RooflineStepTime.builtin("llama-3.1-8b", "A100-80G", quantization=q) for q in (None, "int8", "fp8")}
    assert a100["fp8"].predict(prefill(4096)) > 1.5 * a100["int8"].predict(prefill(4096))
    assert a100["fp8"].predict(decode(1, 500)) == pytest.approx(a100["int8"].predict(decode(1, 500)))
    # Experts stay in bf16: an MoE model saves only its attention's bytes.
    moe = {q: RooflineStepTime.builtin("qwen3-30b-a3b", quantization=q).model for q in (None, "fp8")}
    assert moe["fp8"].weight_memory_bytes > 0.95 * moe[None].weight_memory_bytes
    assert int8.with_quantization(None) == bf16 and int8.model.name == "llama-3.1-8b-int8"


def test_a_simulated_engine_prices_quantization_and_a_measured_profile_must_match(tmp_path: Path) -> None:
    save_profile(tmp_path / "roofline.json", RooflineStepTime.builtin("llama-3.1-8b"))
    plain = build_engine(sim_profile=tmp_path / "roofline.json", kv_cache_memory_bytes=None)
    served = build_engine(sim_profile=tmp_path / "roofline.json", quantization="int8")
    assert served.engine.stats().quantization == "int8" and plain.engine.stats().quantization is None
    assert served.engine.config.num_blocks > 1.1 * plain.engine.config.num_blocks  # the default: what fits
    save_profile(tmp_path / "measured.json", LinearStepTime(1e-3, 1e-5, 1e-6, 1e-7, 1e-9, model={"num_blocks": 100}))
    with pytest.raises(ValueError, match="--quantization int8"):
        build_engine(sim_profile=tmp_path / "measured.json", quantization="int8")
    save_profile(tmp_path / "measured_int8.json", LinearStepTime(1e-3, 1e-5, 1e-6, 1e-7, 1e-9,
                                                                 model={"num_blocks": 100, "quantization": "int8"}))
    assert build_engine(sim_profile=tmp_path / "measured_int8.json", quantization="int8").engine.stats().quantization == "int8"


def test_a_quantized_engine_serves_the_openai_sdk_and_reports_it(tiny_model_dir: Path) -> None:
    with engine_server(tiny_model_dir, device="cpu", quantization="int8") as url:
        client = sdk(url)
        answer = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=6, temperature=0)
        stats = httpx.get(f"{url}/v1/engine/stats").json()
        metrics = httpx.get(f"{url}/metrics").text
    assert answer.usage.completion_tokens == 6 and stats["quantization"] == "int8"
    assert 'pitstop_engine_model_config_info{quantization="int8",tensor_parallel_size="1"} 1.0' in metrics
