"""Profiling: run a sweep of synthetic workloads through a real engine, record every step's shape and
duration, and fit a LinearStepTime to them. `run_profile` does it for a model folder on the torch
runner and writes the profile JSON the simulator loads (`pitstop engine profile`)."""

from __future__ import annotations

import json
import platform
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from engine.clock import Clock, WallClock
from engine.config import EngineConfig, kv_element_bytes
from engine.kv_transfer import DISK, KVTransfer
from engine.llm_engine import LLMEngine
from engine.outputs import StepRecord
from engine.roofline import ModelShape
from engine.runner import ModelRunner
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.step_time import FitQuality, LinearStepTime, fit_quality, save_profile

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ProfileSweep:
    """What the sweep runs. Every step of it becomes a record, including the prefills that start
    each decode batch and the chunks a long prompt is cut into, so shapes cover the mix a server sees."""

    prefill_lens: tuple[int, ...] = (16, 64, 256, 512, 1024, 2048)  # lone prefills, one step each
    prefill_batch: int = 4  # each prefill length also as this many prompts sharing one step
    decode_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    context_lens: tuple[int, ...] = (64, 512, 2048)  # prompt length of each decode batch
    decode_steps: int = 8  # steps the whole batch decodes together
    mixed_prefill_lens: tuple[int, ...] = (64, 512)  # a prompt joining a running decode batch
    # Decode batches that check this many drafts a sequence each step (speculative decoding), for a
    # runner that checks drafts: what a draft row costs beyond a prefill token (its sampled row).
    drafted_batch_sizes: tuple[int, ...] = (1, 4, 16)
    drafts_per_sequence: int = 4
    repeats: int = 2
    # Run each prefill size and decode batch size once, unrecorded, first: the first call of a shape
    # pays for allocation and kernel selection, tens of times a normal step.
    warmup: bool = True

    @property
    def step_tokens(self) -> int:
        """Token budget per step: whole prompts in one step, so prefill sizes are as asked."""
        return max(*self.prefill_lens, *self.mixed_prefill_lens, max(self.decode_batch_sizes))

    def output_len(self, context: int, batch_size: int) -> int:
        """Keeps a batch decoding together for `decode_steps` steps: its first prompts start
        decoding while the last are still prefilling, over this many steps."""
        prefill_steps = -(-context * batch_size // self.step_tokens)
        return self.decode_steps + prefill_steps + 1

    def points(self) -> Iterator[tuple[list[int], int, int]]:
        """(prompt lengths, output length, joining prompt length or 0), one run of the sweep."""
        for n in self.prefill_lens:
            yield [n], 1, 0
            if self.prefill_batch > 1 and n >= self.prefill_batch:
                yield [n // self.prefill_batch] * self.prefill_batch, 1, 0
        for context in self.context_lens:
            for batch_size in self.decode_batch_sizes:
                yield [context] * batch_size, self.output_len(context, batch_size), 0
        context = min(self.context_lens)
        for n in self.mixed_prefill_lens:
            for batch_size in self.decode_batch_sizes[::2]:
                yield [context] * batch_size, self.output_len(context, batch_size), n

    def drafted_points(self) -> Iterator[tuple[list[int], int, int]]:
        """Decode batches as above; their answers longer by a step's drafts and one, so the batch keeps
        room for every draft over its `decode_steps` together."""
        for context in self.context_lens:
            for batch_size in self.drafted_batch_sizes:
                yield [context] * batch_size, self.output_len(context, batch_size) + self.drafts_per_sequence + 1, 0

    def blocks_needed(self, block_size: int) -> int:
        """KV blocks that every point of the sweep fits in."""
        return max(_point_blocks(*point, block_size) for point in self.points())


def _point_blocks(prompt_lens: list[int], output_len: int, joining: int, block_size: int) -> int:
    return sum(-(-(n + output_len) // block_size) for n in prompt_lens) + -(-(joining + 1) // block_size)


@dataclass
class ProfileResult:
    model: LinearStepTime
    records: list[StepRecord]
    quality: FitQuality


def profile_runner(runner: ModelRunner, num_blocks: int, block_size: int = 16, *, vocab_size: int,
                   sweep: ProfileSweep | None = None, clock: Clock | None = None,
                   max_model_len: int | None = None, model_info: dict | None = None,
                   seed: int = 0) -> ProfileResult:
    """Drive `runner` (whose KV cache has `num_blocks` blocks of `block_size`) through the sweep on
    an LLMEngine with step recording, and fit a LinearStepTime to the steps. Points that do not fit
    in the KV cache or in `max_model_len` (default: the runner's own, if it has one) are skipped."""
    sweep = sweep or ProfileSweep()
    max_model_len = max_model_len or getattr(runner, "max_model_len", None) or 1 << 30
    config = EngineConfig(
        block_size=block_size, num_blocks=num_blocks, max_model_len=max_model_len,
        max_num_seqs=max(sweep.decode_batch_sizes) + max(1, sweep.prefill_batch),
        max_num_batched_tokens=sweep.step_tokens, long_prefill_token_threshold=sweep.step_tokens,
        enable_prefix_caching=False)  # random prompts would not hit anyway; this keeps it certain
    # A runner that keeps its own clock (a simulated one) is timed on it; a real one on wall time.
    clock = clock or getattr(runner, "clock", None) or WallClock()
    engine = LLMEngine(config, runner, clock, record_steps=True)
    assert engine.step_log is not None
    driver = _SweepDriver(engine, vocab_size, random.Random(seed))

    def fits(prompts: list[int], output_len: int, joining: int) -> bool:
        longest = max(*prompts, joining) + output_len
        blocks = _point_blocks(prompts, output_len, joining, block_size)
        return longest < engine.config.max_model_len and blocks <= num_blocks

    points = [point for point in sweep.points() if fits(*point)]
    drafts = sweep.drafts_per_sequence
    drafted = [point for point in sweep.drafted_points() if fits(point[0], point[1] + drafts, 0)] \
        if getattr(runner, "verifies_drafts", False) and drafts > 0 else []
    if sweep.warmup:
        for prompts, _, joining in points:
            if len(prompts) == 1 or prompts[0] == min(sweep.context_lens) and not joining:
                driver.run(prompts, 2)
        with _drafting(engine, drafts):
            for prompts, _, _ in drafted:
                if prompts[0] == min(sweep.context_lens):
                    driver.run(prompts, 3)
    engine.step_log.clear()
    for _ in range(sweep.repeats):
        for point in points:
            driver.run(*point)
        with _drafting(engine, drafts):
            for point in drafted:
                driver.run(*point)
    records = list(engine.step_log)
    model = LinearStepTime.fit(records, model=dict(model_info or {}, num_blocks=num_blocks,
                                                    block_size=block_size))
    if getattr(runner, "num_host_blocks", 0) and hasattr(runner, "transfer_kv"):
        model = replace(model, c_kv_token_moved=time_kv_transfers(runner, num_blocks, block_size))
        if getattr(runner, "num_disk_blocks", 0):
            read = time_disk_loads(runner, num_blocks, block_size)
            model = replace(model, c_disk_token_read=max(0.0, read - (model.c_kv_token_moved or 0.0)))
    return ProfileResult(model, records, fit_quality(model, records))


def time_kv_transfers(runner: ModelRunner, num_blocks: int, block_size: int,
                      sizes: tuple[int, ...] = (1, 4, 16, 64), repeats: int = 5) -> float:
    """Seconds per token of KV copied to or from the runner's host tier: copies of `sizes` blocks each
    way, timed on their own (the engine runs them before the forward pass, so a step's cost is its
    forward's plus theirs), total time over total tokens, the median of `repeats` rounds."""
    host_blocks = runner.num_host_blocks  # type: ignore[attr-defined]
    sync = _device_sync(runner)
    rounds = []
    for _ in range(repeats):
        seconds = tokens = 0.0
        for size in sizes:
            n = min(size, num_blocks, host_blocks)
            for save in (True, False):
                transfers = [KVTransfer(save, block, block) for block in range(n)]
                sync()
                started = time.perf_counter()
                runner.transfer_kv(transfers)  # type: ignore[attr-defined]
                sync()
                seconds += time.perf_counter() - started
                tokens += n * block_size
        rounds.append(seconds / tokens)
    return sorted(rounds)[len(rounds) // 2]


def time_disk_loads(runner: ModelRunner, num_blocks: int, block_size: int,
                    sizes: tuple[int, ...] = (1, 4, 16, 64), repeats: int = 3) -> float:
    """Seconds per token of KV loaded from the runner's disk tier into the cache: blocks written there,
    synced and dropped from the page cache, then loaded back and timed, so the reads come from the drive
    (what a restarted engine's hits, or blocks long gone from the page cache, cost). The median round."""
    disk = runner.disk  # type: ignore[attr-defined]
    sync = _device_sync(runner)
    rounds = []
    for _ in range(repeats):
        seconds = tokens = 0.0
        for size in sizes:
            n = min(size, num_blocks, runner.num_disk_blocks)  # type: ignore[attr-defined]
            runner.transfer_kv([KVTransfer(True, b, b, DISK, block_hash=b + 1) for b in range(n)])  # type: ignore[attr-defined]
            disk.drop_page_cache()
            sync()
            started = time.perf_counter()
            runner.transfer_kv([KVTransfer(False, b, b, DISK) for b in range(n)])  # type: ignore[attr-defined]
            sync()
            seconds += time.perf_counter() - started
            tokens += n * block_size
        rounds.append(seconds / tokens)
    return sorted(rounds)[len(rounds) // 2]


def _device_sync(runner: ModelRunner) -> Callable[[], None]:
    device = getattr(runner, "device", None)
    if getattr(device, "type", None) == "cuda":
        import torch

        return torch.cuda.synchronize
    return lambda: None


class _EveryStepDrafts:
    """A drafter that proposes `k` tokens at every decode step (what they are does not change a step's
    cost; they are seldom accepted, so the batch decodes as long as planned, or less)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def propose(self, requests: list[tuple[Sequence, int]]) -> list[list[int]]:
        return [seq.token_ids[-min(self.k, room):] if room > 0 else [] for seq, room in requests]

    def forget(self, seq: Sequence) -> None:
        pass


@contextmanager
def _drafting(engine: LLMEngine, k: int) -> Iterator[None]:
    engine.scheduler.drafter = _EveryStepDrafts(k)
    try:
        yield
    finally:
        engine.scheduler.drafter = None


class _SweepDriver:
    def __init__(self, engine: LLMEngine, vocab_size: int, rng: random.Random) -> None:
        self.engine, self.vocab_size, self.rng = engine, vocab_size, rng
        self.count = 0

    def add(self, prompt_len: int, max_tokens: int) -> None:
        self.count += 1
        prompt = [self.rng.randrange(self.vocab_size) for _ in range(prompt_len)]
        # ignore_eos: a real model may sample EOS early; the sweep needs its planned decode steps.
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        self.engine.add_request(f"profile-{self.count}", prompt, params)

    def run(self, prompt_lens: list[int], max_tokens: int, joining: int = 0) -> None:
        """Run prompts to completion together; with `joining`, a prompt of that length arrives once
        all of them are decoding, so its prefill shares a step with their decodes."""
        for n in prompt_lens:
            self.add(n, max_tokens)
        engine = self.engine
        if joining:
            while engine.scheduler.waiting or any(
                    s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running):
                engine.step()
            self.add(joining, 1)
        while engine.has_unfinished():
            engine.step()


def run_profile(model_dir: str | Path, out_path: str | Path, *, num_blocks: int | None = None,
                block_size: int = 16, device: str | None = None, dtype: str | torch.dtype | None = None,
                sweep: ProfileSweep | None = None,
                runner_factory: Callable[..., ModelRunner] | None = None,
                kv_cache_dtype: str = "auto", quantization: str | None = None,
                disk_kv_path: str | Path | None = None, dequantize_mxfp4: bool = False) -> ProfileResult:
    """Profile the model in `model_dir` on the torch runner (or `runner_factory(model_dir,
    num_blocks, block_size, device=..., dtype=...)`) and write the fitted profile to `out_path`.
    `kv_cache_dtype`: the torch runner's KV storage (engine/config.py), recorded as the profile's KV size;
    `quantization`: its W8A8 or W4A16 projections (engine/model/quant_config.py), recorded in the model shape.
    `disk_kv_path`: a folder on the drive a disk tier will use, where its reads are timed (a scratch folder
    made there and removed; default: beside `out_path`). `dequantize_mxfp4`: gpt-oss's MXFP4 experts timed
    dequantized at load, as `serve --dequantize-mxfp4` runs them (else packed, as served by default)."""
    sweep = sweep or ProfileSweep()
    model_dir = Path(model_dir)
    hf_config = json.loads((model_dir / "config.json").read_text())
    num_blocks = num_blocks or sweep.blocks_needed(block_size)
    disk_folder: Path | None = None
    if runner_factory is None:
        import torch

        from engine.torch_runner import TorchModelRunner

        # A host tier and a disk tier (in a folder beside the profile) to time their copies with
        # (LinearStepTime.c_kv_token_moved, c_disk_token_read).
        disk_folder = Path(disk_kv_path or Path(out_path).parent) / f".{Path(out_path).name}.disk-kv"
        runner_factory = partial(TorchModelRunner, num_host_blocks=min(num_blocks, 64), kv_cache_dtype=kv_cache_dtype,
                                 quantization=quantization, disk_kv_path=disk_folder, num_disk_blocks=min(num_blocks, 64),
                                 dequantize_mxfp4=dequantize_mxfp4)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype  # "bfloat16" from a CLI
    runner = runner_factory(model_dir, num_blocks, block_size, device=device, dtype=dtype)
    try:
        return _profile_and_save(runner, model_dir, hf_config, out_path, num_blocks, block_size, sweep, device, dtype)
    finally:
        getattr(runner, "close", lambda: None)()
        if disk_folder is not None:
            shutil.rmtree(disk_folder, ignore_errors=True)


def _profile_and_save(runner: ModelRunner, model_dir: Path, hf_config: dict, out_path: str | Path, num_blocks: int,
                      block_size: int, sweep: ProfileSweep, device: str | None, dtype: object) -> ProfileResult:
    weight_bytes = getattr(getattr(runner, "dtype", None), "itemsize", 2)  # torch.dtype knows its size
    shape = ModelShape.from_hf_config(hf_config, name=model_dir.name, weight_bytes=weight_bytes)
    shape = replace(shape, kv_bytes=kv_element_bytes(getattr(runner, "kv_cache_dtype", "auto"), shape.kv_bytes),
                    quantization=getattr(runner, "quantization", None))
    started = time.time()
    result = profile_runner(runner, num_blocks, block_size, vocab_size=hf_config["vocab_size"],
                            sweep=sweep, model_info=asdict(shape))
    source = {
        "method": "profile_runner sweep, non-negative least squares on relative error",
        "runner": type(runner).__name__, "model_dir": str(model_dir),
        "device": str(getattr(runner, "device", device)), "dtype": str(getattr(runner, "dtype", dtype)),
        "kv_cache_dtype": getattr(runner, "kv_cache_dtype", "auto"),
        "sweep": asdict(sweep), "created_unix": round(started), "profile_wall_s": round(time.time() - started, 3),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
    }
    save_profile(out_path, result.model, source=source, fit=result.quality)
    return result
