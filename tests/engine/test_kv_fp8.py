"""An fp8 KV cache (`kv_cache_dtype`): the rounding and its scales, attention over fp8 blocks, the torch
runner's byte storage (GPU blocks and host tier), fp8 checkpoints' scales, what a simulation prices,
and an engine served over HTTP."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.batch import StepShape
from engine.build import build_engine
from engine.config import EngineConfig
from engine.kv_transfer import KVTransfer
from engine.llm_engine import LLMEngine
from engine.model.attention import (
    AttentionMetadata,
    AttentionPlan,
    GatherWorkspace,
    paged_attention,
    write_kv,
)
from engine.model.config import ModelConfig
from engine.model.kv_quant import FP8KVFormat, fp8_format
from engine.roofline import RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.step_time import LinearStepTime, save_profile
from engine.torch_runner import TorchModelRunner
from tests.engine.serving import engine_server, sdk

E4M3 = FP8KVFormat(torch.float8_e4m3fn, torch.float32)


@pytest.mark.parametrize("element", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_storage_rounds_to_the_format_and_reads_back_with_its_scale(element: torch.dtype) -> None:
    fmt = FP8KVFormat(element, torch.float32)
    torch.manual_seed(0)
    x = torch.randn(64, 2, 8) * 3
    for scale in (1.0, 0.25, 3.0):
        stored = fmt.quantize(x, scale)
        assert stored.dtype == torch.uint8 and stored.shape == x.shape
        # The table lookup (CPU) reads exactly what torch's own fp8 cast does.
        read = fmt.dequantize(stored, scale)
        torch.testing.assert_close(read, stored.view(element).to(torch.float32) * scale, rtol=0, atol=0)
        # Rounding error: half a unit in the last place of 3 (e4m3) or 2 (e5m2) mantissa bits, for normal values.
        mantissa_bits = 3 if element == torch.float8_e4m3fn else 2
        normal = (x / scale).abs() > torch.finfo(element).smallest_normal
        relative = ((read - x).abs() / x.abs())[normal]
        assert 0 < relative.max() <= 2.0 ** -(mantissa_bits + 1) + 1e-6
    # Into a kept buffer, as the CPU runner's workspace does.
    out = torch.empty_like(x)
    assert fmt.dequantize(fmt.quantize(x, 1.0), 1.0, out=out).data_ptr() == out.data_ptr()


def test_values_past_fp8_range_are_clamped_and_a_scale_keeps_them() -> None:
    big = torch.tensor([1000.0, -5000.0, 300.0])
    assert E4M3.dequantize(E4M3.quantize(big, 1.0), 1.0).tolist() == [448.0, -448.0, 288.0]
    kept = E4M3.dequantize(E4M3.quantize(big, 16.0), 16.0)
    torch.testing.assert_close(kept, big, rtol=0.07, atol=0)
    e5m2 = FP8KVFormat(torch.float8_e5m2, torch.float32)
    assert torch.isfinite(e5m2.dequantize(e5m2.quantize(torch.tensor([1e9]), 1.0), 1.0)).all()  # no inf


def test_kv_cache_dtype_names() -> None:
    assert fp8_format("auto") is None and fp8_format("fp8") is fp8_format("fp8_e4m3") is torch.float8_e4m3fn
    assert fp8_format("fp8_e5m2") is torch.float8_e5m2
    with pytest.raises(ValueError, match="not one of auto, fp8, fp8_e4m3, fp8_e5m2"):
        fp8_format("int8")


def _attention_step(cache: torch.Tensor, kv_format: FP8KVFormat | None, scales: tuple[float, float],
                    workspace: GatherWorkspace | None = None) -> torch.Tensor:
    """One step of two decodes and a prefill chunk over shuffled blocks, K/V written as the layer writes them."""
    gen = torch.Generator().manual_seed(1)
    block_size, heads, kv_heads, dim = 4, 4, 2, 8
    rows = [(1, 21), (6, 18), (1, 9)]  # (new tokens, context after the step)
    blocks = torch.randperm(cache.shape[1], generator=gen).tolist()
    tables, slots, queries, starts, at = [], [], [], [], 0
    for new, context in rows:
        table = [blocks.pop() for _ in range(-(-context // block_size))]
        slots.append(torch.tensor([table[p // block_size] * block_size + p % block_size for p in range(context)]))
        write_kv(cache, torch.randn(context, kv_heads, dim, generator=gen) * 2,
                 torch.randn(context, kv_heads, dim, generator=gen), slots[-1], kv_format, scales)
        queries.append(torch.randn(new, heads, dim, generator=gen))
        tables.append(table)
        starts.append(at)
        at += new
    width = max(len(t) for t in tables)
    meta = AttentionMetadata(
        slot_mapping=torch.cat([s[c - n:] for s, (n, c) in zip(slots, rows, strict=True)]),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables]), query_starts=starts,
        query_lens=[n for n, _ in rows], context_lens=[c for _, c in rows], block_size=block_size)
    plan = AttentionPlan.build(meta, workspace=workspace, kv_format=kv_format)
    return paged_attention(torch.cat(queries), cache, plan, scales)


def test_attention_over_fp8_blocks_is_close_to_full_precision() -> None:
    exact = _attention_step(torch.zeros(2, 32, 4, 2, 8), None, (1.0, 1.0))
    fp8_cache = torch.zeros(2, 32, 4, 2, 8, dtype=torch.uint8)
    rounded = _attention_step(fp8_cache, E4M3, (1.0, 1.0))
    error = (rounded - exact).norm() / exact.norm()
    # Random values average out in attention, so the output is small and its relative error large.
    assert 0 < error < 0.1
    e5m2 = _attention_step(torch.zeros_like(fp8_cache), FP8KVFormat(torch.float8_e5m2, torch.float32), (1.0, 1.0))
    assert (e5m2 - exact).norm() / exact.norm() > error  # one mantissa bit fewer
    # Scales are applied on write and undone on read: the same answer within fp8's rounding.
    scaled = _attention_step(torch.zeros_like(fp8_cache), E4M3, (0.5, 2.0))
    assert (scaled - exact).norm() / exact.norm() < 0.1
    # A kept workspace (the CPU runner's) gives the same answer as fresh tensors.
    kept = _attention_step(torch.zeros_like(fp8_cache), E4M3, (1.0, 1.0), GatherWorkspace())
    torch.testing.assert_close(kept, rounded, rtol=0, atol=0)


def test_runner_stores_a_byte_an_element_and_budgets_twice_the_blocks(tiny_model_dir: Path) -> None:
    config = ModelConfig.from_dir(tiny_model_dir)
    bf16 = TorchModelRunner.kv_bytes_per_block(config, 16, torch.bfloat16)
    assert TorchModelRunner.kv_bytes_per_block(config, 16, torch.bfloat16, "fp8") * 2 == bf16
    assert TorchModelRunner.kv_bytes_per_block(config, 16, torch.float32, "fp8_e5m2") * 2 == bf16
    budget = 40 * bf16
    assert TorchModelRunner.num_blocks_for_budget(tiny_model_dir, budget, 16, "cpu", torch.bfloat16) == 40
    assert TorchModelRunner.num_blocks_for_budget(tiny_model_dir, budget, 16, "cpu", torch.bfloat16, "fp8") == 80
    runner = TorchModelRunner(tiny_model_dir, 8, 16, device="cpu", num_host_blocks=4, kv_cache_dtype="fp8")
    assert runner.kv_cache.dtype == runner.host_kv.dtype == torch.uint8
    assert runner.kv_cache.nbytes == 8 * TorchModelRunner.kv_bytes_per_block(config, 16, torch.float32, "fp8")
    with pytest.raises(ValueError, match="kv_cache_dtype 'int8'"):
        TorchModelRunner(tiny_model_dir, 8, 16, device="cpu", kv_cache_dtype="int8")


def _score(model_dir: Path, kv_cache_dtype: str, prompt: list[int], calculate_kv_scales: bool = False) -> torch.Tensor:
    """Teacher-forced log-probabilities of a prompt's tokens, computed in 32-token chunks, so each
    chunk reads the earlier ones' KV back from the cache."""
    runner = TorchModelRunner(model_dir, 64, 16, device="cpu", kv_cache_dtype=kv_cache_dtype,
                              calculate_kv_scales=calculate_kv_scales)
    engine = LLMEngine(EngineConfig(num_blocks=64, max_model_len=1024, long_prefill_token_threshold=32,
                                    max_num_batched_tokens=64), runner)
    seq = engine.add_request("score", prompt, SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0))
    while engine.has_unfinished():
        engine.step()
    return torch.tensor([lp.logprob for lp in seq.prompt_logprobs])


