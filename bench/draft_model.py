"""Draft-model speculative decoding (engine/draft_model.py) on this CPU: what a draft buys at the
acceptance it gets, and what a useless one costs.

A real draft/target pair (Llama-3.2-1B for Llama-3.1-8B) cannot be loaded here, and two random models
agree on nothing, so acceptance is made a knob: the target has random weights whose layers after the
first are scaled down by `s` (their attention output and MLP down projections, so each writes s times
less into the residual stream), and the draft is the target's first layer (`make_truncated_model`: the
same embeddings, first layer, final norm and head; 1/L of the target's layer work). The smaller s, the
more of the target's prediction its first layer carries and the more drafts hold; s = 1 is the plain
random model. The worst case: an unrelated random draft of the same size, whose drafts almost never hold.

For each target, greedy and sampled (temperature 0.8, seeded, another seed each round) requests, one at a
time and 8 at once: plain decoding against draft-model speculation checking every draft (`fixed`, k
drafts) and with goodput draft lengths (`goodput`: each step's length chosen before the draft runs, priced
by `pitstop engine profile`'s fits of the target's and the draft's shapes on this machine, made first over
the sizes run here), in alternating rounds (drift in the machine hits all), the engine end to end
(scheduler, block manager, torch runner, one torch thread). Sampled requests check their drafts by
rejection sampling (`fixed`, `goodput`: the default acceptance_method) and by the coupled rule
(`fixed_coupled`, `goodput_coupled`: the draft drawn with the request's own noise), side by side.
Reported: output tokens per second of the thread's CPU time (bench.common.CpuClock's reasoning: on a
shared machine, a dedicated one's wall clock) and of the wall clock, the acceptance rate over all rounds,
the drafts written and checked a run, tokens per request-step, the draft's passes, and the speed-up over
plain decoding (CPU time; `wall_speedup` beside it).

Projected onto a GPU (machine-independent): Llama-3.2-1B drafting for Llama-3.1-8B on one H100 roofline
(engine/roofline.py), each speculative step priced as the engine runs it (a draft pass over what the last
step accepted, k - 1 single-token draft passes, the target's step checking k drafts a request) against a
plain decode step, at acceptance rates from 0.5 to 0.8 (an input: the pair's agreement depends on the
text, and is not measured here).

    .venv/bin/python -m bench.draft_model            # full run (about 9 minutes on 2 cores)
    .venv/bin/python -m bench.draft_model --quick    # smaller, for a smoke test
    .venv/bin/python -m bench.draft_model --sampling sampled --out /tmp/d.json   # sampled rows only

Writes bench/results/draft_model.json."""

from __future__ import annotations

import argparse
import random
import re
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bench.common import RESULTS, command, machine_info, write_report
from engine.batch import StepShape
from engine.config import ACCEPTANCE_METHODS, EngineConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.profile import ProfileSweep, run_profile
from engine.roofline import RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.tiny_model import make_tiny_model, make_truncated_model
from engine.torch_runner import TorchModelRunner

OUT = RESULTS / "draft_model.json"
LAYER = re.compile(r"model\.layers\.(\d+)\.(self_attn\.o_proj|mlp\.down_proj)\.weight")
PARAMS = {"greedy": SamplingParams(temperature=0, max_tokens=1, ignore_eos=True),
          "sampled": SamplingParams(temperature=0.8, seed=1, max_tokens=1, ignore_eos=True)}


def scale_later_layers(model_dir: Path, scale: float) -> None:
    """Scale the residual writes of every layer after the first by `scale`, in place."""
    path = model_dir / "model.safetensors"
    weights = load_file(str(path))
    for name, tensor in weights.items():
        match = LAYER.fullmatch(name)
        if match is not None and int(match[1]) > 0:
            weights[name] = (tensor * scale).contiguous()
    save_file(weights, str(path), metadata={"format": "pt"})


def run_once(target: Path, spec: SpeculativeConfig | None, params: SamplingParams, batch: int,
             args: argparse.Namespace, round_: int) -> dict:
    """`batch` requests of `args.prompt_len` random tokens, `args.output_len` tokens each, to the end; a
    seeded request's seed moves on each round, so the rounds are different samples."""
    blocks = batch * (args.prompt_len + args.output_len + 2 * args.k) // 16 + 16
    engine = LLMEngine(EngineConfig(block_size=16, num_blocks=blocks, max_model_len=2048, speculative=spec),
                       TorchModelRunner(target, blocks, 16))
    rng = random.Random(args.seed)
    for i in range(batch):
        seed = None if params.seed is None else params.seed + i + 1000 * round_
        engine.add_request(f"r{i}", [rng.randrange(args.vocab) for _ in range(args.prompt_len)],
                           replace(params, max_tokens=args.output_len, seed=seed))
    wall, cpu = time.perf_counter(), time.thread_time()
    produced = 0
    while engine.has_unfinished():
        produced += sum(len(out.new_token_ids) for out in engine.step())
    spec_counts = engine.stats().spec
    return {"seconds": time.thread_time() - cpu, "wall_seconds": time.perf_counter() - wall, "tokens": produced,
            "steps": engine.num_steps, "draft_tokens": spec_counts.draft_tokens,
            "accepted_tokens": spec_counts.accepted_tokens, "draft_passes": spec_counts.draft_passes}


