"""What serving a request as a chat costs: the same short conversation sent to `pitstop serve` as a chat
completion, as a Responses API request (`store: false`) and as an Anthropic Messages request, whole and
streamed; and, streamed only, as a stored Responses request and as a background one (stored too, its
events relayed through the run's feed: gateway/background.py), in front of a mock upstream (bench/mock_upstream.py, `--delay-ms` before each answer), one
request at a time, the modes interleaved; client-timed, with the gateway's CPU (its process tree, /proc:
10 ms ticks, so a mode's mean over its requests).

    .venv/bin/python -m bench.gateway_dialects [--rounds 200] [--delay-ms 5]

Writes bench/results/gateway_dialects.json."""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx

from bench.common import RESULTS, command, latency_modes, machine_info, write_report
from bench.procs import gateway_on_mock

OUT = RESULTS / "gateway_dialects.json"
SYSTEM = "You are a careful assistant. Answer briefly."
ASK = "What is the capital of Norway, and what is it known for?"
TOOL = {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}

BODIES = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}],
                                      "tools": [{"type": "function", "function": TOOL}], "max_tokens": 64}),
    "responses": ("/v1/responses", {"instructions": SYSTEM, "input": ASK, "store": False, "max_output_tokens": 64,
                                    "tools": [{"type": "function", **TOOL}]}),
    "messages": ("/v1/messages", {"system": SYSTEM, "messages": [{"role": "user", "content": ASK}], "max_tokens": 64,
                                  "tools": [{"name": TOOL["name"], "description": TOOL["description"],
                                             "input_schema": TOOL["parameters"]}]}),
}
BODIES["stored"] = (BODIES["responses"][0], {**BODIES["responses"][1], "store": True})
BODIES["background"] = (BODIES["responses"][0], {**BODIES["stored"][1], "background": True})
STREAMED_ONLY = ("stored", "background")  # a background request answered whole is only its `queued` Response


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    ms: dict[str, list[float]] = defaultdict(list)
    cpu_ms: dict[str, list[float]] = defaultdict(list)
    with gateway_on_mock("dialects", args.delay_ms) as (gateway, url, mock_url), \
            httpx.Client(base_url=url, timeout=60) as http:
        for round_ in range(args.rounds + 5):  # the first 5: warm-up
            for dialect, (path, body) in BODIES.items():
                for stream in (True,) if dialect in STREAMED_ONLY else (False, True):
                    cpu, started = gateway.cpu_seconds(), time.perf_counter()
                    response = http.post(path, json={"model": "m", **body, "stream": stream})
                    elapsed = time.perf_counter() - started
                    response.raise_for_status()
                    if round_ >= 5:
                        mode = f"{dialect} {'stream' if stream else 'whole'}"
                        ms[mode].append(elapsed * 1000)
                        cpu_ms[mode].append((gateway.cpu_seconds() - cpu) * 1000)
    modes = latency_modes(ms, cpu_ms)
    for mode, m in modes.items():
        chat = modes["chat " + mode.split()[1]]
        m["added_median_ms_vs_chat"] = m["median_ms"] - chat["median_ms"]
        print(f"{mode:18s} median {m['median_ms']:6.2f} ms ({m['added_median_ms_vs_chat']:+.2f} vs chat)  p90 "
              f"{m['p90_ms']:6.2f} ms  gateway CPU {m['gateway_cpu_ms_mean']:5.2f} ms", flush=True)
    write_report(args.out, {"command": command("bench.gateway_dialects", argv), "machine": machine_info(),
                            "delay_ms": args.delay_ms, "modes": modes})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