def test_fp8_cache_scores_close_to_full_precision_and_e4m3_closer_than_e5m2(tiny_model_dir: Path) -> None:
    rng = random.Random(0)
    prompt = [rng.randrange(1000) for _ in range(200)]
    exact = _score(tiny_model_dir, "auto", prompt)
    errors = {dtype: (_score(tiny_model_dir, dtype, prompt) - exact).abs().mean().item()
              for dtype in ("fp8", "fp8_e5m2")}
    assert 0 < errors["fp8"] < errors["fp8_e5m2"] < 0.05 * exact.abs().mean().item()


def _generate(runner: TorchModelRunner, prompts: list[list[int]], num_blocks: int) -> tuple[list[list[int]], LLMEngine]:
    engine = LLMEngine(EngineConfig(num_blocks=num_blocks, max_model_len=512,
                                    num_host_blocks=runner.num_host_blocks), runner)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outputs = []
    for i, prompt in enumerate(prompts):  # one at a time: later prompts find earlier ones' blocks
        seq = engine.add_request(f"r{i}", prompt, params)
        while engine.has_unfinished():
            engine.step()
        outputs.append(seq.output_token_ids)
    return outputs, engine


def test_prefix_hits_and_host_loads_read_the_same_fp8_bytes(tiny_model_dir: Path) -> None:
    """A prompt answered again from cached fp8 blocks, or from blocks the host tier saved and loaded
    back, gives the answer computing it gave: the bytes travel unchanged."""
    rng = random.Random(3)
    shared = [rng.randrange(1000) for _ in range(64)]
    crowd = [[rng.randrange(1000) for _ in range(100)] for _ in range(2)]
    prompts = [shared + [7], shared + [7], *crowd, shared + [7]]
    computed, _ = _generate(TorchModelRunner(tiny_model_dir, 64, 16, device="cpu", kv_cache_dtype="fp8"),
                            [shared + [7]], 64)
    tiered = TorchModelRunner(tiny_model_dir, 12, 16, device="cpu", num_host_blocks=32, kv_cache_dtype="fp8")
    outputs, engine = _generate(tiered, prompts, 12)
    stats = engine.stats().blocks
    assert stats.prefix_hit_tokens >= 64 and stats.host_hit_tokens >= 48  # the second from GPU, the last from host
    assert outputs[0] == outputs[1] == outputs[-1] == computed[0]
    # A block copied out and back is the same bytes.
    before = tiered.kv_cache[:, :, 3].clone()
    tiered.transfer_kv([KVTransfer(True, 3, 5)])
    tiered.kv_cache[:, :, 3] = 0
    tiered.transfer_kv([KVTransfer(False, 3, 5)])
    assert torch.equal(tiered.kv_cache[:, :, 3], before)


