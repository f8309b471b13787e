"""Goodput draft lengths (engine/draft_length.py) on a real runner: the torch runner on this CPU, priced by
a profile of itself.

bench/spec_decode.py's end-to-end set-up (a random 4-layer, hidden-256 model with the WordPiece
vocabulary, one torch thread, each request's real output forced, contexts cut to their last 2,048 tokens),
with three engines side by side, wave by wave: plain decoding, every draft checked (the default), and
goodput draft lengths priced by `pitstop engine profile`'s profile of the same model on this machine
(made first, drafted decode steps included, so the profile knows what a checked draft costs here).
Workloads: the SWE-agent turns and AlpacaEval answers, one request at a time and 8 at once.

    .venv/bin/python -m bench.spec_decode_goodput [--turns 125] [--chat-answers 40]

Writes bench/results/spec_decode_goodput.json."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from bench.common import RESULTS, command, machine_info, write_report
from bench.spec_decode import DATA, DEFAULT, TRACE, alpaca_turns, end_to_end, swe_agent_turns
from engine.config import SpeculativeConfig
from engine.profile import run_profile
from engine.tiny_model import make_tiny_model
from routers.tokens import counting_tokenizer

OUT = RESULTS / "spec_decode_goodput.json"
CONTEXT = 2048


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=125, help="SWE-agent turns (at most 125)")
    parser.add_argument("--chat-answers", type=int, default=40, help="AlpacaEval answers")
    args = parser.parse_args(argv)
    if not TRACE.exists():
        print(f"skipped: the real data is not at {DATA} (see its README)", file=sys.stderr)
        return
    torch.set_num_threads(1)
    report: dict = {"command": command("bench.spec_decode_goodput", argv), "machine": machine_info(),
                    "context": CONTEXT}
    with tempfile.TemporaryDirectory() as tmp:
        vocab = counting_tokenizer().get_vocab_size()
        model_dir = make_tiny_model(Path(tmp) / "model", layers=4, hidden=256, heads=8, kv_heads=4,
                                    vocab_size=vocab, max_position_embeddings=8192)
        profile_path = Path(tmp) / "profile.json"
        profile = run_profile(model_dir, profile_path)
        report["profile"] = {"params": profile.model.to_json()["params"], "fit": vars(profile.quality)}
        print(json.dumps(report["profile"]), file=sys.stderr)
        modes = {"speculative": DEFAULT,
                 "goodput": SpeculativeConfig(draft_policy="goodput", step_time_profile=str(profile_path))}
        workloads = {"swe_agent": swe_agent_turns()[: args.turns], "alpaca_eval": alpaca_turns(300)[: args.chat_answers]}
        report["end_to_end"] = {}
        for name, turns in workloads.items():
            rows = report["end_to_end"][name] = []
            for concurrency in (1, 8):
                rows.append(end_to_end(model_dir, turns, CONTEXT, concurrency, modes))
                row = rows[-1]
                print(f"{name} x{concurrency}: decode {row['decode_speedup']:.2f}x every draft, "
                      f"{row['goodput_decode_speedup']:.2f}x goodput", file=sys.stderr)
    write_report(OUT, report)


if __name__ == "__main__":
    main()
