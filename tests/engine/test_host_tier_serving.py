"""The host KV tier priced (roofline, profiled linear model), simulated, built from bytes and served:
a prefix the GPU evicted comes back as cached tokens over the OpenAI API."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from engine.batch import StepShape
from engine.build import build_engine
from engine.model.config import ModelConfig
from engine.profile import ProfileSweep, run_profile
from engine.roofline import RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.simulate import Arrival, make_sim_engine, simulate
from engine.step_time import LinearStepTime, load_profile, save_profile
from engine.torch_runner import TorchModelRunner, default_dtype
from tests.engine.serving import engine_server, sdk

H100_8B = RooflineStepTime.builtin("llama-3.1-8b")


def test_roofline_adds_the_copies_over_the_host_link() -> None:
    decode = StepShape(0, 0, 8, 8000, 0)
    moved = StepShape(0, 0, 8, 8000, 0, kv_tokens_moved=16_000)
    link_s = 16_000 * H100_8B.model.kv_bytes_per_token / (64e9 * 0.8)
    assert H100_8B.predict(moved) - H100_8B.predict(decode) == pytest.approx(link_s)
    # Loading 16k tokens of KV back costs a small part of computing them again.
    prefill = StepShape(16_000, 1, 0, 16_000, 16_000 * 8_000)
    assert 0.05 < link_s / H100_8B.predict(prefill) < 0.2
    tp4 = RooflineStepTime.builtin("llama-3.1-70b", tensor_parallel=4)
    assert tp4.predict(moved) - tp4.predict(decode) == pytest.approx(
        16_000 * tp4.model.kv_bytes_per_token / (64e9 * 0.8 * 4))


def _prompt(seed: int, n: int) -> list[int]:
    return [(seed * 7919 + i * 104729) % 32000 for i in range(n)]


def _returning_prompts(num_blocks: int | None, host_blocks: int) -> tuple[float, dict]:
    """A 6,000-token context, a crowd that evicts it, then the context again with a new question."""
    engine = make_sim_engine(H100_8B, num_blocks=num_blocks, num_host_blocks=host_blocks)
    context = _prompt(1, 6000)
    arrivals = [Arrival(0.0, context + [5], SamplingParams(max_tokens=4, ignore_eos=True), "first")]
    arrivals += [Arrival(1.0, _prompt(10 + i, 1500), SamplingParams(max_tokens=4, ignore_eos=True), f"crowd{i}")
                 for i in range(4)]
    arrivals.append(Arrival(2.0, context + [6, 7], SamplingParams(max_tokens=4, ignore_eos=True), "again"))
    results = {r.request_id: r for r in simulate(engine, arrivals)}
    stats = engine.stats()
    return results["again"].latency, {"host": stats.blocks.host_hit_tokens, "gpu": stats.blocks.prefix_hit_tokens,
                                      "prefill": stats.prefill_tokens, "cached": results["again"].num_cached_tokens}


def test_simulated_engine_loads_an_evicted_context_back_instead_of_computing_it() -> None:
    without, plain = _returning_prompts(400, 0)  # 6,400 tokens of KV: the crowd evicts the context
    with_host, tiered = _returning_prompts(400, 1000)
    assert plain["host"] == 0 and plain["cached"] < 1000
    assert tiered["host"] >= 5000 and tiered["cached"] >= 5900
    assert tiered["prefill"] <= plain["prefill"] - 5000
    assert with_host < without / 2  # a 6,000-token prefill against copying its KV over PCIe


def test_linear_profile_without_a_copy_price_refuses_a_host_tier() -> None:
    step = LinearStepTime(c0=1e-3)
    with pytest.raises(ValueError, match="does not price host KV copies"):
        make_sim_engine(step, num_blocks=64, num_host_blocks=32)
    priced = LinearStepTime(c0=1e-3, c_kv_token_moved=2e-7)
    engine = make_sim_engine(priced, num_blocks=64, num_host_blocks=32)
    assert engine.config.num_host_blocks == 32
    assert priced.predict(StepShape(0, 0, 1, 10, 0, kv_tokens_moved=100)) == pytest.approx(1e-3 + 2e-5)


def test_profile_times_the_host_copies(tiny_model_dir: Path, tmp_path: Path) -> None:
    sweep = ProfileSweep(prefill_lens=(16, 64), decode_batch_sizes=(1, 2), context_lens=(16,), decode_steps=2,
                         mixed_prefill_lens=(), drafted_batch_sizes=(), repeats=1, warmup=False)
    result = run_profile(tiny_model_dir, tmp_path / "p.json", device="cpu", sweep=sweep)
    per_token = result.model.c_kv_token_moved
    # Copying a token's KV costs less than computing it: against the measured 64-token prefill steps (the
    # fit's own split between its coefficients is not stable on a sweep this small).
    prefills = [r.duration_s / r.shape.prefill_tokens for r in result.records
                if r.shape.prefill_tokens >= 64 and not r.shape.decode_seqs]
    assert prefills and per_token is not None and 0 < per_token < min(prefills)
    loaded = load_profile(tmp_path / "p.json")
    assert isinstance(loaded, LinearStepTime) and loaded.c_kv_token_moved == per_token
    # Disk reads timed too, from a scratch folder beside the profile that is gone after.
    assert loaded.c_disk_token_read is not None and loaded.prices_disk_reads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]
    # The profile serves a simulated engine with a host tier sized in bytes.
    served = build_engine(sim_profile=tmp_path / "p.json", num_blocks=64, host_kv_memory_bytes=1 << 20)
    config = ModelConfig.from_dir(tiny_model_dir)
    per_block = TorchModelRunner.kv_bytes_per_block(config, 16, default_dtype(config, torch.device("cpu")))
    assert served.engine.config.num_host_blocks == (1 << 20) // per_block


def test_roofline_profile_sizes_a_served_host_tier(tmp_path: Path) -> None:
    save_profile(tmp_path / "h100.json", H100_8B)
    served = build_engine(sim_profile=tmp_path / "h100.json", num_blocks=100, host_kv_memory_bytes=1 << 30)
    assert served.engine.config.num_host_blocks == (1 << 30) // (H100_8B.model.kv_bytes_per_token * 16)


def test_served_engine_answers_an_evicted_prefix_from_the_host_tier(tiny_model_dir: Path) -> None:
    config = ModelConfig.from_dir(tiny_model_dir)
    per_block = TorchModelRunner.kv_bytes_per_block(config, 16, default_dtype(config, torch.device("cpu")))
    context = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat. " * 3
    with engine_server(tiny_model_dir, num_blocks=24, max_model_len=384, device="cpu",
                       host_kv_memory_bytes=64 * per_block) as url:
        client = sdk(url)
        first = client.completions.create(model="tiny", prompt=context + "Q1", max_tokens=4, temperature=0)
        assert first.usage.prompt_tokens >= 48, "the context must span several blocks"
        crowd = "Entirely different words fill every block of the cache now, one after another. " * 10
        client.completions.create(model="tiny", prompt=crowd, max_tokens=4, temperature=0)
        again = client.completions.create(model="tiny", prompt=context + "Q2", max_tokens=4, temperature=0)
        cached = again.usage.prompt_tokens_details.cached_tokens
        assert cached >= 32
        metrics = httpx.get(f"{url}/metrics").text
    hits = [line for line in metrics.splitlines() if line.startswith("pitstop_engine_host_hit_tokens_total")]
    assert hits and float(hits[0].split()[-1]) >= 32
    assert 'pitstop_engine_host_kv_block_copies_total{direction="to_host"}' in metrics


def test_session_info_counts_what_the_host_tier_holds_of_a_session() -> None:
    engine = make_sim_engine(H100_8B, num_blocks=400, num_host_blocks=1000)
    arrivals = [Arrival(0.0, _prompt(1, 4000), SamplingParams(max_tokens=4, ignore_eos=True), "turn1",
                        session_id="agent")]
    simulate(engine, arrivals)
    before = engine.session_info("agent")
    assert before is not None and before["cached_tokens"] >= 3984 and before["host_cached_tokens"] == 0
    crowd = [Arrival(1.0 + i, _prompt(20 + i, 1500), SamplingParams(max_tokens=4, ignore_eos=True), f"c{i}")
             for i in range(4)]
    simulate(engine, crowd)
    after = engine.session_info("agent")
    assert after is not None and after["cached_tokens"] < 1000
    # Everything the GPU lost of the turn is in host memory, right after what it kept.
    assert after["cached_tokens"] + after["host_cached_tokens"] == before["cached_tokens"]
