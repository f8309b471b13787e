"""What a guardrail costs a call (gateway/guardrails.py): masking a chat request's personal data, putting the
values back in the answer, and in a stream chunk by chunk, on this CPU.

Requests are agent-like chat bodies of 1k, 10k and 100k characters (prose from the Python standard
library's docstrings, the tiny tokenizer's corpus, with an email, a phone number and a card number in every
1,000 characters), answers quote a tenth of that with the placeholders in it, streams cut it into 4-character
chunks. Medians of `--rounds` rounds, each timing `--reps` repetitions.

    .venv/bin/python -m bench.guardrails

Writes bench/results/guardrails.json."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import RESULTS, command, machine_info, write_report
from engine.tiny_model import corpus_lines
from gateway.guardrails import StreamRestorer, edit_request, restore_answer
from gateway.pii import Masker

OUT = RESULTS / "guardrails.json"
PERSONAL = " Reach jane.doe{i}@example.com, (415) 555-01{j:02d}, card 4111 1111 1111 1111. "


def request_of(chars: int) -> dict:
    prose = " ".join(corpus_lines())
    parts: list[str] = []
    size = i = 0
    while size < chars:
        piece = prose[(i * 900) % (len(prose) - 900):][:900] + PERSONAL.format(i=i, j=i % 100)
        parts.append(piece)
        size += len(piece)
        i += 1
    text = "".join(parts)[:chars]
    half = len(text) // 2
    return {"model": "m", "messages": [{"role": "system", "content": text[:half // 4]},
                                       {"role": "user", "content": text[half // 4: half]},
                                       {"role": "tool", "tool_call_id": "c", "content": text[half:]}]}


def timed(work: Callable[[], object], reps: int, rounds: int) -> float:
    """Median over rounds of the mean seconds one call takes."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            work()
        samples.append((time.perf_counter() - start) / reps)
    return statistics.median(samples)


def measure(chars: int, reps: int, rounds: int) -> dict:
    body = request_of(chars)
    masker = Masker()
    masked = edit_request(body, masker.mask)
    quoted = masked["messages"][1]["content"][: chars // 10]
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": quoted}}]}
    pieces = [quoted[i:i + 4] for i in range(0, len(quoted), 4)]

    def stream() -> None:
        restorer = StreamRestorer(masker)
        for piece in pieces:
            restorer.chunk({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})

    mask_s = timed(lambda: edit_request(body, Masker().mask), reps, rounds)
    copy_s = timed(lambda: edit_request(body, lambda text: text), reps, rounds)  # the walk and copy alone
    restore_s = timed(lambda: restore_answer(answer, masker), reps, rounds)
    stream_s = timed(stream, max(1, reps // 10), rounds)
    return {"request_chars": chars, "values_masked": sum(masker.counts.values()),
            "mask_request_us": round(mask_s * 1e6, 1), "copy_only_us": round(copy_s * 1e6, 1),
            "mask_mb_per_s": round(chars / mask_s / 1e6, 2),
            "restore_answer_us": round(restore_s * 1e6, 1), "answer_chars": len(quoted),
            "restore_stream_us_per_chunk": round(stream_s / max(len(pieces), 1) * 1e6, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rows = []
    for chars in args.sizes:
        row = measure(chars, max(1, args.reps * 1_000 // chars), args.rounds)
        rows.append(row)
        print(row, flush=True)
    report = {"command": command("bench.guardrails", argv), "machine": machine_info(), "rows": rows}
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