def compare(target: Path, arms: dict[str, SpeculativeConfig], args: argparse.Namespace) -> list[dict]:
    """Plain decoding and each speculative arm, alternating round by round (drift in the machine hits all);
    the coupled arms for sampled requests only (a greedy request's check is the same under both)."""
    rows = []
    for kind in args.sampling:
        params = PARAMS[kind]
        names = [name for name in arms if kind == "sampled" or not name.endswith("_coupled")]
        for batch in args.batches:
            runs: dict[str, list[dict]] = {"plain": [], **{name: [] for name in names}}
            for round_ in range(args.rounds):
                runs["plain"].append(run_once(target, None, params, batch, args, round_))
                for name in names:
                    runs[name].append(run_once(target, arms[name], params, batch, args, round_))
            plain_tps = statistics.median(r["tokens"] / r["seconds"] for r in runs["plain"])
            plain_wall = statistics.median(r["tokens"] / r["wall_seconds"] for r in runs["plain"])
            row: dict = {"sampling": kind, "batch": batch, "plain_tokens_per_s": round(plain_tps, 1),
                         "plain_wall_tokens_per_s": round(plain_wall, 1)}
            for name in names:
                tps = statistics.median(r["tokens"] / r["seconds"] for r in runs[name])
                wall = statistics.median(r["tokens"] / r["wall_seconds"] for r in runs[name])
                total = {field: sum(r[field] for r in runs[name]) for field in
                         ("draft_tokens", "accepted_tokens", "tokens", "steps", "draft_passes")}
                row[name] = {"tokens_per_s": round(tps, 1), "speedup": round(tps / plain_tps, 3),
                             "wall_speedup": round(wall / plain_wall, 3),
                             "draft_tokens": round(total["draft_tokens"] / args.rounds),
                             "acceptance": round(total["accepted_tokens"] / max(total["draft_tokens"], 1), 3),
                             "tokens_per_request_step": round(total["tokens"] / total["steps"] / batch, 2),
                             "draft_passes": round(total["draft_passes"] / args.rounds)}
            rows.append(row)
            print(f"  {kind} batch {batch}: plain {plain_tps:.0f} tok/s; " + "; ".join(
                f"{name} {row[name]['speedup']}x (acceptance {row[name]['acceptance']}, "
                f"{row[name]['draft_tokens']} drafts)" for name in names), flush=True)
    return rows


