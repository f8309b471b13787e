"""What n-gram speculative decoding (engine/speculation.py) buys on real outputs, and what it costs.

1. **Drafts on real text.** Real outputs from ../shared/data, each after its real context: the SWE-agent
   trajectories' assistant turns (thoughts, commands, file edits, after the whole conversation and its
   tool results), AlpacaEval chat answers (after the instruction), GPT-4's and Mixtral's GSM8K solutions
   (after the question). Decoding is replayed as if the model wrote exactly that output (what greedy
   decoding of that model would give): each step drafts with the engine's own `lookup_draft`, keeps the
   drafts that match the real next tokens, plus one. Reported per workload and setting: output tokens per
   decode step (plain decoding: 1), the acceptance rate, the share of steps that drafted.
2. **The engine end to end.** The SWE-agent turns, and AlpacaEval answers (where drafts seldom match),
   through the real engine (scheduler, block manager, torch runner) on a random CPU model, with the real
   output forced: the runner computes every row as usual and its samples are replaced by the real tokens
   (a model that writes them, at this model's cost). Wall time of plain decoding against speculation, one
   request at a time and 8 at once, run side by side, each turn's context cut to its last `--context`
   tokens.
3. **The cost of checking drafts.** One decode step of B sequences with d drafts each, against d = 0, on
   the same model: what a rejected draft costs here; and the vocabulary head's product alone for 1-8
   rows (`head_rows`).

Tokens are all-MiniLM-L6-v2's WordPiece (routers/tokens.py), the project's counting tokenizer.

    .venv/bin/python -m bench.spec_decode [--context 2048] [--per-source 300] [--turns 125] [--chat-answers 40]

Writes bench/results/spec_decode.json."""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.agent_workload import TRACE, message_text, tool_calls_of
from bench.common import RESULTS, command, machine_info, write_report
from engine.batch import ScheduledBatch
from engine.config import EngineConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.speculation import lookup_draft
from engine.tiny_model import make_tiny_model
from engine.torch_runner import TorchModelRunner
from routers.tokens import counting_tokenizer

DATA = TRACE.parents[2]
OUT = RESULTS / "spec_decode.json"
SETTINGS = [(k, n_min, n_max) for k in (2, 4, 8) for n_min, n_max in ((1, 3), (2, 4), (3, 5))]
DEFAULT = SpeculativeConfig()
Turn = tuple[list[int], list[int]]  # (context token ids, output token ids)


def _ids(text: str) -> list[int]:
    return counting_tokenizer().encode(text, add_special_tokens=False).ids


def _rendered(message: dict) -> str:
    calls = "".join(f"<call>{c['function']['name']}({c['function']['arguments']})" for c in tool_calls_of(message))
    return f"<{message['role']}>{message_text(message.get('content'))}{calls}"


@dataclass(frozen=True)
class AgentTurn:
    context: list[int]  # the conversation before this reply
    output: list[int]  # the reply: thoughts and tool calls
    tool_s: float  # how long the tools it called ran (`execution_time_seconds`); 0 for a last turn


def swe_agent_programs() -> list[list[AgentTurn]]:
    """Each trajectory's assistant turns, each after everything before it."""
    programs = []
    for trajectory in json.loads(TRACE.read_text()):
        raw = trajectory["messages"]
        context: list[int] = []
        turns = []
        for message in json.loads(raw) if isinstance(raw, str) else raw:
            ids = _ids(_rendered(message))
            if message["role"] == "assistant" and len(ids) > 1:
                tool_s = sum(float(c.get("execution_time_seconds") or 0.0) for c in tool_calls_of(message))
                turns.append(AgentTurn(list(context), ids, tool_s))
            context += ids
        programs.append(turns)
    return programs


def swe_agent_turns() -> list[Turn]:
    """Every assistant turn of the 5 trajectories, after everything before it."""
    return [(turn.context, turn.output) for program in swe_agent_programs() for turn in program]


