"""Pitstop's engine against transformers' `generate` on CPU, same weights, same prompts, same run.

    .venv/bin/python -m bench.engine_cpu [--batch-sizes 1 8 32] [--reps 5] [--threads N]

A tiny random Llama (4 layers, hidden 256 by default) is built into a temp folder with
make_tiny_model. For each batch size, B prompts of ~128 tokens (lengths spread +-16 so HF's left
padding is exercised) generate 128 tokens each, greedy, EOS ignored:
- Pitstop: LLMEngine + TorchModelRunner, all requests added at once, stepped until done. TTFT and
  TPOT are per request (median over the batch); throughput is output tokens / wall time.
- HF: AutoModelForCausalLM.from_pretrained(folder, float32), one left-padded batch,
  min_new_tokens = max_new_tokens = 128. TTFT = wall time of a 1-token generate on the same batch;
  TPOT = (total - TTFT) / (128 - 1).
The two alternate (which goes first flips every repetition) so machine noise hits both alike; the
speedups are medians of per-repetition paired ratios. Every run is timed on the wall clock and on
this thread's CPU time (one torch thread by default, so that is all the compute): on a shared
machine the CPU-time figures are what a dedicated one would show, the wall figures what this one
did. Writes bench/results/engine_cpu.json."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` and `engine` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, THREADS_HELP, CpuClock, command, machine_info, write_report  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.sampling_params import SamplingParams  # noqa: E402
from engine.tiny_model import make_tiny_model  # noqa: E402
from engine.torch_runner import TorchModelRunner  # noqa: E402

OUT = RESULTS / "engine_cpu.json"
BLOCK_SIZE = 16


@dataclass(frozen=True)
class Measurement:
    throughput_tok_s: float
    ttft_s: float
    tpot_s: float
    total_s: float

    @classmethod
    def of(cls, start: float, first_tokens: list[float], finishes: list[float], output_len: int) -> Measurement:
        """Per-request TTFT and TPOT (medians over the batch) from when each got its first and last token."""
        ttft = statistics.median(f - start for f in first_tokens)
        tpot = statistics.median((e - f) / max(1, output_len - 1) for f, e in zip(first_tokens, finishes, strict=True))
        total = max(finishes) - start
        return cls(len(finishes) * output_len / total, ttft, tpot, total)


# Each run is timed on two clocks: "cpu" (this thread's CPU time: a dedicated machine, see
# bench.common.CpuClock) and "wall" (the shared machine as it was).
CLOCKS = ("cpu", "wall")
Timed = dict[str, Measurement]


def make_prompts(batch: int, mean_len: int, spread: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    lens = [max(1, mean_len + rng.randint(-spread, spread)) for _ in range(batch)]
    return [[rng.randrange(vocab) for _ in range(n)] for n in lens]


# ---- Pitstop -----------------------------------------------------------------------------------


def engine_config(max_batch: int, max_prompt: int, output_len: int) -> EngineConfig:
    """Room for the whole batch at once (KV and one prefill step), as HF's single batch has."""
    per_seq_blocks = -(-(max_prompt + output_len) // BLOCK_SIZE)
    return EngineConfig(block_size=BLOCK_SIZE, num_blocks=max_batch * per_seq_blocks + 8,
                        max_model_len=max_prompt + output_len + 1, max_num_seqs=max(max_batch, 1),
                        max_num_batched_tokens=max(max_batch * max_prompt, 512),
                        long_prefill_token_threshold=max_prompt, enable_prefix_caching=False)


def run_pitstop(runner: TorchModelRunner, config: EngineConfig, prompts: list[list[int]],
                output_len: int) -> tuple[Timed, list[list[int]]]:
    """All requests at once, stepped until done. The engine runs on the CPU clock; wall times of each
    request's first and last token are taken after the step that produced them."""
    clock = CpuClock()
    engine = LLMEngine(config, runner, clock)  # fresh scheduler and block manager each run
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    wall_start, cpu_start = time.perf_counter(), clock.now()
    seqs = [engine.add_request(f"r{i}", p, params, arrival_time=cpu_start) for i, p in enumerate(prompts)]
    first_wall: dict[str, float] = {}
    finish_wall: dict[str, float] = {}
    while engine.has_unfinished():
        for out in engine.step():
            now = time.perf_counter()
            first_wall.setdefault(out.request_id, now)
            if out.finished:
                finish_wall[out.request_id] = now
    timed = {
        "cpu": Measurement.of(cpu_start, [s.first_token_time for s in seqs], [s.finish_time for s in seqs], output_len),
        "wall": Measurement.of(wall_start, [first_wall[s.request_id] for s in seqs],
                               [finish_wall[s.request_id] for s in seqs], output_len),
    }
    return timed, [s.output_token_ids for s in seqs]


# ---- transformers ------------------------------------------------------------------------------


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def hf_generate(model, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, pad_id: int
                ) -> tuple[dict[str, float], torch.Tensor]:
    wall, cpu = time.perf_counter(), time.thread_time()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, pad_token_id=pad_id)
    return {"cpu": time.thread_time() - cpu, "wall": time.perf_counter() - wall}, out