def profiles(target: Path, draft: Path, root: Path, quick: bool) -> tuple[Path, Path]:
    """`pitstop engine profile`'s fits of the target's and the draft's shapes on this machine, over the
    sizes this benchmark runs (weights do not change a step's time, so one pair serves every target)."""
    sweep = ProfileSweep(prefill_lens=(16, 64, 256), prefill_batch=2, decode_batch_sizes=(1, 2, 4, 8, 16),
                         context_lens=(64, 256), mixed_prefill_lens=(64,), drafted_batch_sizes=(1, 4, 8),
                         repeats=1 if quick else 2)
    paths = root / "target_profile.json", root / "draft_profile.json"
    for model, path in zip((target, draft), paths, strict=True):
        run_profile(model, path, sweep=sweep)
    return paths


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens a checked step yields a request when each draft holds with `acceptance` (independently):
    1 + a + ... + a^k (Leviathan et al., 2023)."""
    return float(k + 1) if acceptance >= 1.0 else (1 - acceptance ** (k + 1)) / (1 - acceptance)


def roofline_rows(acceptances: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8), ks: tuple[int, ...] = (2, 4, 6),
                  batches: tuple[int, ...] = (1, 8, 32), context: int = 2048) -> list[dict]:
    """Llama-3.2-1B drafting for Llama-3.1-8B on one H100 roofline, priced as the engine runs it: a draft
    pass over the tokens the last step accepted, k - 1 single-token passes, then the target's step checking
    k drafts a request; against a plain decode step. The acceptance is an input, not a measurement."""
    target, draft = RooflineStepTime.builtin("llama-3.1-8b"), RooflineStepTime.builtin("llama-3.2-1b")
    rows = []
    for batch in batches:
        plain = target.predict(StepShape(0, 0, batch, batch * context, 0))
        for k in ks:
            for a in acceptances:
                tokens = expected_tokens(a, k)
                caught_up = round(tokens)  # the draft's first pass computes what the last step accepted
                first = draft.predict(StepShape(batch * caught_up, batch, 0, batch * context,
                                                batch * caught_up * context))
                rest = (k - 1) * draft.predict(StepShape(0, 0, batch, batch * (context + k), 0))
                check = target.predict(StepShape(0, 0, batch, batch * (context + k + 1), batch * k * context, batch * k))
                step = first + rest + check
                rows.append({"batch": batch, "context": context, "num_speculative_tokens": k, "acceptance": a,
                             "tokens_per_step": round(tokens, 3), "plain_step_ms": round(plain * 1e3, 3),
                             "draft_ms": round((first + rest) * 1e3, 3), "check_ms": round(check * 1e3, 3),
                             "speedup": round(tokens / step * plain, 3)})
    return rows


def arms(draft: Path, target_profile: Path | None, draft_profile: Path | None, k: int,
         acceptance: list[str]) -> dict[str, SpeculativeConfig]:
    """Every draft checked (`fixed`), and goodput draft lengths priced by the two profiles; each under
    rejection sampling (the default: no suffix) and the coupled rule (`_coupled`), as `acceptance` asks."""
    out = {}
    for method in acceptance:
        suffix = "" if method == "rejection_sampler" else f"_{method}"
        out[f"fixed{suffix}"] = SpeculativeConfig(model=str(draft), num_speculative_tokens=k, acceptance_method=method)
        out[f"goodput{suffix}"] = SpeculativeConfig(
            model=str(draft), num_speculative_tokens=k, draft_policy="goodput", step_time_profile=str(target_profile),
            draft_step_time_profile=str(draft_profile), acceptance_method=method)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.05, 0.2, 1.0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampling", nargs="+", choices=list(PARAMS), default=list(PARAMS),
                        help="which requests: greedy, sampled (both by default)")
    parser.add_argument("--acceptance", nargs="+", choices=list(ACCEPTANCE_METHODS), default=list(ACCEPTANCE_METHODS),
                        help="the acceptance methods sampled requests check drafts with (both by default)")
    parser.add_argument("--quick", action="store_true", help="2 layers, hidden 128, one scale, 1 round")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.hidden, args.vocab, args.scales, args.rounds = 2, 128, 1024, [0.1], 1
        args.batches, args.output_len = [1, 4], 24
    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory(prefix="pitstop-draft-")
    root = Path(tmp.name)
    shape = dict(layers=args.layers, hidden=args.hidden, heads=8, kv_heads=4, vocab_size=args.vocab,
                 max_position_embeddings=2048)
    targets = []
    unrelated = make_tiny_model(root / "unrelated", **{**shape, "layers": 1}, seed=99)
    target_profile = draft_profile = None
    for scale in args.scales:
        target = make_tiny_model(root / f"target_{scale}", **shape)
        scale_later_layers(target, scale)
        draft = make_truncated_model(target, root / f"draft_{scale}", 1)
        if target_profile is None:
            target_profile, draft_profile = profiles(target, draft, root, args.quick)
        print(f"target with later layers scaled by {scale}, its first layer as the draft:", flush=True)
        targets.append({"later_layers_scale": scale, "draft": "the target's first layer",
                        "rows": compare(target, arms(draft, target_profile, draft_profile, args.k, args.acceptance),
                                        args)})
    print("the first target, an unrelated random draft of one layer:", flush=True)
    targets.append({"later_layers_scale": args.scales[0], "draft": "an unrelated random model of one layer",
                    "rows": compare(root / f"target_{args.scales[0]}",
                                    arms(unrelated, target_profile, draft_profile, args.k, args.acceptance), args)})
    roofline = roofline_rows()
    best = {a: max((r for r in roofline if r["acceptance"] == a and r["batch"] == 1), key=lambda r: r["speedup"])
            for a in (0.5, 0.8)}
    print("H100 roofline, Llama-3.2-1B for Llama-3.1-8B, one request: " + ", ".join(
        f"acceptance {a}: {r['speedup']}x at k={r['num_speculative_tokens']}" for a, r in best.items()), flush=True)
    report = {"command": command("bench.draft_model", argv), "machine": machine_info(), "torch_threads": 1,
              "model": f"random weights: {args.layers} layers, hidden {args.hidden}, 8 heads, 4 KV heads, "
                       f"vocab {args.vocab}, float32; the draft: 1 layer",
              "num_speculative_tokens": args.k, "prompt_tokens": args.prompt_len, "output_tokens": args.output_len,
              "rounds": args.rounds, "clock": "tokens_per_s and speedup on the thread's CPU time; wall_speedup "
                                             "and plain_wall_tokens_per_s on the wall clock",
              "acceptance_methods": {"fixed, goodput": "rejection_sampler (sampled requests)",
                                     "fixed_coupled, goodput_coupled": "coupled"}, "targets": targets,
              "roofline": {"what": "Llama-3.2-1B drafting for Llama-3.1-8B on one H100-SXM roofline (bf16), "
                                   "at a given acceptance: a projection, not a measurement", "rows": roofline}}
    write_report(args.out, report)
    tmp.cleanup()
    return report


if __name__ == "__main__":
    main()