def alpaca_turns(limit: int) -> list[Turn]:
    rows = [json.loads(line) for line in (DATA / "alpaca_eval_outputs" / "outputs.jsonl").open()]
    rows = rows[:: max(1, len(rows) // limit)][:limit]
    return [(_ids(r["instruction"]), _ids(r["output"])) for r in rows if r["output"].strip()]


def gsm8k_turns(limit: int) -> list[Turn]:
    with (DATA / "routellm" / "gsm8k" / "gsm8k_responses.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows = rows[:: max(1, len(rows) // (limit // 2))][: limit // 2]
    return [(_ids(r["prompt"]), _ids(r[f"{model}_response"])) for r in rows
            for model in ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1") if r[f"{model}_response"].strip()]


def replay(turn: Turn, k: int, n_min: int, n_max: int) -> dict[str, int]:
    """Decode steps to write `turn`'s output with drafts of up to k tokens, as the engine drafts: none
    for the first token (it comes from the prefill), at most what the output has left after the next."""
    context, output = turn
    tokens = np.array(context + output, dtype=np.int64)
    at, end = len(context) + 1, len(context) + len(output)
    steps, drafted, draft_tokens, accepted = 1, 0, 0, 0
    while at < end:
        drafts = lookup_draft(tokens[:at], min(k, end - at - 1), n_min, n_max)
        kept = 0
        for draft in drafts:
            if draft != tokens[at + kept]:
                break
            kept += 1
        steps += 1
        drafted += bool(drafts)
        draft_tokens += len(drafts)
        accepted += kept
        at += kept + 1
    return {"output_tokens": len(output), "steps": steps, "drafted_steps": drafted, "draft_tokens": draft_tokens,
            "accepted_tokens": accepted}


def drafts_on_real_text(workloads: dict[str, list[Turn]]) -> dict:
    report = {}
    for name, turns in workloads.items():
        rows = []
        for k, n_min, n_max in SETTINGS:
            started = time.perf_counter()
            totals = {key: sum(r[key] for r in (replay(t, k, n_min, n_max) for t in turns))
                      for key in ("output_tokens", "steps", "drafted_steps", "draft_tokens", "accepted_tokens")}
            lookups_s = time.perf_counter() - started
            rows.append({"num_speculative_tokens": k, "prompt_lookup_min": n_min, "prompt_lookup_max": n_max,
                         "tokens_per_step": totals["output_tokens"] / totals["steps"],
                         "acceptance_rate": totals["accepted_tokens"] / max(1, totals["draft_tokens"]),
                         "drafted_share": totals["drafted_steps"] / totals["steps"],
                         "lookup_us_per_step": 1e6 * lookups_s / totals["steps"], **totals})
        report[name] = {"turns": len(turns), "mean_context_tokens": statistics.fmean(len(c) for c, _ in turns),
                        "mean_output_tokens": statistics.fmean(len(o) for _, o in turns), "settings": rows}
    return report


class ForcedRunner(TorchModelRunner):
    """The torch runner whose samples are replaced by each request's real output (`scripts`): every row's
    logits are computed and sampled as usual, so a step costs what it costs; row j of a sequence gets the
    output token j places on, the token a model that writes this output would sample there."""

    scripts: dict[str, list[int]]

    def execute(self, batch: ScheduledBatch) -> list[int]:
        super().execute(batch)
        out = []
        for i in batch.sampling_indices:
            seq, script = batch.seqs[i], self.scripts[batch.seqs[i].request_id]
            out += [script[min(seq.num_output_tokens + j, len(script) - 1)]
                    for j in range(len(batch.draft_token_ids[i]) + 1)]
        return out


def end_to_end(model_dir: Path, turns: list[Turn], context: int, concurrency: int,
               modes: dict[str, SpeculativeConfig] | None = None) -> dict:
    """Plain and speculative engines (`modes`: the speculative ones by name; by default the default
    config as `speculative`) over the same turns, alternating wave by wave (so drift in the machine's
    speed hits all alike); each wave's wall time from its first step to its last."""
    engines = {}
    for mode, spec in {"plain": None, **(modes or {"speculative": DEFAULT})}.items():
        runner = ForcedRunner(model_dir, num_blocks=2048, block_size=16)
        runner.scripts = {}
        config = EngineConfig(num_blocks=2048, max_model_len=8192, max_num_seqs=concurrency,
                              max_num_batched_tokens=4096, long_prefill_token_threshold=4096, speculative=spec)
        engines[mode] = LLMEngine(config, runner)
    seconds = {mode: 0.0 for mode in engines}
    decode_seconds = {mode: 0.0 for mode in engines}
    for start in range(0, len(turns), concurrency):
        wave = turns[start: start + concurrency]
        for mode, engine in engines.items():
            runner = engine.runner
            assert isinstance(runner, ForcedRunner)
            for i, (ctx, output) in enumerate(wave):
                rid = f"{start + i}"
                runner.scripts[rid] = output
                engine.add_request(rid, ctx[-context:] or [0], SamplingParams(temperature=0, max_tokens=len(output),
                                                                              ignore_eos=True))
            began = time.perf_counter()
            started: set[str] = set()
            prefilled = None  # decoding is timed from the step that gave the last first token
            while engine.has_unfinished():
                for out in engine.step():
                    started.add(out.request_id)
                if prefilled is None and len(started) == len(wave):
                    prefilled = time.perf_counter()
            ended = time.perf_counter()
            assert prefilled is not None
            seconds[mode] += ended - began
            decode_seconds[mode] += ended - prefilled
            for i in range(len(wave)):
                runner.scripts.pop(f"{start + i}")
    steps = {mode: engine.num_steps for mode, engine in engines.items()}
    output_tokens = sum(len(o) for _, o in turns)
    report: dict = {"concurrency": concurrency, "turns": len(turns), "output_tokens": output_tokens,
                    "wall_s": seconds, "decode_wall_s": decode_seconds, "steps": steps,
                    "output_tokens_per_s": {m: output_tokens / s for m, s in seconds.items()}}
    for mode, engine in engines.items():
        if mode == "plain":
            continue
        spec = engine.stats().spec
        prefix = "" if mode == "speculative" else f"{mode}_"  # the default mode's keys as before
        report |= {f"{prefix}decode_speedup": decode_seconds["plain"] / decode_seconds[mode],
                   f"{prefix}acceptance_rate": spec.accepted_tokens / max(1, spec.draft_tokens),
                   f"{prefix}drafted_steps": spec.drafted_steps, f"{prefix}draft_tokens": spec.draft_tokens,
                   f"{prefix}accepted_tokens": spec.accepted_tokens}
    return report


def verify_cost(model_dir: Path, context: int, repeats: int) -> list[dict]:
    """Median time of one decode step of B sequences at `context` tokens each, with d drafts each; and
    the plain step with the K/V gathered into fresh tensors every layer, as before the runner kept a
    workspace (engine/model/attention.py, GatherWorkspace), the two alternated in two rounds. Run in a
    process of its own (see main): what fresh tensors cost depends on what the allocator holds, so the
    figure is a fresh engine process's, not one's that replayed the drafts above."""
    torch.set_num_threads(1)
    runner = TorchModelRunner(model_dir, num_blocks=2048, block_size=16)
    workspace = runner.workspace
    rng = random.Random(0)
    rows = []

    def timed(batch: ScheduledBatch) -> float:
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            runner.execute(batch)
            times.append(time.perf_counter() - began)
        return statistics.median(times)

    for batch_size in (1, 8):
        seqs, blocks = [], -(-(context + 8) // 16)  # room for the context and 8 drafts, 16-token blocks
        for i in range(batch_size):
            seq = Sequence(f"s{i}", [rng.randrange(1000, 20000) for _ in range(context)], SamplingParams(temperature=0),
                           arrival_time=0.0)
            seq.block_table = list(range(i * blocks, (i + 1) * blocks))
            seq.num_computed_tokens = context - 1
            seqs.append(seq)
        plain = ScheduledBatch()
        for seq in seqs:
            plain.add(seq, 1)
        for round_ in (1, 2):
            for gather in ("fresh", "workspace"):
                runner.workspace = None if gather == "fresh" else workspace
                rows.append({"batch": batch_size, "drafts_per_sequence": 0, "gather": gather, "round": round_,
                             "step_ms": 1e3 * timed(plain)})
        runner.workspace = workspace
        baseline = rows[-1]["step_ms"]
        for drafts in (2, 4, 8):
            batch = ScheduledBatch()
            for seq in seqs:
                batch.add(seq, 1 + drafts, [rng.randrange(1000, 20000) for _ in range(drafts)])
            step_ms = 1e3 * timed(batch)
            rows.append({"batch": batch_size, "drafts_per_sequence": drafts, "gather": "workspace",
                         "step_ms": step_ms, "over_plain_decode": step_ms / baseline})
    return rows


def head_rows(model_dir: Path, repeats: int) -> list[dict]:
    """The vocabulary head's product alone for 1-8 rows (torch.nn.functional.linear, no padding): why the
    runner pads 2 or 3 rows to 4 on a CPU (engine/model/llama.py)."""
    config = json.loads((model_dir / "config.json").read_text())
    weight = torch.randn(config["vocab_size"], config["hidden_size"])
    rows = []
    for m in range(1, 9):
        x = torch.randn(m, config["hidden_size"])
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            torch.nn.functional.linear(x, weight)
            times.append(time.perf_counter() - began)
        rows.append({"rows": m, "ms": 1e3 * statistics.median(times)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=2048, help="end to end: the last this many context tokens")
    parser.add_argument("--per-source", type=int, default=300, help="AlpacaEval answers and GSM8K solutions")
    parser.add_argument("--turns", type=int, default=125, help="end to end: SWE-agent turns (at most 125)")
    parser.add_argument("--chat-answers", type=int, default=40, help="end to end: AlpacaEval answers")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    if not TRACE.exists():
        print(f"skipped: the real data is not at {DATA} (see its README)", file=sys.stderr)
        return
    torch.set_num_threads(1)
    swe = swe_agent_turns()
    workloads = {"swe_agent": swe, "alpaca_eval": alpaca_turns(args.per_source), "gsm8k": gsm8k_turns(args.per_source)}
    report: dict = {"command": command("bench.spec_decode", argv), "machine": machine_info(),
                    "tokens": "all-MiniLM-L6-v2 WordPiece (routers/tokens.py)",
                    "default": {"num_speculative_tokens": DEFAULT.num_speculative_tokens,
                                "prompt_lookup_min": DEFAULT.prompt_lookup_min,
                                "prompt_lookup_max": DEFAULT.prompt_lookup_max}}
    report["drafts_on_real_text"] = drafts_on_real_text(workloads)
    print(json.dumps({name: [(r["num_speculative_tokens"], r["prompt_lookup_min"], r["prompt_lookup_max"],
                              round(r["tokens_per_step"], 3)) for r in w["settings"]]
                      for name, w in report["drafts_on_real_text"].items()}))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model(Path(tmp) / "model", layers=4, hidden=256, heads=8, kv_heads=4,
                                    vocab_size=counting_tokenizer().get_vocab_size(), max_position_embeddings=8192)
        report["model"] = {"layers": 4, "hidden": 256, "heads": 8, "kv_heads": 4,
                           "vocab_size": counting_tokenizer().get_vocab_size(), "dtype": "float32", "threads": 1}
        report["head_rows"] = head_rows(model_dir, args.repeats)
        print(json.dumps(report["head_rows"]))
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            report["verify_cost"] = pool.apply(verify_cost, (model_dir, args.context, args.repeats))
        print(json.dumps(report["verify_cost"]))
        report["end_to_end"] = {
            "swe_agent": [end_to_end(model_dir, swe[: args.turns], args.context, c) for c in (1, 8)],
            "alpaca_eval": [end_to_end(model_dir, workloads["alpaca_eval"][: args.chat_answers], args.context, c)
                            for c in (1, 8)]}
        print(json.dumps(report["end_to_end"], indent=1))
    write_report(OUT, report)


if __name__ == "__main__":
    main()