def run_hf(model, prompts: list[list[int]], output_len: int, pad_id: int) -> tuple[Timed, list[list[int]]]:
    """TTFT: a 1-token generate on the batch; TPOT: (total - TTFT) / (n - 1), as if all were in lockstep."""
    ids, mask = left_pad(prompts, pad_id)
    ttft, _ = hf_generate(model, ids, mask, 1, pad_id)
    total, out = hf_generate(model, ids, mask, output_len, pad_id)
    batch = len(prompts)
    timed = {c: Measurement.of(0.0, [ttft[c]] * batch, [total[c]] * batch, output_len) for c in CLOCKS}
    return timed, out[:, ids.shape[1]:].tolist()


# ---- the run -----------------------------------------------------------------------------------


def speedups(pitstop: Measurement, hf: Measurement) -> dict[str, float]:
    """> 1 means Pitstop is faster, for every metric."""
    return {"throughput": pitstop.throughput_tok_s / hf.throughput_tok_s, "ttft": hf.ttft_s / pitstop.ttft_s,
            "tpot": hf.tpot_s / pitstop.tpot_s}


def prefix_agreement(ours: list[list[int]], theirs: list[list[int]]) -> float:
    """Mean share of each output that matches before the first differing token. fp32 sums in another
    order (batching, padding) can flip a near-tie, after which greedy paths part for good."""
    shares = []
    for a, b in zip(ours, theirs, strict=True):
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        shares.append(same / max(len(a), len(b), 1))
    return statistics.fmean(shares)


