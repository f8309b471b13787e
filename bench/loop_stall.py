"""How long one huge prompt stops the gateway's event loop: `make serve`'s gateway (the embedded
default, two in-process engines) gets a prompt of `--sizes` characters, and a chat of `--messages`
short messages (both too long for the tiny models' context, so they are rendered, tokenized and
refused with a 400) while a client asks `/healthz` every 10 ms; the longest `/healthz` round trip
during it is how long every other request on that gateway waited.

    .venv/bin/python -m bench.loop_stall [--sizes 1000000,7000000] [--messages 100000]
        [--models tiny-small,auto]   # ~2 min

Run it at an older commit (a git worktree with this file copied in) to compare: before stop 28, the
engine's tokenizer held the GIL while it worked on its worker thread. Writes
bench/results/gateway_loop_stall.json."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

from bench.common import RESULTS, command, machine_info, write_report
from bench.procs import Service, free_port, healthz_lags

ROOT = Path(__file__).resolve().parents[1]
OUT = RESULTS / "gateway_loop_stall.json"


def _messages(size: int, count: int) -> list[dict]:
    if count:
        return [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(count)]
    return [{"role": "user", "content": "word " * (size // 5)}]


async def _stall(url: str, model: str, size: int, count: int = 0) -> dict:
    body = {"model": model, "max_tokens": 1, "messages": _messages(size, count)}
    async with healthz_lags(url) as lags:
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            started = time.perf_counter()
            response = await client.post("/v1/chat/completions", json=body)
            elapsed = time.perf_counter() - started
        await asyncio.sleep(0.3)
    return {"model": model, "prompt_chars": 0 if count else size, "messages": count or 1, "status": response.status_code, "request_s": elapsed,
            "healthz_max_ms": max(lags) * 1000, "healthz_median_ms": sorted(lags)[len(lags) // 2] * 1000,
            "healthz_requests": len(lags)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,7000000")
    parser.add_argument("--messages", default="100000", help="chats of this many messages ('' for none)")
    parser.add_argument("--models", default="tiny-small,auto")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gateway = Service("pitstop", [sys.executable, "-m", "gateway.cli", "serve", "--config", "config/pitstop.yaml",
                                  "--port", str(port), "--log-level", "warning"], f"{url}/readyz",
                      Path("var/bench/loop_stall.log"), cwd=ROOT)
    gateway.start(timeout_s=600)
    try:
        models = args.models.split(",")
        points = [asyncio.run(_stall(url, model, int(size))) for size in args.sizes.split(",") for model in models]
        points += [asyncio.run(_stall(url, model, 0, int(count))) for count in filter(None, args.messages.split(","))
                   for model in models]
    finally:
        gateway.stop()
    for point in points:
        what = f"{point['messages']:,d} messages" if point["messages"] > 1 else f"{point['prompt_chars']:,d} chars"
        print(f"{point['model']:10s} {what:>18s}: {point['status']} in "
              f"{point['request_s']:.2f} s; /healthz waited up to {point['healthz_max_ms']:.0f} ms", flush=True)
    write_report(args.out, {"command": command("bench.loop_stall", argv), "machine": machine_info(), "points": points})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
