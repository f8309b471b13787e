"""The torch runner on this CPU in several variants of one model folder (keyword arguments of
TorchModelRunner: a KV storage, a weight quantization, tensor parallelism; `threads` sets torch's
threads while a variant runs), measured the same way for each: teacher-forced scores against the first
variant's, and median step times taken side by side in alternating rounds. Shared by bench/kv_fp8.py,
bench/quantization.py and bench/tensor_parallel.py."""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from collections.abc import Iterator
from pathlib import Path


def _runner(model_dir: Path, blocks: int, options: dict):  # noqa: ANN202 - a TorchModelRunner
    import torch

    from engine.torch_runner import TorchModelRunner

    with _threads(options):  # a tensor-parallel runner's workers take the threads it starts with
        return TorchModelRunner(model_dir, blocks, 16, device="cpu", dtype=torch.float32,
                                **{k: v for k, v in options.items() if k != "threads"})


@contextlib.contextmanager
def _threads(options: dict) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(options.get("threads", before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _close(engines: dict) -> None:
    for engine in engines.values():
        close = getattr(engine.runner, "close", None)
        if close is not None:
            close()


def score_variants(model_dir: Path, prompts: list[list[int]], variants: dict[str, dict]) -> dict:
    """Each variant's teacher-forced log-probabilities of `prompts` (64-token chunks, each reading the
    earlier ones' KV back) and top-1 tokens against the first variant's."""
    import torch

    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams

    def score(options: dict) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = sum(-(-len(p) // 16) for p in prompts) + 8
        engine = LLMEngine(EngineConfig(num_blocks=blocks, max_model_len=2048, long_prefill_token_threshold=64,
                                        max_num_batched_tokens=256, enable_prefix_caching=False),
                           _runner(model_dir, blocks, options))
        seqs = [engine.add_request(f"p{i}", p, SamplingParams(max_tokens=1, prompt_logprobs=1, temperature=0))
                for i, p in enumerate(prompts)]
        with _threads(options):
            while engine.has_unfinished():
                engine.step()
        _close({"": engine})
        logprobs = torch.tensor([lp.logprob for s in seqs for lp in s.prompt_logprobs])
        top1 = torch.tensor([lp.top_ids[0] for s in seqs for lp in s.prompt_logprobs])
        return logprobs, top1

    (reference_name, reference), *others = variants.items()
    exact, exact_top1 = score(reference)
    out: dict = {"scored_tokens": len(exact), "reference": reference_name,
                 "mean_abs_logprob_reference": round(exact.abs().mean().item(), 4)}
    for name, options in others:
        logprobs, top1 = score(options)
        delta = (logprobs - exact).abs()
        out[name] = {"mean_abs_logprob_error": round(delta.mean().item(), 4),
                     "p99_abs_logprob_error": round(delta.quantile(0.99).item(), 4),
                     "relative_logprob_error": round(delta.mean().item() / exact.abs().mean().item(), 5),
                     "top1_agreement": round((top1 == exact_top1).float().mean().item(), 4)}
        print(f"torch accuracy {name:9s} mean |d logprob| {out[name]['mean_abs_logprob_error']:.4f} "
              f"top-1 agreement {out[name]['top1_agreement']:.4f}", flush=True)
    return out


def decode_step_variants(model_dir: Path, batch: int, context: int, steps: int, rounds: int,
                         variants: dict[str, dict]) -> dict[str, float]:
    """Median decode step (ms) of `batch` sequences at `context` tokens, per variant, in alternating rounds."""
    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams

    blocks = batch * (-(-(context + steps * rounds + 16) // 16))
    rng = random.Random(0)
    prompts = [[rng.randrange(1000) for _ in range(context)] for _ in range(batch)]
    engines = {}
    for name, options in variants.items():
        engine = LLMEngine(EngineConfig(num_blocks=blocks, max_model_len=context + steps * rounds + 16,
                                        max_num_seqs=batch, max_num_batched_tokens=2048),
                           _runner(model_dir, blocks, options))
        seqs = [engine.add_request(f"s{i}", prompt, SamplingParams(max_tokens=steps * rounds + 8, ignore_eos=True,
                                                                     temperature=0))
                for i, prompt in enumerate(prompts)]
        while any(s.num_output_tokens == 0 for s in seqs):
            engine.step()  # prefill until every sequence decodes
        engines[name] = engine
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            with _threads(variants[name]):
                for _ in range(steps):
                    started = time.perf_counter()
                    engine.step()
                    times[name].append(time.perf_counter() - started)
    _close(engines)
    return {name: round(statistics.median(t) * 1e3, 3) for name, t in times.items()}


def prefill_step_variants(model_dir: Path, length: int, rounds: int, variants: dict[str, dict]) -> dict[str, float]:
    """Median time (ms) to prefill one `length`-token prompt in one step, per variant, alternating."""
    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams

    blocks = -(-(length + 16) // 16) + 1
    rng = random.Random(1)
    engines = {name: LLMEngine(EngineConfig(num_blocks=blocks, max_model_len=length + 16,
                                            max_num_seqs=1, max_num_batched_tokens=length, enable_prefix_caching=False),
                               _runner(model_dir, blocks, options)) for name, options in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in engines}
    for round_index in range(rounds + 1):  # the first round warms up
        prompt = [rng.randrange(1000) for _ in range(length)]
        for name, engine in engines.items():
            engine.add_request(f"r{round_index}", prompt, SamplingParams(max_tokens=1))
            with _threads(variants[name]):
                started = time.perf_counter()
                engine.step()
                if round_index:
                    times[name].append(time.perf_counter() - started)
                while engine.has_unfinished():
                    engine.step()
    _close(engines)
    return {name: round(statistics.median(t) * 1e3, 3) for name, t in times.items()}