def median_of(ms: list[Measurement]) -> dict[str, float]:
    return {k: statistics.median(getattr(m, k) for m in ms) for k in Measurement.__dataclass_fields__}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--prompt-spread", type=int, default=16, help="prompt lengths vary by +- this")
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)  # both engines share the process, so both get exactly this
    tmp = tempfile.TemporaryDirectory(prefix="pitstop-bench-")
    model_dir = make_tiny_model(Path(tmp.name) / "tiny", layers=args.layers, hidden=args.hidden, heads=args.heads,
                                kv_heads=args.kv_heads, vocab_size=args.vocab,
                                max_position_embeddings=max(2048, args.prompt_len + args.prompt_spread + args.output_len + 1))
    max_batch, max_prompt = max(args.batch_sizes), args.prompt_len + args.prompt_spread
    config = engine_config(max_batch, max_prompt, args.output_len)
    runner = TorchModelRunner(model_dir, config.num_blocks, BLOCK_SIZE, device="cpu", dtype=torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pad_id = hf.config.pad_token_id
    prompts = {b: make_prompts(b, args.prompt_len, args.prompt_spread, args.vocab, seed=b) for b in args.batch_sizes}

    # Warm-up: first calls of each shape pay for allocation and kernel selection.
    for b in args.batch_sizes:
        run_pitstop(runner, config, prompts[b], min(4, args.output_len))
        run_hf(hf, prompts[b], min(4, args.output_len), pad_id)

    runs: dict[int, list[dict[str, Timed]]] = {b: [] for b in args.batch_sizes}
    agreement: dict[int, float] = {}
    for rep in range(args.reps):
        for b in args.batch_sizes:
            got = {}
            for name in ("pitstop", "hf") if rep % 2 == 0 else ("hf", "pitstop"):
                if name == "pitstop":
                    got[name] = run_pitstop(runner, config, prompts[b], args.output_len)
                else:
                    got[name] = run_hf(hf, prompts[b], args.output_len, pad_id)
            runs[b].append({name: timed for name, (timed, _) in got.items()})
            if rep == 0:  # a sanity check that both ran the same model: greedy tokens should agree
                agreement[b] = prefix_agreement(got["pitstop"][1], got["hf"][1])

    results = []
    for b in args.batch_sizes:
        row: dict = {"batch_size": b, "greedy_prefix_agreement": agreement[b]}
        for clock in CLOCKS:
            pairs = [(r["pitstop"][clock], r["hf"][clock]) for r in runs[b]]
            ratios = [speedups(p, h) for p, h in pairs]
            row[clock] = {"pitstop": median_of([p for p, _ in pairs]), "hf": median_of([h for _, h in pairs]),
                          "pitstop_speedup": {k: statistics.median(x[k] for x in ratios) for k in ratios[0]},
                          "reps": {"pitstop": [asdict(p) for p, _ in pairs], "hf": [asdict(h) for _, h in pairs]}}
        results.append(row)
    report = {
        "benchmark": "engine_cpu",
        "command": command("bench.engine_cpu", argv),
        "what": "Pitstop LLMEngine+TorchModelRunner vs transformers generate, CPU float32, greedy, ignore EOS. "
                "pitstop_speedup > 1 means Pitstop is faster (throughput ratio; hf/pitstop for TTFT and TPOT); "
                "medians of per-repetition paired ratios. Clocks: cpu = this thread's CPU time (1 torch thread: "
                "a dedicated machine; the headline on a shared box), wall = the shared machine's wall clock.",
        "model": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "kv_heads": args.kv_heads,
                  "vocab": args.vocab, "intermediate": runner.config.intermediate_size,
                  "params": sum(p.numel() for p in hf.parameters())},
        "workload": {"prompt_len": args.prompt_len, "prompt_spread": args.prompt_spread,
                     "output_len": args.output_len, "reps": args.reps},
        "engine_config": asdict(config),
        "machine": machine_info(),
        "results": results,
    }
    write_report(args.out, report)
    for clock in CLOCKS:
        print_table(results, clock)
    tmp.cleanup()
    return report


def print_table(results: list[dict], clock: str) -> None:
    print(f"{clock + ' clock':>9} | {'tok/s pitstop':>13} {'hf':>6} {'x':>5} | {'TTFT ms p':>9} {'hf':>7} {'x':>5} "
          f"| {'TPOT ms p':>9} {'hf':>7} {'x':>5}")
    for r in results:
        p, h, s = r[clock]["pitstop"], r[clock]["hf"], r[clock]["pitstop_speedup"]
        print(f"{'batch ' + str(r['batch_size']):>9} | {p['throughput_tok_s']:>13.0f} {h['throughput_tok_s']:>6.0f} "
              f"{s['throughput']:>5.2f} | {p['ttft_s'] * 1e3:>9.1f} {h['ttft_s'] * 1e3:>7.1f} {s['ttft']:>5.2f} "
              f"| {p['tpot_s'] * 1e3:>9.2f} {h['tpot_s'] * 1e3:>7.2f} {s['tpot']:>5.2f}")


if __name__ == "__main__":
    main()
