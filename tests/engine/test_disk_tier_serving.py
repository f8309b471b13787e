"""The disk KV tier end to end: a prefix evicted GPU -> host -> disk and loaded back holds the KV (and gives
the answers) computing it gives, fp8 KV included; an engine restarted on the same folder takes the blocks
over and a prompt served before hits there; another model, block size or a damaged index starts it empty;
served over HTTP; priced and kept by the simulator."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import httpx
import pytest
import torch

from engine.batch import StepShape
from engine.build import build_engine
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.roofline import RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.simulate import Arrival, make_sim_engine, simulate
from engine.step_time import LinearStepTime, save_profile
from engine.tiny_model import make_tiny_model
from engine.torch_runner import TorchModelRunner
from tests.engine.serving import engine_server, sdk

BS = 4
H100_8B = RooflineStepTime.builtin("llama-3.1-8b")


def _engine(model_dir: Path, folder: Path | None, num_blocks: int = 20, host: int = 0, disk: int = 64,
            block_size: int = BS, **runner: object) -> LLMEngine:
    runner_ = TorchModelRunner(model_dir, num_blocks, block_size, device="cpu", num_host_blocks=host,
                               disk_kv_path=folder, num_disk_blocks=disk if folder else 0, **runner)  # type: ignore[arg-type]
    config = EngineConfig(block_size=block_size, num_blocks=num_blocks, max_num_seqs=4, max_num_batched_tokens=256,
                          max_model_len=num_blocks * block_size, num_host_blocks=host,
                          num_disk_blocks=disk if folder else 0)
    return LLMEngine(config, runner_)


def _answer(engine: LLMEngine, request_id: str, prompt: list[int]) -> Sequence:
    """The finished sequence, its chosen tokens' log-probabilities as `logprobs`."""
    seq = engine.add_request(request_id, prompt, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True,
                                                                logprobs=0))
    seq.policy_state["logprobs"] = logprobs = []
    while engine.has_unfinished():
        for out in engine.step():
            logprobs += [lp.logprob for lp in out.logprobs or []]
    return seq


def _prefix_kv(engine: LLMEngine, prefix: list[int]) -> torch.Tensor:
    blocks = engine.block_manager.match_prefix(Sequence("probe", prefix + [0], SamplingParams(), 0.0))
    assert len(blocks) == len(prefix) // engine.config.block_size
    return engine.runner.kv_cache[:, :, blocks].clone()  # type: ignore[attr-defined]


RNG = random.Random(0)
SHARED = [RNG.randrange(256) for _ in range(40)]
FILLER = [RNG.randrange(256) for _ in range(72)]  # with its answer, every one of the 20 blocks


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_a_prefix_evicted_to_disk_and_loaded_back_answers_as_computing_it(tiny_model_dir: Path, tmp_path: Path,
                                                                         kv_cache_dtype: str) -> None:
    tiered = _engine(tiny_model_dir, tmp_path / "disk", host=2, kv_cache_dtype=kv_cache_dtype)
    _answer(tiered, "warm", SHARED + [1])
    computed = _prefix_kv(tiered, SHARED)
    _answer(tiered, "filler", FILLER)  # every GPU block: the prefix goes to the 2-slot host tier, then on to disk
    disk = tiered.stats().blocks.disk
    assert disk is not None and disk.saved_blocks >= 8
    again = _answer(tiered, "again", SHARED + [2, 3])  # waits for its blocks to be read ahead, then loads them
    stats = tiered.stats().blocks
    assert stats.disk_hit_tokens >= 32 and stats.disk_hit_tokens + stats.host_hit_tokens == 40
    assert again.num_cached_tokens == 40 and stats.prefix_hit_tokens == 0
    assert stats.disk.read_ahead_blocks == stats.disk_hit_tokens // BS  # type: ignore[union-attr]
    assert torch.equal(_prefix_kv(tiered, SHARED), computed)  # the bytes it wrote, back in fresh blocks
    tiered.close()

    fresh = _engine(tiny_model_dir, None, num_blocks=64, kv_cache_dtype=kv_cache_dtype)
    reference = _answer(fresh, "again", SHARED + [2, 3])
    assert again.output_token_ids == reference.output_token_ids
    logprobs = torch.tensor(again.policy_state["logprobs"])
    assert len(logprobs) == 6
    torch.testing.assert_close(logprobs, torch.tensor(reference.policy_state["logprobs"]), rtol=0, atol=1e-5)
    if kv_cache_dtype == "auto":
        torch.testing.assert_close(computed, _prefix_kv(fresh, SHARED), rtol=1e-5, atol=1e-5)


