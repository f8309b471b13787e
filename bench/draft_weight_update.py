"""What updating the draft model with the target gives speculative decoding across RL rounds
(engine/weight_updates.py `draft_model_path`): a target that moves a step each round (its weights plus
noise, `--step` of their spread), each round's draft its first layer (make_truncated_model). One engine's
draft keeps the first round's weights (`model_path` alone), the other's is updated with the target every
round; both answer the same greedy prompts each round (their answers are the target's, equal), and their
acceptance rates, from the update's answer (`acceptance_rate_before`) and the engine's counters, are compared
round by round.

    .venv/bin/python -m bench.draft_weight_update [--rounds 5] [--step 0.15] [--layers 2 --hidden 64]

Writes bench/results/draft_weight_update.json."""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bench.common import RESULTS, command, machine_info, write_report
from engine.config import EngineConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.tiny_model import make_tiny_model, make_truncated_model
from engine.torch_runner import TorchModelRunner
from engine.weight_updates import update_weights

OUT = RESULTS / "draft_weight_update.json"
GREEDY = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)


def moved(base: Path, out: Path, step: float, seed: int) -> Path:
    """`base` with every tensor moved by Gaussian noise `step` times its standard deviation."""
    import shutil

    shutil.copytree(base, out)
    gen = torch.Generator().manual_seed(seed)
    tensors = {name: t + step * t.float().std() * torch.randn(t.shape, generator=gen).to(t.dtype) if t.numel() > 1
               else t for name, t in load_file(out / "model.safetensors").items()}
    save_file(tensors, out / "model.safetensors")
    return out


def engine_on(target: Path, draft: Path) -> LLMEngine:
    spec = SpeculativeConfig(model=str(draft), num_speculative_tokens=4, acceptance_method="coupled")
    config = EngineConfig(num_blocks=256, max_model_len=512, max_num_batched_tokens=256, speculative=spec)
    return LLMEngine(config, TorchModelRunner(target, 256, 16, device="cpu"))


def serve_round(engine: LLMEngine, prompts: list[list[int]]) -> list[list[int]]:
    seqs = [engine.add_request(f"r{len(engine.sequences)}-{i}", p, GREEDY) for i, p in enumerate(prompts)]
    while engine.has_unfinished():
        engine.step()
    return [s.output_token_ids for s in seqs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--step", type=float, default=0.15)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rng = random.Random(0)
    prompts = [[rng.randrange(1000) for _ in range(rng.randrange(20, 60))] for _ in range(args.prompts)]
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pitstop-draft-") as tmp:
        work = Path(tmp)
        targets = [make_tiny_model(work / "t0", layers=args.layers, hidden=args.hidden, seed=0)]
        for r in range(1, args.rounds):
            targets.append(moved(targets[-1], work / f"t{r}", args.step, seed=r))
        drafts = [make_truncated_model(t, work / f"d{r}", 1) for r, t in enumerate(targets)]
        kept, updated = engine_on(targets[0], drafts[0]), engine_on(targets[0], drafts[0])
        for r in range(args.rounds):
            if r:
                update_weights(kept, str(targets[r]))
                update_weights(updated, str(targets[r]), str(drafts[r]))
            assert serve_round(kept, prompts) == serve_round(updated, prompts), "both answer as the target"
            # The next update's answer reports this round; the last round is read as the update would.
            rates = {name: engine.scheduler.drafter.new_round()  # type: ignore[union-attr]
                     for name, engine in (("draft_kept", kept), ("draft_updated", updated))}
            rounds.append({"round": r, **{name: round(rate or 0.0, 4) for name, rate in rates.items()}})
            print(rounds[-1], flush=True)
    results = {"layers": args.layers, "hidden": args.hidden, "step": args.step, "prompts": args.prompts,
               "max_tokens": GREEDY.max_tokens, "num_speculative_tokens": 4, "acceptance_rate_by_round": rounds}
    report = {"command": command("bench.draft_weight_update", argv), "machine": machine_info(),
              "what": "the draft model's acceptance rate each RL round, its weights kept from round 0 against "
                      "updated with the target by draft_model_path (greedy answers equal)", "results": results}
    write_report(args.out, report)


if __name__ == "__main__":
    main()