def test_an_fp8_checkpoints_kv_scales_scale_each_layers_cache(tiny_model_dir: Path, tmp_path: Path) -> None:
    scaled_dir = tmp_path / "scaled"
    shutil.copytree(tiny_model_dir, scaled_dir)
    weights = load_file(scaled_dir / "model.safetensors")
    weights["model.layers.0.self_attn.k_scale"] = torch.tensor(4.0)
    weights["model.layers.1.self_attn.kv_scale"] = torch.tensor([0.5])
    save_file(weights, scaled_dir / "model.safetensors")
    prompt = list(range(5, 40))
    caches = {}
    for name, folder, dtype in (("exact", tiny_model_dir, "auto"), ("scaled", scaled_dir, "fp8")):
        runner = TorchModelRunner(folder, 8, 16, device="cpu", kv_cache_dtype=dtype)
        _generate(runner, [prompt], 8)
        caches[name] = runner
    layers = caches["scaled"].model.model.layers
    assert layers[0].self_attn.kv_scales == (4.0, 1.0) and layers[1].self_attn.kv_scales == (0.5, 0.5)
    # Layer 0's stored keys are the exact keys divided by 4: reading them back with the scale gives them.
    exact_keys = caches["exact"].kv_cache[0, 0, :2]
    stored = caches["scaled"].kv_cache[0, 0, :2]
    assert not torch.equal(stored, E4M3.quantize(exact_keys, 1.0))
    torch.testing.assert_close(E4M3.dequantize(stored, 4.0), exact_keys, rtol=0.07, atol=4 * 2**-9)
    # A scale that is not a positive number is refused at load.
    weights["model.layers.0.self_attn.k_scale"] = torch.tensor(0.0)
    save_file(weights, scaled_dir / "model.safetensors")
    with pytest.raises(ValueError, match="must be positive"):
        TorchModelRunner(scaled_dir, 8, 16, device="cpu", kv_cache_dtype="fp8")


