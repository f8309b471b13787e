"""What holding gpt-oss's Harmony messages costs a step: the per-step token mask of a JSON schema plain (the
answer is the JSON) against the same schema wrapped for Harmony (OutputConstraint.in_harmony_final: free analysis
text up to `<|end|>`, then the final header, the schema and `<|return|>`), and as a tool's parameters in a Harmony
call message (engine/harmony_tools.py): a forced call (tool_choice "required" among four tools) and a strict tool's
call under "auto" (free messages, a call held where made), on the CPU.

    .venv/bin/python -m bench.harmony_grammar [--reps 20] [--batch 16]

A byte-level BPE of about 32,000 tokens (engine/tiny_model.py's, with Harmony's special tokens) and llguidance's
matchers as the engine makes them (engine/structured_output.py). `--batch` matchers stand at the same place
and one `mask_disallowed` call fills their rows of a [batch, 32000] logits tensor (what a decode step does),
then each consumes the next token of a fixed answer: a thought and the JSON for the Harmony grammars (the final
header, or the call's `<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>`, between), the
JSON alone for the plain one. Median wall microseconds per step (the mask, not the consume; llguidance computes
rows on its own threads, torch on one), over the JSON's steps for all and the thought's for Harmony.

Writes bench/results/harmony_grammar.json."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` and `engine` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizers import AddedToken  # noqa: E402

from bench.common import RESULTS, command, machine_info, write_report  # noqa: E402
from engine.forced_tools import forced_tools  # noqa: E402
from engine.harmony import SPECIALS  # noqa: E402
from engine.harmony_tools import forced_call, held_calls  # noqa: E402
from engine.structured_output import GrammarCompiler, OutputConstraint, mask_disallowed  # noqa: E402
from engine.tiny_model import train_tokenizer  # noqa: E402

OUT = RESULTS / "harmony_grammar.json"
VOCAB = 32_000
SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string"}, "temperature": {"type": "number"}, "rain": {"type": "boolean"},
    "wind": {"enum": ["calm", "breeze", "storm"]}, "hours": {"type": "array", "items": {"type": "integer"}}},
    "required": ["city", "temperature", "rain", "wind", "hours"], "additionalProperties": False}
JSON = '{"city":"Oslo, Norway","temperature":3.5,"rain":true,"wind":"breeze","hours":[6,9,12,15,18,21]}'
# The tool the calls name, beside three others ("required" may call any of them).
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA, "strict": True}}] + [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {
        "query": {"type": "string"}}, "required": ["query"], "additionalProperties": False}}}
    for name in ("search_web", "get_time", "send_mail")]
THOUGHT = ("The user asks about the weather in Oslo tomorrow. I should give the temperature, whether it rains, "
           "the wind and the hours of the forecast as the schema asks, in JSON.")


def _steps(compiler: GrammarCompiler, constraint: OutputConstraint, ids: list[int], batch: int) -> list[float]:
    """Wall microseconds per step to mask `batch` rows, walking the answer `ids`."""
    matchers = [compiler.matcher(constraint) for _ in range(batch)]
    logits = torch.zeros(batch, compiler.vocab_size)
    times = []
    for token in ids:
        start = time.perf_counter_ns()  # wall time: llguidance fills the rows on its own threads
        mask_disallowed(logits, matchers)  # type: ignore[arg-type]
        times.append((time.perf_counter_ns() - start) / 1000)
        assert not torch.isinf(logits[0, token]), "the answer left the grammar"
        logits.zero_()
        for matcher in matchers:
            assert matcher.consume(token)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tokenizer = train_tokenizer(VOCAB - len(SPECIALS))
    tokenizer.add_special_tokens([AddedToken(name, special=True) for name in SPECIALS])
    ends = tuple(tokenizer.token_to_id(name) for name in ("<|return|>", "<|call|>"))
    compiler = GrammarCompiler(tokenizer.to_str(), tokenizer.get_vocab_size(), ends)
    plain = OutputConstraint.json_schema(SCHEMA)
    harmony = plain.in_harmony_final()
    forced = forced_call(forced_tools("required", TOOLS, None), TOOLS)  # type: ignore[arg-type]
    strict = held_calls(TOOLS, None)
    assert strict is not None

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text).ids

    thought = encode("<|channel|>analysis<|message|>" + THOUGHT)
    header = encode("<|end|><|start|>assistant<|channel|>final<|message|>")
    answer = encode(JSON) + [ends[0]]
    call_header = encode("<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
                         "<|message|>")
    call = encode(JSON) + [ends[1]]
    report: dict = {"command": command("bench.harmony_grammar", argv), "machine": machine_info(),
                    "vocab": tokenizer.get_vocab_size(), "batch": args.batch, "reps": args.reps,
                    "thought_tokens": len(thought), "json_tokens": len(answer)}
    for constraint in (plain, harmony, forced, strict):  # warm-up: the templates are compiled once, as the engine checks a request
        compiler.check(constraint)
    walks = {"harmony": (harmony, header, answer), "forced_call": (forced, call_header, call),
             "strict_call": (strict, call_header, call)}
    steps: dict[str, list[float]] = {"plain_json": []}
    for _ in range(args.reps):  # interleaved, so that the machine's drift falls on all alike
        steps["plain_json"] += _steps(compiler, plain, answer, args.batch)
        for name, (constraint, between, json_ids) in walks.items():
            walked = _steps(compiler, constraint, thought + between + json_ids, args.batch)
            steps.setdefault(f"{name}_analysis", []).extend(walked[:len(thought)])
            steps.setdefault(f"{name}_json", []).extend(walked[len(thought) + len(between):])
    medians = {name: statistics.median(times) for name, times in steps.items()}
    report["mask_us_per_step"] = medians
    report["vs_plain_json"] = {name: medians[f"{name}_json"] / medians["plain_json"] for name in walks}
    write_report(OUT, report)
    print(json.dumps({k: report[k] for k in ("mask_us_per_step", "vs_plain_json")}, indent=2))
    return report


if __name__ == "__main__":
    main()
