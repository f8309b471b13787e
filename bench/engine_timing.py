"""What the engine benches that compare checkpoints side by side share: random prompts, and a batch run on the
engine timed on the process CPU clock and the wall clock (bench/engine_families.py, llama4.py,
softcap_attention.py)."""

from __future__ import annotations

import random
import time

from bench.common import CpuClock
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.torch_runner import TorchModelRunner


def random_prompts(count: int, length: int, vocab: int, seed: int, first_id: int = 0) -> list[list[int]]:
    """`count` prompts of `length` token ids drawn from [first_id, vocab)."""
    rng = random.Random(seed)
    return [[rng.randrange(first_id, vocab) for _ in range(length)] for _ in range(count)]


def timed_run(runner: TorchModelRunner, prompts: list[list[int]], max_tokens: int, max_model_len: int,
              max_num_batched_tokens: int) -> dict[str, tuple[float, float]]:
    """Every prompt added at once and decoded greedily for `max_tokens` (no prefix cache): per clock, (when the
    last request got its first token, when the last finished), from the start."""
    config = EngineConfig(block_size=16, num_blocks=runner.num_blocks, max_model_len=max_model_len,
                          max_num_batched_tokens=max_num_batched_tokens, enable_prefix_caching=False)
    clock = CpuClock()
    engine = LLMEngine(config, runner, clock)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    wall_start, cpu_start = time.perf_counter(), clock.now()
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params, arrival_time=cpu_start)
    first_wall = first_cpu = 0.0
    pending = {f"r{i}" for i in range(len(prompts))}
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id in pending:
                pending.discard(out.request_id)
                first_wall, first_cpu = time.perf_counter() - wall_start, clock.now() - cpu_start
    return {"wall": (first_wall, time.perf_counter() - wall_start), "cpu": (first_cpu, clock.now() - cpu_start)}
