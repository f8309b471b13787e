"""EAGLE and EAGLE-3 speculative decoding (engine/eagle.py, engine/eagle3.py) beside plain decoding, n-gram
drafts and a draft model, on
this CPU, side by side in one run: tokens a request gets per target forward pass, decode tokens a second,
and the drafts' acceptance (tokens a pass: a request's output tokens over the target passes it was in,
its prefill's included).

No real EAGLE head fits here (EAGLE-LLaMA3-Instruct-8B drafts for an 8B target), so the target is a random
Llama (engine/tiny_model.py) and its head is trained in the run (engine/tiny_eagle.py: the target's greedy
continuations of the benchmark's prompts, teacher-forced, a few hundred steps; the EAGLE-3 head likewise,
engine/tiny_eagle3.py, over the target's layers 2, n // 2 and n - 3 and a quarter of its vocabulary, the
continuations' most frequent ids, with the same steps). A random target's
continuations follow no pattern so little training generalises from, so the head is measured on the
prompts it was trained on (`seen`: what a head that has learnt its target's behaviour does) and on fresh
ones (`unseen`: what this toy head does elsewhere: next to nothing). The draft model is the target's first
layer (`make_truncated_model`); n-gram drafts look the request's own tokens up. Greedy requests, one and
`--batch` at once, each arm in alternating rounds (drift in the machine hits all), one torch thread;
tokens a second on the thread's CPU time (bench.common.CpuClock's reasoning) and on the wall clock.

    .venv/bin/python -m bench.eagle            # full run
    .venv/bin/python -m bench.eagle --quick    # smaller, for a smoke test
    .venv/bin/python -m bench.eagle --rounds 2 --out bench/results/eagle3.json  # the EAGLE-3 comparison
    .venv/bin/python -m bench.eagle --rounds 1 --eagle3-layers 5,6,7 --out bench/results/eagle3_late_layers.json

Writes bench/results/eagle.json."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import RESULTS, command, machine_info, write_report
from engine.config import EngineConfig, SpeculativeConfig
from engine.eagle3_head import default_aux_layer_ids
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.tiny_eagle import random_prompts, train_eagle_head
from engine.tiny_eagle3 import train_eagle3_head
from engine.tiny_model import make_tiny_model, make_truncated_model
from engine.torch_runner import TorchModelRunner

OUT = RESULTS / "eagle.json"


def run_once(target: Path, spec: SpeculativeConfig | None, prompts: list[list[int]], output_len: int) -> dict:
    """The prompts at once, `output_len` greedy tokens each, to the end."""
    blocks = len(prompts) * (len(prompts[0]) + output_len + 16) // 16 + 16
    engine = LLMEngine(EngineConfig(block_size=16, num_blocks=blocks, max_model_len=1024, speculative=spec),
                       TorchModelRunner(target, blocks, 16))
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params)
    wall, cpu = time.perf_counter(), time.thread_time()
    produced = request_steps = 0  # request_steps: a request's target passes, each pass counted once a request
    while engine.has_unfinished():
        outputs = engine.step()
        produced += sum(len(out.new_token_ids) for out in outputs)
        request_steps += len({out.request_id for out in outputs})
    spec_counts = engine.stats().spec
    return {"seconds": time.thread_time() - cpu, "wall_seconds": time.perf_counter() - wall, "tokens": produced,
            "steps": engine.num_steps, "request_steps": request_steps, "draft_tokens": spec_counts.draft_tokens,
            "accepted_tokens": spec_counts.accepted_tokens, "draft_passes": spec_counts.draft_passes}


def compare(target: Path, arms: dict[str, SpeculativeConfig | None], prompts: list[list[int]],
            args: argparse.Namespace) -> dict:
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, spec in arms.items():
            runs[name].append(run_once(target, spec, prompts, args.output_len))
    plain_tps = statistics.median(r["tokens"] / r["seconds"] for r in runs["plain"])
    plain_wall = statistics.median(r["tokens"] / r["wall_seconds"] for r in runs["plain"])
    row: dict = {}
    for name in arms:
        total = {f: sum(r[f] for r in runs[name]) for f in ("tokens", "request_steps", "draft_tokens", "accepted_tokens")}
        tps = statistics.median(r["tokens"] / r["seconds"] for r in runs[name])
        wall = statistics.median(r["tokens"] / r["wall_seconds"] for r in runs[name])
        row[name] = {"tokens_per_target_pass": round(total["tokens"] / total["request_steps"], 3),
                     "tokens_per_s": round(tps, 1), "speedup": round(tps / plain_tps, 3),
                     "wall_tokens_per_s": round(wall, 1), "wall_speedup": round(wall / plain_wall, 3),
                     "acceptance": round(total["accepted_tokens"] / total["draft_tokens"], 3)
                     if total["draft_tokens"] else None,
                     "draft_passes": round(statistics.mean(r["draft_passes"] for r in runs[name]), 1)}
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=32, help="prompts the head is trained on")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--output-len", type=int, default=48)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eagle3-layers", type=lambda v: [int(i) for i in v.split(",")], default=None,
                        help="the target layers the EAGLE-3 head reads, e.g. 5,6,7 (default vLLM's: 2, n // 2, n - 3)")
    parser.add_argument("--quick", action="store_true", help="2 layers, hidden 64, 100 training steps, 1 round")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.hidden, args.train_steps, args.rounds, args.prompts = 2, 64, 100, 1, 8
    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory(prefix="pitstop-eagle-")
    root = Path(tmp.name)
    target = make_tiny_model(root / "target", layers=args.layers, hidden=args.hidden, heads=8, kv_heads=4,
                             vocab_size=args.vocab)
    seen = random_prompts(args.prompts, args.prompt_len, args.vocab, seed=0)
    started = time.perf_counter()
    head = train_eagle_head(target, root / "head", seen, new_tokens=args.output_len, steps=args.train_steps)
    train_s = time.perf_counter() - started
    # vLLM's default layers; a 2-layer --quick target has no layer 2: its first, middle and last inputs.
    aux = args.eagle3_layers or (list(default_aux_layer_ids(args.layers)) if args.layers >= 4
                                 else [0, args.layers // 2, args.layers - 1])
    started = time.perf_counter()
    head3 = train_eagle3_head(target, root / "head3", seen, aux, new_tokens=args.output_len, steps=args.train_steps,
                              draft_vocab=args.vocab // 4)
    train3_s = time.perf_counter() - started
    draft = make_truncated_model(target, root / "draft", 1)
    arms: dict[str, SpeculativeConfig | None] = {
        "plain": None, "ngram": SpeculativeConfig(num_speculative_tokens=args.k),
        "eagle": SpeculativeConfig(method="eagle", model=str(head), num_speculative_tokens=args.k),
        "eagle3": SpeculativeConfig(method="eagle3", model=str(head3), num_speculative_tokens=args.k),
        "draft_model": SpeculativeConfig(model=str(draft), num_speculative_tokens=args.k)}
    unseen = random_prompts(args.batch, args.prompt_len, args.vocab, seed=1)
    rows = []
    for name, prompts in (("seen", seen[:1]), ("seen", seen[:args.batch]), ("unseen", unseen[:1]),
                          ("unseen", unseen)):
        row = {"prompts": name, "batch": len(prompts), **compare(target, arms, prompts, args)}
        rows.append(row)
        print(f"{name} prompts, batch {len(prompts)}: " + "; ".join(
            f"{arm} {row[arm]['tokens_per_target_pass']} tok/pass {row[arm]['speedup']}x "
            f"(acceptance {row[arm]['acceptance']})" for arm in arms), flush=True)
    report = {"command": command("bench.eagle", argv), "machine": machine_info(), "torch_threads": 1,
              "model": f"random weights: {args.layers} layers, hidden {args.hidden}, 8 heads, 4 KV heads, "
                       f"vocab {args.vocab}, float32; the EAGLE head: 1 layer; the EAGLE-3 head: 1 layer over layers "
                       f"{aux}, draft vocabulary {args.vocab // 4}; the draft model: the target's first layer",
              "head_training": {"prompts": args.prompts, "steps": args.train_steps, "seconds": round(train_s, 1),
                                "eagle3_seconds": round(train3_s, 1)},
              "num_speculative_tokens": args.k, "prompt_tokens": args.prompt_len, "output_tokens": args.output_len,
              "rounds": args.rounds, "requests": "greedy",
              "clock": "tokens_per_s and speedup on the thread's CPU time; wall_* on the wall clock",
              "rows": rows}
    write_report(args.out, report)
    tmp.cleanup()
    return report


if __name__ == "__main__":
    main()
