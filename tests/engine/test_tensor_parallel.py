"""Tensor parallelism (`--tensor-parallel-size`): the sharding rules, a model sharded over two ranks (two
processes meeting at gloo all-reduces) generating and scoring as one rank does, across families and with
quantized weights, an fp8 cache and a host tier; refusals; a dead worker failing the engine rather than
hanging it; serving over HTTP; and a simulation on N GPUs."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from engine.async_engine import AsyncEngine, EngineDeadError
from engine.build import build_engine
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model.config import ModelConfig
from engine.model.parallel import TPGroup, shard_config, shard_tensor
from engine.model.shm_allreduce import ShmAllReduce, create_file, shm_supported
from engine.roofline import RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.step_time import LinearStepTime, save_profile
from engine.tiny_lora import make_tiny_lora
from engine.tiny_model import make_tiny_model
from engine.torch_runner import TorchModelRunner
from tests.engine.hf_checkpoints import random_prompt, runner_greedy, save_hf_model, transformers_greedy
from tests.engine.serving import engine_server, sdk

RANK1 = TPGroup(rank=1, size=2)


def test_each_rank_reads_its_heads_and_widths_and_the_rest_whole() -> None:
    config = ModelConfig(model_type="llama", vocab_size=10, hidden_size=8, num_layers=1, num_heads=4,
                         num_kv_heads=2, head_dim=2, intermediate_size=12)
    shard = shard_config(config, 2)
    assert (shard.num_heads, shard.num_kv_heads, shard.intermediate_size, shard.hidden_size) == (2, 1, 6, 8)
    with pytest.raises(ValueError, match="must divide num_key_value_heads 2"):
        shard_config(config, 4)
    weight = torch.arange(48.0).reshape(6, 8)
    assert torch.equal(shard_tensor("model.layers.0.self_attn.q_proj.weight", weight, RANK1), weight[3:])
    assert torch.equal(shard_tensor("model.layers.0.mlp.experts.3.up_proj.weight", weight, RANK1), weight[3:])
    assert torch.equal(shard_tensor("model.layers.0.self_attn.o_proj.weight", weight, RANK1), weight[:, 4:])
    assert torch.equal(shard_tensor("model.layers.0.mlp.down_proj.bias", weight[0], RANK1), torch.zeros(8))
    assert torch.equal(shard_tensor("model.layers.0.mlp.down_proj.bias", weight[0], TPGroup(0, 2)), weight[0])
    # A quantized projection's scales follow its rows: cut with q/k/v, whole with o/down; one scalar stays.
    assert torch.equal(shard_tensor("model.layers.0.self_attn.k_proj.weight_scale", weight[:, :1], RANK1), weight[3:, :1])
    assert torch.equal(shard_tensor("model.layers.0.self_attn.o_proj.weight_scale", weight[:, :1], RANK1), weight[:, :1])
    assert shard_tensor("model.layers.0.self_attn.q_proj.weight_scale", torch.tensor(0.5), RANK1).item() == 0.5
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mlp.gate.weight",
                 "model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_norm.weight"):
        assert shard_tensor(name, weight, RANK1) is weight
    # transformers 5's stacked experts: each half of gate_up cut alike, down by its columns.
    stacked = torch.arange(2 * 8 * 3.0).reshape(2, 8, 3)
    part = shard_tensor("model.layers.0.mlp.experts.gate_up_proj", stacked, RANK1)
    assert torch.equal(part, torch.cat([stacked[:, 2:4], stacked[:, 6:8]], dim=1))
    down = torch.arange(2 * 3 * 4.0).reshape(2, 3, 4)
    assert torch.equal(shard_tensor("model.layers.0.mlp.experts.down_proj", down, RANK1), down[:, :, 2:])


def _shm_pair(path: Path, chunk: int, alive: bool = True, timeout_s: float = 30.0) -> list[ShmAllReduce]:
    create_file(path, 2, chunk, torch.float32)
    return [ShmAllReduce(path, rank, 2, chunk, torch.float32, lambda: alive, timeout_s) for rank in (0, 1)]


@pytest.mark.skipif(not shm_supported(), reason="the shared-memory all-reduce is for x86 hosts")
def test_the_shared_memory_all_reduce_sums_in_chunks_and_every_rank_gets_the_same_bits(tmp_path: Path) -> None:
    ranks = _shm_pair(tmp_path / "shm", chunk=64)
    inputs = [[torch.randn(3, 100, generator=torch.Generator().manual_seed(10 * step + rank)) for rank in (0, 1)]
              for step in range(5)]  # 300 elements: five chunks of 64 a call
    results: list[list[torch.Tensor]] = [[], []]

    def rank_loop(rank: int) -> None:
        for step in range(5):
            x = inputs[step][rank].clone()
            assert ranks[rank](x) is not None
            results[rank].append(x)

    threads = [threading.Thread(target=rank_loop, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for step in range(5):
        assert torch.equal(results[0][step], results[1][step])
        torch.testing.assert_close(results[0][step], inputs[step][0] + inputs[step][1])


@pytest.mark.skipif(not shm_supported(), reason="the shared-memory all-reduce is for x86 hosts")
def test_the_shared_memory_all_reduce_gives_up_on_a_dead_or_silent_peer(tmp_path: Path) -> None:
    dead, _ = _shm_pair(tmp_path / "dead", chunk=8, alive=False)
    with pytest.raises(RuntimeError, match="rank 1 is gone"):
        dead(torch.ones(4))
    silent, _ = _shm_pair(tmp_path / "silent", chunk=8, timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="did not reach the all-reduce in 0 s"):
        silent(torch.ones(4))
    assert time.monotonic() - started < 10


def _run(model_dir: Path, tp: int, prompts: list[list[int]], num_blocks: int = 64, **runner: object) -> tuple:
    """Greedy and seeded outputs, and the first prompt's teacher-forced log-probabilities, on `tp` ranks."""
    engine = LLMEngine(EngineConfig(num_blocks=num_blocks, max_model_len=512, max_num_batched_tokens=64,
                                    num_host_blocks=int(runner.get("num_host_blocks", 0))),  # type: ignore[call-overload]
                       TorchModelRunner(model_dir, num_blocks, 16, device="cpu", tensor_parallel_size=tp, **runner))
    try:
        seqs = [engine.add_request(f"g{i}", p, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
                for i, p in enumerate(prompts)]
        seqs.append(engine.add_request("seeded", prompts[0], SamplingParams(max_tokens=8, temperature=1.0, seed=7,
                                                                           ignore_eos=True)))
        scored = engine.add_request("scored", prompts[0], SamplingParams(max_tokens=1, prompt_logprobs=0))
        while engine.has_unfinished():
            engine.step()
        return [s.output_token_ids for s in seqs], torch.tensor([lp.logprob for lp in scored.prompt_logprobs]), engine
    finally:
        engine.runner.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen3_moe"])
def test_two_ranks_generate_and_score_as_one(tmp_path: Path, family: str) -> None:
    model_dir = make_tiny_model(tmp_path / family, family=family)
    rng = random.Random(0)
    prompts = [[rng.randrange(1000) for _ in range(length)] for length in (90, 33, 5)]
    one_outputs, one_scores, _ = _run(model_dir, 1, prompts)
    two_outputs, two_scores, engine = _run(model_dir, 2, prompts)
    assert two_outputs == one_outputs
    torch.testing.assert_close(two_scores, one_scores, rtol=0, atol=1e-4)
    runner = engine.runner
    assert runner.tensor_parallel_size == 2 and runner.config.num_heads == 2  # this rank's half of 4
    assert engine.stats().tensor_parallel_size == 2 and (runner.tp.shm is not None) == shm_supported()
    if family == "llama":  # gloo's all-reduce, as on other CPUs: the same answers
        gloo_outputs, gloo_scores, gloo = _run(model_dir, 2, prompts, shared_memory_allreduce=False)
        assert gloo.runner.tp.shm is None and gloo_outputs == one_outputs
        torch.testing.assert_close(gloo_scores, one_scores, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", ["qwen2", "mixtral"])
def test_a_transformers_checkpoint_on_two_ranks_generates_as_transformers(tmp_path: Path, kind: str) -> None:
    """Qwen2's q/k/v biases (cut with their rows) and tied embeddings, Mixtral's experts; shards of
    100 KB, so every rank reads its parts from several files."""
    model_dir = save_hf_model(kind, tmp_path / kind)
    prompt = random_prompt()
    runner = TorchModelRunner(model_dir, 16, 16, device="cpu", tensor_parallel_size=2)
    try:
        assert runner_greedy(runner, prompt, 10) == transformers_greedy(model_dir, prompt, 10)
    finally:
        runner.close()


def _one_at_a_time(model_dir: Path, tp: int, prompts: list[list[int]]) -> tuple[list[list[int]], LLMEngine]:
    """Greedy answers to `prompts` in turn on a 12-block cache with a 32-block host tier, int8 weights and an
    fp8 cache: later prompts find earlier ones' blocks, in the cache or back from the host tier."""
    runner = TorchModelRunner(model_dir, 12, 16, device="cpu", tensor_parallel_size=tp, quantization="int8",
                              kv_cache_dtype="fp8", num_host_blocks=32)
    engine = LLMEngine(EngineConfig(num_blocks=12, max_model_len=512, num_host_blocks=32), runner)
    outputs = []
    try:
        for i, prompt in enumerate(prompts):
            seq = engine.add_request(f"r{i}", prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
            while engine.has_unfinished():
                engine.step()
            outputs.append(seq.output_token_ids)
    finally:
        runner.close()
    return outputs, engine


def test_quantized_weights_an_fp8_cache_and_a_host_tier_on_two_ranks(tmp_path: Path) -> None:
    """Each rank quantizes its own rows (o and down by its own columns, so their partial sums differ a
    little from one rank's); every rank performs the host tier's copies of its heads."""
    model_dir = make_tiny_model(tmp_path / "tiny")
    rng = random.Random(3)
    shared = [rng.randrange(1000) for _ in range(64)]
    prompts = [shared + [7], shared + [7], *([rng.randrange(1000) for _ in range(100)] for _ in range(2)), shared + [7]]
    one, _ = _one_at_a_time(model_dir, 1, prompts)
    two, engine = _one_at_a_time(model_dir, 2, prompts)
    stats = engine.stats().blocks
    assert stats.prefix_hit_tokens >= 64 and stats.host_hit_tokens >= 48  # the second from GPU, the last from host
    assert two[0] == two[1] == two[-1]  # computed, from cached blocks, from the host tier: the same answer
    assert sum(a[0] == b[0] for a, b in zip(two, one, strict=True)) >= 4  # greedy runs part later: rounding
    options = {"quantization": "int8", "kv_cache_dtype": "fp8"}
    _, one_scores, _ = _run(model_dir, 1, prompts[2:3], **options)
    _, two_scores, _ = _run(model_dir, 2, prompts[2:3], **options)
    assert 0 < (two_scores - one_scores).abs().mean().item() < 0.02 * one_scores.abs().mean().item()


def test_a_disk_tier_on_two_ranks_keeps_a_file_a_rank_across_a_restart(tmp_path: Path) -> None:
    """Every rank writes its heads of each block to its own file and reads them back; a restarted engine
    takes over the blocks all ranks' files hold."""
    model_dir = make_tiny_model(tmp_path / "tiny")
    rng = random.Random(5)
    shared = [rng.randrange(1000) for _ in range(64)]
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)

    def engine() -> LLMEngine:
        runner = TorchModelRunner(model_dir, 12, 16, device="cpu", tensor_parallel_size=2,
                                  disk_kv_path=tmp_path / "kv", num_disk_blocks=32)
        return LLMEngine(EngineConfig(num_blocks=12, max_model_len=512, num_disk_blocks=32), runner)

    def answer(engine: LLMEngine, request_id: str, prompt: list[int]) -> list[int]:
        seq = engine.add_request(request_id, prompt, greedy)
        while engine.has_unfinished():
            engine.step()
        return seq.output_token_ids

    first = engine()
    computed = answer(first, "a", shared + [7])
    answer(first, "crowd", [rng.randrange(1000) for _ in range(180)])  # every block: the shared prefix to disk
    assert answer(first, "b", shared + [7]) == computed and first.stats().blocks.disk_hit_tokens == 64
    first.close()
    assert {p.name for p in (tmp_path / "kv").glob("*.index")} == {"kv-rank0.index", "kv-rank1.index"}
    second = engine()
    assert second.stats().blocks.disk.restored_blocks >= 4  # type: ignore[union-attr]
    assert answer(second, "c", shared + [7]) == computed and second.stats().blocks.disk_hit_tokens == 64
    second.close()


def _adapted(model_dir: Path, tp: int, adapters: dict[str, Path], prompts: list[list[int]]) -> tuple:
    """Greedy outputs of each prompt under each adapter (and the base model) in one batch, and teacher-forced
    scores of the first prompt under the first adapter, with one adapter then unloaded."""
    engine = LLMEngine(EngineConfig(num_blocks=64, max_model_len=512, max_num_batched_tokens=128),
                       TorchModelRunner(model_dir, 64, 16, device="cpu", tensor_parallel_size=tp))
    try:
        for name, path in adapters.items():
            engine.add_lora(name, str(path))
        greedy = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
        seqs = [engine.add_request(f"{name}-{i}", p, greedy, lora=name)
                for name in (*adapters, None) for i, p in enumerate(prompts)]
        first = next(iter(adapters))
        scored = engine.add_request("scored", prompts[0], SamplingParams(max_tokens=1, prompt_logprobs=0), lora=first)
        while engine.has_unfinished():
            engine.step()
        engine.remove_lora(first)
        after = engine.add_request("after", prompts[0], greedy)
        while engine.has_unfinished():
            engine.step()
        return ([s.output_token_ids for s in seqs], torch.tensor([lp.logprob for lp in scored.prompt_logprobs]),
                after.output_token_ids)
    finally:
        engine.runner.close()  # type: ignore[attr-defined]


def test_lora_adapters_on_two_ranks_answer_as_on_one(tmp_path: Path) -> None:
    """Each rank adds its part of an adapter's delta (B's rows of its heads and widths on q/k/v and
    gate/up, A's columns on o and down): a batch mixing two adapters and the base model generates and
    scores as on one rank; an unloaded adapter leaves every rank."""
    model_dir = make_tiny_model(tmp_path / "tiny")
    adapters = {f"a{i}": make_tiny_lora(model_dir, tmp_path / f"a{i}", rank=4, seed=i, std=0.2) for i in range(2)}
    rng = random.Random(5)
    prompts = [[rng.randrange(1000) for _ in range(n)] for n in (40, 17)]
    one_outputs, one_scores, one_after = _adapted(model_dir, 1, adapters, prompts)
    two_outputs, two_scores, two_after = _adapted(model_dir, 2, adapters, prompts)
    assert two_outputs == one_outputs and two_after == one_after
    assert one_outputs[0] != one_outputs[4]  # the adapter changes the answer: its delta is really there
    torch.testing.assert_close(two_scores, one_scores, rtol=0, atol=1e-4)


def test_refusals(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")  # 4 heads, 2 KV heads
    with pytest.raises(ValueError, match="tensor_parallel_size 4 must divide num_key_value_heads 2"):
        TorchModelRunner(model_dir, 8, 16, device="cpu", tensor_parallel_size=4)
    with pytest.raises(ValueError, match="measured step-time profile"):
        save_profile(tmp_path / "measured.json", LinearStepTime(1e-3, 1e-5, 1e-6, 1e-7, 1e-9, model={"num_blocks": 9}))
        build_engine(sim_profile=tmp_path / "measured.json", tensor_parallel_size=2)


def test_a_dead_worker_fails_the_engine_instead_of_hanging_it(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    engine = build_engine(model_dir, num_blocks=32, device="cpu", tensor_parallel_size=2)
    workers = engine.engine.runner.workers  # type: ignore[attr-defined]

    async def scenario() -> str:
        params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
        first = [out async for out in engine.generate(list(range(5, 40)), params)]
        assert first[-1].finished
        workers.processes[0].kill()
        workers.processes[0].join()
        started = time.monotonic()
        with pytest.raises(EngineDeadError, match="step loop crashed"):
            async for _ in engine.generate(list(range(5, 40)), params):
                pass
        assert time.monotonic() - started < 60  # gloo sees the closed connection; no timeout is waited out
        return engine.dead_reason or ""

    assert isinstance(engine, AsyncEngine)
    reason = asyncio.run(scenario())
    assert "RuntimeError" in reason and not engine.is_healthy
    assert not any(p.is_alive() for p in workers.processes)  # closed with the engine


def test_a_sharded_engine_serves_the_openai_sdk_and_reports_it(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    with engine_server(model_dir, device="cpu", tensor_parallel_size=2) as url:
        answer = sdk(url).completions.create(model="tiny", prompt="The quick brown fox", max_tokens=5, temperature=0)
        stats = httpx.get(f"{url}/v1/engine/stats").json()
        metrics = httpx.get(f"{url}/metrics").text
    assert answer.usage.completion_tokens == 5 and stats["tensor_parallel_size"] == 2
    assert 'pitstop_engine_model_config_info{quantization="none",tensor_parallel_size="2"} 1.0' in metrics


def test_a_roofline_simulation_runs_on_the_gpus_it_is_given(tmp_path: Path) -> None:
    save_profile(tmp_path / "roofline.json", RooflineStepTime.builtin("llama-3.1-70b", tensor_parallel=2))
    served = build_engine(sim_profile=tmp_path / "roofline.json", tensor_parallel_size=4)
    step_time = served.engine.runner.step_time  # type: ignore[attr-defined]
    assert step_time == RooflineStepTime.builtin("llama-3.1-70b", tensor_parallel=4)
    assert served.engine.config.num_blocks == step_time.kv_capacity_blocks()
