"""What sampling controls and prompt scoring cost Pitstop's engine on CPU, each variant beside its
baseline in the same run.

    .venv/bin/python -m bench.engine_sampling [--reps 5] [--batch 32] [--vocab 32000] [--threads N]

A random Llama (4 layers, hidden 256, a 32,000-token vocabulary as Llama 2's) is built into a temp
folder. The head is then 2.5x the rest of the model per token, so vocab-sized work (penalties,
logit_bias, cuts, log-softmax) weighs far more here than beside an 8B model's layers: an upper bound.

- decode: a batch of `--batch` requests (128-token prompts, 64 new tokens, EOS ignored) under each
  variant: greedy; greedy with frequency + presence + repetition penalties; greedy with a 300-token
  logit_bias; greedy under min_tokens; greedy held to a JSON schema, one whose tokens are few (an
  array of digits) and one whose tokens are most (a long string); seeded sampling; seeded sampling cut
  by top-k, top-p and min-p. Output tokens per second, and the ratio to greedy (to seeded sampling for
  the cut). Every engine detokenizes, as a served one does.
- scoring: 8 prompts of 512 tokens, scored as lm-evaluation-harness asks (`echo` + `logprobs` 1:
  every prompt token's log-probability and its likeliest alternative) against the same prompts
  prefilled for one token. Prompt tokens per second and the ratio.
- noise: CPU milliseconds to draw one step's Exp(1) sampling noise for the batch, with torch's
  `exponential_` and as -log(uniform), alternating (`noise_draw_ms`); and the seconds llguidance took
  to build its view of the vocabulary (`grammar_view_build_s`, once per process).

Variants alternate within each repetition; ratios are medians of per-repetition ratios. Each run is
timed on this thread's CPU time (one torch thread: a dedicated machine's wall clock, see
bench.common.CpuClock) and on the wall clock. Writes bench/results/engine_sampling.json."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` and `engine` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, THREADS_HELP, CpuClock, command, machine_info, write_report  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.sampling_params import SamplingParams  # noqa: E402
from engine.structured_output import OutputConstraint, shared_compiler  # noqa: E402
from engine.tiny_model import make_tiny_model  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402
from engine.torch_runner import TorchModelRunner  # noqa: E402

OUT = RESULTS / "engine_sampling.json"
BLOCK_SIZE = 16
PROMPT_LEN, OUTPUT_LEN = 128, 64
SCORE_PROMPTS, SCORE_LEN = 8, 512

# Held answers that outlast the 64 tokens: a few digit tokens allowed at each step, or most tokens.
DIGITS = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 200}
LONG_STRING = {"type": "object", "properties": {"text": {"type": "string", "minLength": 2000}}, "required": ["text"]}

GREEDY = SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, ignore_eos=True)
SAMPLED = SamplingParams(temperature=1.0, seed=7, max_tokens=OUTPUT_LEN, ignore_eos=True)


def decode_variants(vocab: int) -> dict[str, tuple[SamplingParams, str]]:
    """name -> (params, the baseline it is compared with)."""
    bias = tuple((token, 2.0) for token in random.Random(3).sample(range(vocab), 300))
    return {
        "greedy": (GREEDY, "greedy"),
        "penalties": (SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, ignore_eos=True, frequency_penalty=0.5,
                                     presence_penalty=0.5, repetition_penalty=1.1), "greedy"),
        "logit_bias_300": (SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, ignore_eos=True, logit_bias=bias),
                           "greedy"),
        "min_tokens": (SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, min_tokens=OUTPUT_LEN), "greedy"),
        "json_digit_array": (SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, ignore_eos=True,
                                            constraint=OutputConstraint.json_schema(DIGITS)), "greedy"),
        "json_long_string": (SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, ignore_eos=True,
                                            constraint=OutputConstraint.json_schema(LONG_STRING)), "greedy"),
        "sampled": (SAMPLED, "greedy"),
        "sampled_cut": (SamplingParams(temperature=1.0, seed=7, max_tokens=OUTPUT_LEN, ignore_eos=True, top_k=50,
                                       top_p=0.9, min_p=0.05), "sampled"),
    }


def run(runner: TorchModelRunner, config: EngineConfig, prompts: list[list[int]], params: SamplingParams,
        tokenizer: Tokenizer) -> dict[str, float]:
    """All requests at once, stepped to the end: seconds on both clocks and tokens computed."""
    clock = CpuClock()
    engine = LLMEngine(config, runner, clock, tokenizer=tokenizer)
    wall, cpu = time.perf_counter(), clock.now()
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params, arrival_time=cpu)
    while engine.has_unfinished():
        engine.step()
    return {"cpu_s": clock.now() - cpu, "wall_s": time.perf_counter() - wall}


def noise_draw_ms(batch: int, vocab: int, reps: int = 30) -> dict[str, float]:
    """CPU ms to draw one step's Exp(1) noise for the batch, both ways, alternating: torch's exponential_
    (the sampler's first way) and -log of uniforms (its way now, engine/model/sampler.py)."""
    noise = torch.empty(batch, vocab)
    ways = {"exponential_": lambda: noise.exponential_(), "neg_log_uniform": lambda: noise.uniform_().log_().neg_()}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(reps):
        for name, draw in ways.items():
            start = time.thread_time()
            draw()
            times[name].append((time.thread_time() - start) * 1000)
    return {name: statistics.median(ms) for name, ms in times.items()}


def median_ratio(runs: list[dict[str, float]], baseline: list[dict[str, float]], clock: str) -> float:
    """How many times the baseline's speed this variant runs at (< 1: slower)."""
    return statistics.median(b[clock] / r[clock] for r, b in zip(runs, baseline, strict=True))


def summary(runs: dict[str, list[dict[str, float]]], baselines: dict[str, str], tokens: int) -> dict:
    out = {}
    for name, measured in runs.items():
        base = runs[baselines[name]]
        out[name] = {
            "tokens_per_s_cpu": tokens / statistics.median(r["cpu_s"] for r in measured),
            "tokens_per_s_wall": tokens / statistics.median(r["wall_s"] for r in measured),
            "baseline": baselines[name],
            "speed_vs_baseline_cpu": median_ratio(measured, base, "cpu_s"),
            "speed_vs_baseline_wall": median_ratio(measured, base, "wall_s"),
        }
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="pitstop-bench-")
    model_dir = make_tiny_model(Path(tmp.name) / "model", layers=args.layers, hidden=args.hidden,
                                vocab_size=args.vocab, max_position_embeddings=2048)
    per_seq = -(-(max(PROMPT_LEN + OUTPUT_LEN, SCORE_LEN + 1)) // BLOCK_SIZE)
    config = EngineConfig(block_size=BLOCK_SIZE, num_blocks=max(args.batch, SCORE_PROMPTS) * per_seq + 8,
                          max_num_seqs=max(args.batch, SCORE_PROMPTS), max_num_batched_tokens=2048,
                          long_prefill_token_threshold=SCORE_LEN, enable_prefix_caching=False)
    runner = TorchModelRunner(model_dir, config.num_blocks, BLOCK_SIZE, device="cpu", dtype=torch.float32)
    rng = random.Random(1)
    decode_prompts = [[rng.randrange(args.vocab) for _ in range(PROMPT_LEN)] for _ in range(args.batch)]
    score_prompts = [[rng.randrange(args.vocab) for _ in range(SCORE_LEN)] for _ in range(SCORE_PROMPTS)]
    scoring = {"prefill": (SamplingParams(temperature=0.0, max_tokens=1), "prefill"),
               "echo_logprobs_1": (SamplingParams(temperature=0.0, max_tokens=1, logprobs=1, prompt_logprobs=1),
                                   "prefill")}
    tokenizer = Tokenizer(model_dir)
    variants = decode_variants(args.vocab)
    # Warm-up: first calls of each shape allocate; the first grammar builds llguidance's view of the
    # vocabulary (about a second for 32,000 tokens, once per process: engine/structured_output.py).
    run(runner, config, decode_prompts[:4], GREEDY, tokenizer)
    started = time.perf_counter()
    shared_compiler(tokenizer.to_json(), args.vocab, tuple(runner.eos_token_ids))
    grammar_view_build_s = time.perf_counter() - started
    run(runner, config, decode_prompts[:4], variants["json_digit_array"][0], tokenizer)
    decode_runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    score_runs: dict[str, list[dict[str, float]]] = {name: [] for name in scoring}
    for rep in range(args.reps):
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for name in order:
            decode_runs[name].append(run(runner, config, decode_prompts, variants[name][0], tokenizer))
        for name in (list(scoring) if rep % 2 == 0 else list(reversed(scoring))):
            score_runs[name].append(run(runner, config, score_prompts, scoring[name][0], tokenizer))
        print(f"rep {rep + 1}/{args.reps}", file=sys.stderr)
    report = {
        "command": command("bench.engine_sampling", argv),
        "machine": machine_info(),
        "model": {"layers": args.layers, "hidden": args.hidden, "vocab": args.vocab, "threads": args.threads},
        "decode": {"batch": args.batch, "prompt_len": PROMPT_LEN, "output_len": OUTPUT_LEN,
                   "variants": summary(decode_runs, {k: v[1] for k, v in variants.items()},
                                       args.batch * OUTPUT_LEN)},
        "scoring": {"prompts": SCORE_PROMPTS, "prompt_len": SCORE_LEN,
                    "variants": summary(score_runs, {k: v[1] for k, v in scoring.items()},
                                        SCORE_PROMPTS * SCORE_LEN)},
        "grammar_view_build_s": grammar_view_build_s,
        "noise_draw_ms": noise_draw_ms(args.batch, args.vocab),
        "reps": args.reps,
    }
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    result = main()
    for part in ("decode", "scoring"):
        for name, row in result[part]["variants"].items():
            print(f"{part:8s} {name:16s} {row['tokens_per_s_cpu']:9.0f} tok/s (cpu)  "
                  f"x{row['speed_vs_baseline_cpu']:.3f} of {row['baseline']} (cpu), "
                  f"x{row['speed_vs_baseline_wall']:.3f} (wall)")