def test_roofline_prices_an_fp8_cache_at_half_the_bytes() -> None:
    bf16 = RooflineStepTime.builtin("llama-3.1-8b")
    fp8 = RooflineStepTime.builtin("llama-3.1-8b", kv_cache_dtype="fp8")
    assert fp8.model.kv_bytes_per_token * 2 == bf16.model.kv_bytes_per_token
    # Twice the tokens fit in what the weights leave free (one block of rounding either way).
    assert abs(fp8.kv_capacity_blocks() - 2 * bf16.kv_capacity_blocks()) <= 1
    # A decode step over a long context is memory-bound: its KV reads take half the time.
    decode = StepShape(0, 0, 64, 64 * 8000, 0)
    weights_only = StepShape(0, 0, 64, 0, 0)
    kv_read = {name: model.predict(decode) - model.predict(weights_only) for name, model in (("bf16", bf16), ("fp8", fp8))}
    assert kv_read["fp8"] == pytest.approx(kv_read["bf16"] / 2, rel=0.01)
    assert bf16.with_kv_cache_dtype("auto") is bf16


def test_a_simulated_engine_sizes_and_prices_an_fp8_cache(tmp_path: Path) -> None:
    save_profile(tmp_path / "h100.json", RooflineStepTime.builtin("llama-3.1-8b"))
    budget = 1 << 30
    blocks = {dtype: build_engine(sim_profile=tmp_path / "h100.json", kv_cache_memory_bytes=budget,
                                  kv_cache_dtype=dtype).engine.config.num_blocks for dtype in ("auto", "fp8")}
    assert blocks["fp8"] == 2 * blocks["auto"] == 2 * (budget // (128 * 1024 * 16))
    # A measured profile serves only the KV it was measured with.
    measured = LinearStepTime(1e-3, 1e-5, 1e-6, 1e-7, 1e-9, model={"kv_bytes": 2, "num_blocks": 100})
    save_profile(tmp_path / "measured.json", measured)
    with pytest.raises(ValueError, match="--kv-cache-dtype fp8"):
        build_engine(sim_profile=tmp_path / "measured.json", kv_cache_dtype="fp8")
    save_profile(tmp_path / "measured_fp8.json", LinearStepTime(1e-3, 1e-5, 1e-6, 1e-7, 1e-9,
                                                                 model={"kv_bytes": 1, "num_blocks": 100}))
    served = build_engine(sim_profile=tmp_path / "measured_fp8.json", kv_cache_dtype="fp8")
    assert served.engine.stats().kv_cache_dtype == "fp8"


def test_an_fp8_engine_serves_the_openai_sdk_and_reports_its_cache(tiny_model_dir: Path) -> None:
    with engine_server(tiny_model_dir, device="cpu", kv_cache_dtype="fp8") as url:
        client = sdk(url)
        context = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat. " * 2
        first = client.completions.create(model="tiny", prompt=context + "Q", max_tokens=6, temperature=0)
        again = client.completions.create(model="tiny", prompt=context + "Q", max_tokens=6, temperature=0)
        stats = httpx.get(f"{url}/v1/engine/stats").json()
        metrics = httpx.get(f"{url}/metrics").text
    assert first.choices[0].text == again.choices[0].text and again.usage.prompt_tokens_details.cached_tokens >= 16
    assert stats["kv_cache_dtype"] == "fp8"
    assert 'pitstop_engine_cache_config_info{block_size="16",kv_cache_dtype="fp8"} 1.0' in metrics


def test_a_profile_of_an_fp8_cache_serves_an_fp8_simulation(tiny_model_dir: Path, tmp_path: Path) -> None:
    from engine.profile import ProfileSweep, run_profile
    from engine.step_time import load_profile

    sweep = ProfileSweep(prefill_lens=(16, 64), decode_batch_sizes=(1, 2), context_lens=(16,), decode_steps=2,
                         mixed_prefill_lens=(), drafted_batch_sizes=(), repeats=1, warmup=False)
    run_profile(tiny_model_dir, tmp_path / "fp8.json", device="cpu", sweep=sweep, kv_cache_dtype="fp8")
    profile = load_profile(tmp_path / "fp8.json")
    assert isinstance(profile, LinearStepTime) and profile.model["kv_bytes"] == 1
    served = build_engine(sim_profile=tmp_path / "fp8.json", num_blocks=32, kv_cache_dtype="fp8")
    assert served.engine.stats().kv_cache_dtype == "fp8"
    # A float32 profile (the CPU's default) cannot price an fp8 cache: measured again, it can.
    run_profile(tiny_model_dir, tmp_path / "f32.json", device="cpu", sweep=sweep)
    with pytest.raises(ValueError, match="measured with 4 byte"):
        build_engine(sim_profile=tmp_path / "f32.json", num_blocks=32, kv_cache_dtype="fp8")


def test_measured_scales_keep_keys_past_fp8s_range(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Keys 300x larger than the tiny model's (as some checkpoints' layers have; queries 300x smaller, so
    attention is unchanged) clamp at fp8's 448 with scale 1.0; scales measured on the first step keep
    them, within fp8's rounding."""
    loud = tmp_path / "loud"
    shutil.copytree(tiny_model_dir, loud)
    weights = load_file(loud / "model.safetensors")
    for layer in range(2):
        weights[f"model.layers.{layer}.self_attn.k_proj.weight"] *= 300
        weights[f"model.layers.{layer}.self_attn.q_proj.weight"] /= 300
    save_file(weights, loud / "model.safetensors")
    rng = random.Random(1)
    prompt = [rng.randrange(1000) for _ in range(160)]
    exact = _score(loud, "auto", prompt)
    clamped = (_score(loud, "fp8", prompt) - exact).abs().mean().item()
    measured = (_score(loud, "fp8", prompt, calculate_kv_scales=True) - exact).abs().mean().item()
    assert measured < 0.05 * exact.abs().mean().item() and clamped > 3 * measured
    runner = TorchModelRunner(loud, 8, 16, device="cpu", kv_cache_dtype="fp8", calculate_kv_scales=True)
    _generate(runner, [prompt[:40]], 8)
    k_scale, v_scale = runner.model.model.layers[0].self_attn.kv_scales
    assert k_scale > 1.0 and 0 < v_scale < k_scale  # the keys' maximum lands near 200 in fp8
    with pytest.raises(ValueError, match="set kv_cache_dtype to fp8"):
        TorchModelRunner(loud, 8, 16, device="cpu", calculate_kv_scales=True)