def test_a_restarted_engine_takes_the_disk_blocks_over_and_answers_identically(tiny_model_dir: Path,
                                                                               tmp_path: Path) -> None:
    first = _engine(tiny_model_dir, tmp_path / "disk")
    before = _answer(first, "before", SHARED + [1])
    first.close()  # the prompt's blocks are still on the GPU: the clean close writes them to disk
    second = _engine(tiny_model_dir, tmp_path / "disk")
    disk = second.stats().blocks.disk
    assert disk is not None and disk.restored_blocks >= 10
    after = _answer(second, "after", SHARED + [1])
    assert after.num_cached_tokens == 40 and second.stats().blocks.disk_hit_tokens == 40
    assert after.output_token_ids == before.output_token_ids
    # A crash writes the index of what is on disk, nothing more: the next prompt's GPU blocks stay behind.
    _answer(second, "lost", FILLER[:33])
    second.close(clean=False)
    third = _engine(tiny_model_dir, tmp_path / "disk")
    assert _answer(third, "after-crash", FILLER[:33]).num_cached_tokens == 0
    assert _answer(third, "kept", SHARED + [5]).num_cached_tokens == 40
    third.close()


def test_another_model_block_size_or_a_damaged_index_starts_the_folder_empty(
        tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "disk"
    other_model = make_tiny_model(tmp_path / "seed1", seed=1)  # the same config, other weights
    cases = [(other_model, BS, "(model differ)"), (tiny_model_dir, 8, "(block differ)"), (tiny_model_dir, BS, "damaged")]
    for model_dir, block_size, reason in cases:
        seed = _engine(tiny_model_dir, folder)  # a good index of this model
        _answer(seed, "a", SHARED + [1])
        seed.close()
        if reason == "damaged":
            index = folder / "kv-rank0.index"
            index.write_bytes(index.read_bytes()[:-9])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pitstop.engine"):
            engine = _engine(model_dir, folder, block_size=block_size)
        assert engine.stats().blocks.disk.restored_blocks == 0  # type: ignore[union-attr]
        assert "starting empty" in caplog.text and reason in caplog.text
        assert _answer(engine, "c", SHARED + [1]).num_cached_tokens == 0  # serves, from nothing
        engine.close()


def test_a_served_engine_answers_a_prompt_from_before_its_restart_from_disk(tiny_model_dir: Path,
                                                                             tmp_path: Path) -> None:
    context = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat. " * 3
    options = {"num_blocks": 24, "max_model_len": 384, "device": "cpu", "disk_kv_path": tmp_path / "disk",
               "disk_kv_bytes": 1 << 20}
    with engine_server(tiny_model_dir, **options) as url:
        first = sdk(url).completions.create(model="tiny", prompt=context + "Q1", max_tokens=4, temperature=0)
        assert first.usage.prompt_tokens >= 48 and first.usage.prompt_tokens_details.cached_tokens == 0
    with engine_server(tiny_model_dir, **options) as url:  # the first server's lifespan ended: a clean close
        again = sdk(url).completions.create(model="tiny", prompt=context + "Q1", max_tokens=4, temperature=0)
        metrics = httpx.get(f"{url}/metrics").text
        stats = httpx.get(f"{url}/v1/engine/stats").json()["blocks"]
    assert again.usage.prompt_tokens_details.cached_tokens >= 32
    assert again.choices[0].text == first.choices[0].text
    assert stats["disk_hit_tokens"] == again.usage.prompt_tokens_details.cached_tokens
    assert stats["disk"]["restored_blocks"] > 0 and stats["disk"]["total"] > 0
    hits = [line for line in metrics.splitlines() if line.startswith("pitstop_engine_disk_hit_tokens_total")]
    assert hits and float(hits[0].split()[-1]) == stats["disk_hit_tokens"]
    assert 'pitstop_engine_disk_kv_blocks{state="restored"}' in metrics
    assert 'pitstop_engine_disk_kv_block_events_total{event="loaded"}' in metrics


def test_a_disk_tier_needs_a_folder_and_a_size(tiny_model_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    from gateway.cli import build_parser

    args = build_parser().parse_args(["engine", "serve", "--model", str(tiny_model_dir), "--disk-kv-path",
                                      str(tmp_path), "--disk-kv-size", "64GiB"])
    assert args.disk_kv_path == tmp_path and args.disk_kv_size == 64 << 30
    half = build_parser().parse_args(["engine", "serve", "--model", str(tiny_model_dir), "--disk-kv-path", "kv"])
    assert half.handler(half) == 2 and "needs both a folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="both a folder"):
        build_engine(tiny_model_dir, num_blocks=8, device="cpu", disk_kv_path=tmp_path)
    with pytest.raises(ValueError, match="holds no block"):
        build_engine(tiny_model_dir, num_blocks=8, device="cpu", disk_kv_path=tmp_path, disk_kv_bytes=10)
    with pytest.raises(ValueError, match="calculate_kv_scales"):
        TorchModelRunner(tiny_model_dir, 8, BS, device="cpu", kv_cache_dtype="fp8", calculate_kv_scales=True,
                         disk_kv_path=tmp_path, num_disk_blocks=4)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="cannot hold"):
        build_engine(tiny_model_dir, num_blocks=8, device="cpu", disk_kv_path=tmp_path / "a-file", disk_kv_bytes=1 << 20)
    engine = build_engine(tiny_model_dir, num_blocks=8, device="cpu", disk_kv_path=tmp_path, disk_kv_bytes=1 << 20)
    with pytest.raises(ValueError, match="in use by another engine"):
        build_engine(tiny_model_dir, num_blocks=8, device="cpu", disk_kv_path=tmp_path, disk_kv_bytes=1 << 20)
    engine.engine.close()


# ---- the simulator ----------------------------------------------------------------------------


def test_roofline_prices_a_disk_load_as_a_read_then_a_copy() -> None:
    copied = StepShape(0, 0, 8, 8000, 0, kv_tokens_moved=16_000)
    read = StepShape(0, 0, 8, 8000, 0, kv_tokens_moved=16_000, disk_tokens_read=16_000)
    drive_s = 16_000 * H100_8B.model.kv_bytes_per_token / (6e9 * 0.8)
    assert H100_8B.predict(read) - H100_8B.predict(copied) == pytest.approx(drive_s)
    # Reading 16k tokens of KV back from an NVMe drive costs less than computing them, more than the host link.
    prefill = StepShape(16_000, 1, 0, 16_000, 16_000 * 8_000)
    assert 0.3 < drive_s / H100_8B.predict(prefill) < 0.9
    slower = RooflineStepTime.from_json(H100_8B.to_json() | {"params": H100_8B.to_json()["params"] | {
        "gpu": H100_8B.to_json()["params"]["gpu"] | {"disk_read_bytes_per_s": 3e9}}})
    assert slower.predict(read) - slower.predict(copied) == pytest.approx(2 * drive_s)
    linear = LinearStepTime(c0=1e-3, c_kv_token_moved=2e-7)
    with pytest.raises(ValueError, match="does not price disk KV reads"):
        make_sim_engine(linear, num_blocks=64, num_disk_blocks=32)
    priced = LinearStepTime(c0=1e-3, c_kv_token_moved=2e-7, c_disk_token_read=1e-6)
    assert priced.predict(read) == pytest.approx(1e-3 + 16_000 * (2e-7 + 1e-6))


def _prompt(seed: int, n: int) -> list[int]:
    return [(seed * 7919 + i * 104729) % 32000 for i in range(n)]


def _returning_context(host_blocks: int, disk_blocks: int) -> tuple[float, dict]:
    """A 6,000-token context, a crowd that evicts it, then the context again."""
    engine = make_sim_engine(H100_8B, num_blocks=400, num_host_blocks=host_blocks, num_disk_blocks=disk_blocks)
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    arrivals = [Arrival(0.0, _prompt(1, 6000) + [5], params, "first")]
    arrivals += [Arrival(1.0, _prompt(10 + i, 1500), params, f"crowd{i}") for i in range(4)]
    arrivals.append(Arrival(2.0, _prompt(1, 6000) + [6, 7], params, "again"))
    results = {r.request_id: r for r in simulate(engine, arrivals)}
    blocks = engine.stats().blocks
    return results["again"].latency, {"disk": blocks.disk_hit_tokens, "host": blocks.host_hit_tokens,  # type: ignore[return-value]
                                      "cached": results["again"].num_cached_tokens}


def test_a_simulated_engine_loads_an_evicted_context_back_from_disk() -> None:
    recomputed, plain = _returning_context(0, 0)
    from_disk, disk = _returning_context(0, 1000)
    from_host, host = _returning_context(1000, 0)
    assert plain["cached"] < 1000 and disk["disk"] >= 5000 and disk["cached"] >= 5900 and host["host"] == disk["disk"]
    # The same steps but for the drive's read ahead, which the returning request waits for (nothing else runs):
    # at 6,000 tokens of Llama-3.1-8B's KV, one NVMe drive's read costs about what computing them again does.
    assert from_disk - from_host == pytest.approx(disk["disk"] * H100_8B._s_per_disk_token_read, rel=0.02)
    assert 0.7 < from_disk / recomputed < 1.3


def _alongside_a_decode(read_ahead: bool) -> tuple[dict, LLMEngine]:
    engine = make_sim_engine(H100_8B, num_blocks=400, num_disk_blocks=1000, record_steps=True,
                             disk_read_ahead=read_ahead)
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    arrivals = [Arrival(0.0, _prompt(1, 6000) + [5], params, "first")]
    arrivals += [Arrival(1.0, _prompt(10 + i, 1500), params, f"crowd{i}") for i in range(4)]
    arrivals.append(Arrival(2.0, _prompt(7, 100), SamplingParams(max_tokens=100, ignore_eos=True), "decoding"))
    arrivals.append(Arrival(2.01, _prompt(1, 6000) + [6, 7], params, "again"))
    return {r.request_id: r for r in simulate(engine, arrivals)}, engine


def test_a_request_waiting_for_its_disk_blocks_does_not_hold_up_the_others() -> None:
    """While a returning context is read ahead from disk, a decoding request keeps its pace: no step waits
    for the drive. Loaded in its step instead, the read holds every request in the step up."""
    ahead, engine = _alongside_a_decode(read_ahead=True)
    in_step, blocking = _alongside_a_decode(read_ahead=False)
    read_s = 351 * 16 * H100_8B._s_per_disk_token_read
    assert ahead["again"].first_scheduled_time >= 2.01 + read_s  # it waited for its blocks
    assert ahead["again"].num_cached_tokens == in_step["again"].num_cached_tokens >= 5600
    assert all(record.shape.disk_tokens_read == 0 for record in engine.step_log)
    disk = engine.stats().blocks.disk
    assert disk is not None and disk.read_ahead_blocks == disk.loaded_blocks >= 351  # every load from memory
    assert max(r.shape.disk_tokens_read for r in blocking.step_log) >= 351 * 16
    assert ahead["decoding"].finish_time < in_step["decoding"].finish_time - 0.8 * read_s


def test_a_simulated_engine_keeps_its_disk_index_across_a_restart(tmp_path: Path) -> None:
    save_profile(tmp_path / "h100.json", H100_8B)
    served = build_engine(sim_profile=tmp_path / "h100.json", num_blocks=400, disk_kv_path=tmp_path / "disk",
                          disk_kv_bytes=1 << 30)
    assert served.engine.config.num_disk_blocks == (1 << 30) // (H100_8B.model.kv_bytes_per_token * 16)
    engine = make_sim_engine(H100_8B, num_blocks=400, num_disk_blocks=1000, disk_kv_path=tmp_path / "sim")
    simulate(engine, [Arrival(0.0, _prompt(1, 3000), SamplingParams(max_tokens=4, ignore_eos=True), "a")])
    engine.close()
    served.engine.close()
    again = make_sim_engine(H100_8B, num_blocks=400, num_disk_blocks=1000, disk_kv_path=tmp_path / "sim")
    (result,) = simulate(again, [Arrival(0.0, _prompt(1, 3000) + [9], SamplingParams(max_tokens=4, ignore_eos=True),
                                         "b")])
    assert again.stats().blocks.disk.restored_blocks >= 187 and result.num_cached_tokens >= 2992  # type: ignore[union-attr]
    again.close()
