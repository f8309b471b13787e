"""What streaming tool calls as they are written costs the engine, and how much sooner a client sees them.

    .venv/bin/python -m bench.engine_tool_calls [--reps 20]

Answers a model writes with `--tool-call-parser hermes` (Qwen) and `llama3_json` (Llama): a sentence,
then two calls, each with one string argument of 100, 1,000 or 10,000 characters (a file's content, say),
fed 4 characters a token as a detokenizer hands them on. Each answer goes through engine/call_stream.py's
CallStream, as a streamed chat is, and, beside it in the same repetition, through what the engine did
before stop 33: the text gathered and the calls parsed once at the end (`parse_calls`), the first call
going out only then. Reports the CPU microseconds a token each costs (medians over the repetitions),
and at which token the first call's name goes out against the answer's length in tokens. Writes
bench/results/engine_tool_calls.json."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `engine` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, command, machine_info, rounded
from engine.call_stream import CallStream
from engine.tool_parsers import parse_calls

OUT = RESULTS / "engine_tool_calls.json"
TOKEN_CHARS = 4
SIZES = (100, 1000, 10_000)


def answer(parser: str, size: int) -> str:
    content = ("lorem ipsum dolor sit amet, \"quoted\" {braces} and a \\ backslash\n" * (size // 60 + 1))[:size]
    calls = [{"name": "write_file", "arguments": {"path": f"src/part_{k}.py", "content": content}} for k in range(2)]
    if parser == "hermes":
        return "I will write both files.\n" + "\n".join(
            f"<tool_call>\n{json.dumps(call)}\n</tool_call>" for call in calls)
    return "<|python_tag|>" + "; ".join(json.dumps({"name": c["name"], "parameters": c["arguments"]}) for c in calls)


def tokens_of(text: str) -> list[str]:
    return [text[i:i + TOKEN_CHARS] for i in range(0, len(text), TOKEN_CHARS)]


def streamed(tokens: list[str], parser: str) -> tuple[float, int]:
    """CPU seconds to stream the answer, and the token at which the first call's name went out."""
    stream, first = CallStream(parser), -1
    start = time.process_time()
    for k, token in enumerate(tokens):
        _, deltas = stream.feed(token)
        if deltas and first < 0:
            first = k
    stream.finish()
    return time.process_time() - start, first


def held(tokens: list[str], parser: str) -> float:
    """CPU seconds to gather the answer and parse its calls once at the end (the engine before stop 33)."""
    start = time.process_time()
    text = ""
    for token in tokens:
        text += token
    assert parse_calls(text, parser) is not None
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    results = {}
    for fmt in ("hermes", "llama3_json"):
        for size in SIZES:
            tokens = tokens_of(answer(fmt, size))
            stream_s, held_s, first = [], [], -1
            for _ in range(args.reps):  # side by side in each repetition
                seconds, first = streamed(tokens, fmt)
                stream_s.append(seconds)
                held_s.append(held(tokens, fmt))
            row = {"tokens": len(tokens), "first_call_at_token": first,
                   "streamed_us_per_token": statistics.median(stream_s) / len(tokens) * 1e6,
                   "held_us_per_token": statistics.median(held_s) / len(tokens) * 1e6}
            results[f"{fmt} {size}"] = row
            print(f"{fmt:12s} {size:6d} chars: {row['tokens']:5d} tokens, first call at token {first:4d}; "
                  f"streamed {row['streamed_us_per_token']:.2f} us/token, held {row['held_us_per_token']:.2f}")
    report = {"command": command("bench.engine_tool_calls"), "machine": machine_info(), "reps": args.reps,
              "token_chars": TOKEN_CHARS, "results": rounded(results)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
