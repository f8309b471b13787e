"""What keeping Anthropic's prompt-cache breakpoints and thinking costs the gateway, in process: a Claude
Code-sized Messages request (a system prompt, 20 tools, 40 turns each answered with a signed thinking block
and text) translated to its chat (gateway/messages_api.py `chat_request`), then its Anthropic fields taken
out for a non-Anthropic deployment (gateway/anthropic_fields.py, once a call), with breakpoints and thinking
(system, the last tool, the last turn marked) and without any. The upstream call is not part of it.

    .venv/bin/python -m bench.anthropic_fields [--repeat 2000] [--turns 40]

Writes bench/results/anthropic_fields.json."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import RESULTS, command, machine_info, write_report
from gateway.anthropic_fields import without_anthropic_fields
from gateway.messages_api import chat_request

OUT = RESULTS / "anthropic_fields.json"
MARK = {"type": "ephemeral"}


def request(turns: int, marked: bool) -> dict:
    tools = [{"name": f"tool_{i}", "description": "d" * 200, "input_schema": {"type": "object", "properties": {}}}
             for i in range(20)]
    messages: list[dict] = []
    for i in range(turns):
        thinking = [{"type": "thinking", "thinking": "t" * 300, "signature": "s" * 200}] if marked else []
        messages += [{"role": "user", "content": [{"type": "text", "text": f"ask {i} " * 40}]},
                     {"role": "assistant", "content": [*thinking, {"type": "text", "text": f"answer {i} " * 40}]}]
    messages.append({"role": "user", "content": [{"type": "text", "text": "and now?"}]})
    raw = {"model": "m", "max_tokens": 4000, "system": [{"type": "text", "text": "s" * 4000}], "tools": tools,
           "messages": messages}
    if marked:
        raw["system"][0]["cache_control"] = tools[-1]["cache_control"] = messages[-1]["content"][0]["cache_control"] \
            = MARK
        raw["thinking"] = {"type": "enabled", "budget_tokens": 2000}
    return raw


def timed_us(call: Callable[[], object], repeat: int) -> float:
    """The median of 5 runs' mean time per call, in µs."""
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            call()
        runs.append((time.perf_counter() - started) / repeat * 1e6)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    modes = {}
    for name, marked in (("with breakpoints and thinking", True), ("without", False)):
        raw = request(args.turns, marked)
        chat = chat_request(raw)
        modes[name] = {"translate_us": timed_us(lambda raw=raw: chat_request(raw), args.repeat),
                       "strip_us": timed_us(lambda chat=chat: without_anthropic_fields(chat), args.repeat)}
        print(f"{name:30s} translate {modes[name]['translate_us']:7.1f} µs  strip {modes[name]['strip_us']:7.1f} µs",
              flush=True)
    write_report(args.out, {"command": command("bench.anthropic_fields", argv), "machine": machine_info(),
                            "turns": args.turns, "repeat": args.repeat, "modes": modes})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
