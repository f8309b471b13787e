"""What serving Google's Gemini API as a chat costs: the same short conversation with a function sent to
`pitstop serve` as a chat completion and as a Gemini generateContent request (streamed: streamGenerateContent
with `alt=sse`), whole and streamed, and the chat sent straight to the mock upstream (bench/mock_upstream.py,
`--delay-ms` before each answer) for what the gateway adds; one request at a time, the modes interleaved;
client-timed, with the gateway's CPU (its process tree, /proc: 10 ms ticks, so a mode's mean over its requests).

    .venv/bin/python -m bench.gateway_gemini [--rounds 200] [--delay-ms 5]

Writes bench/results/gateway_gemini.json."""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx

from bench.common import RESULTS, command, latency_modes, machine_info, write_report
from bench.procs import gateway_on_mock

OUT = RESULTS / "gateway_gemini.json"
SYSTEM = "You are a careful assistant. Answer briefly."
ASK = "What is the capital of Norway, and what is it known for?"
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}}
CHAT = {"model": "m", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}],
        "max_tokens": 64, "temperature": 0.2, "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather in a city", "parameters": PARAMETERS}}]}
GEMINI = {"systemInstruction": {"parts": [{"text": SYSTEM}]}, "contents": [{"role": "user", "parts": [{"text": ASK}]}],
          "generationConfig": {"maxOutputTokens": 64, "temperature": 0.2},
          "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "OBJECT", "properties": {
                                                   "city": {"type": "STRING"}}}}]}]}


def _ask(http: httpx.Client, upstream: httpx.Client, mode: str, stream: bool) -> None:
    """One request of `mode`, its answer read to the end."""
    if mode == "gemini":
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        response = http.post(f"/v1beta/models/m:{method}", json=GEMINI)
    else:
        client = upstream if mode == "direct" else http
        response = client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    response.raise_for_status()
    if stream and b"data: " not in response.content:
        raise RuntimeError(f"{mode}: no events in the stream")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    ms: dict[str, list[float]] = defaultdict(list)
    cpu_ms: dict[str, list[float]] = defaultdict(list)
    with gateway_on_mock("gemini", args.delay_ms) as (gateway, url, mock_url), \
            httpx.Client(base_url=url, timeout=60) as http, httpx.Client(base_url=mock_url, timeout=60) as upstream:
        for round_ in range(args.rounds + 5):  # the first 5: warm-up
            for mode in ("direct", "chat", "gemini"):
                for stream in (False, True):
                    cpu, started = gateway.cpu_seconds(), time.perf_counter()
                    _ask(http, upstream, mode, stream)
                    elapsed = time.perf_counter() - started
                    if round_ >= 5:
                        name = f"{mode} {'stream' if stream else 'whole'}"
                        ms[name].append(elapsed * 1000)
                        cpu_ms[name].append((gateway.cpu_seconds() - cpu) * 1000)
    modes = latency_modes(ms, cpu_ms)
    for mode, m in modes.items():
        kind = mode.split()[1]
        m["added_median_ms_vs_direct"] = m["median_ms"] - modes["direct " + kind]["median_ms"]
        m["added_median_ms_vs_chat"] = m["median_ms"] - modes["chat " + kind]["median_ms"]
        print(f"{mode:14s} median {m['median_ms']:6.2f} ms ({m['added_median_ms_vs_direct']:+.2f} vs direct, "
              f"{m['added_median_ms_vs_chat']:+.2f} vs chat)  p90 {m['p90_ms']:6.2f} ms  gateway CPU "
              f"{m['gateway_cpu_ms_mean']:5.2f} ms", flush=True)
    write_report(args.out, {"command": command("bench.gateway_gemini", argv), "machine": machine_info(),
                            "delay_ms": args.delay_ms, "modes": modes})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
