"""What relaying OpenAI's Realtime API through the gateway (gateway/realtime.py) costs, side by side in one run:
a `websockets` client against the tests' mock realtime upstream (tests/gateway/realtime_upstream.py, in a thread
of this process) straight, and through `pitstop serve` (a subprocess, as deployed: uvicorn, uvloop) relaying to
the same mock, the two paths interleaved round by round:

- `round trip`: one small event sent and echoed back (`mock.echo`), one at a time: p50 / p99 seconds, and what the
  gateway adds (each round trip crosses it twice, up and down: per event it is half);
- `burst`: the upstream sends `--burst` audio deltas of `--delta-chars` characters at once (`mock.burst`, as a
  response streams its audio): events a second the client receives.

    .venv/bin/python -m bench.realtime_relay [--rounds 400] [--burst 2000] [--delta-chars 4800]

Writes bench/results/realtime_relay.json."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from websockets.sync.client import ClientConnection, connect

from bench.common import RESULTS, command, machine_info, pct, write_report

OUT = RESULTS / "realtime_relay.json"
ECHO = json.dumps({"type": "mock.echo", "event_id": "event_bench", "audio": "A" * 200})


def round_trips(ws: ClientConnection, rounds: int) -> list[float]:
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        ws.send(ECHO)
        assert ws.recv(timeout=10) == ECHO
        seconds.append(time.perf_counter() - started)
    return seconds


def burst_rate(ws: ClientConnection, count: int, chars: int) -> float:
    started = time.perf_counter()
    ws.send(json.dumps({"type": "mock.burst", "count": count, "size": chars}))
    for _ in range(count):
        ws.recv(timeout=30)
    return count / (time.perf_counter() - started)


def measure(urls: dict[str, str], rounds: int, burst: int, chars: int, repeats: int = 5) -> dict[str, dict]:
    with ExitStack() as stack:
        sockets = {path: stack.enter_context(connect(url, compression=None, max_size=None))
                   for path, url in urls.items()}
        for ws in sockets.values():
            json.loads(ws.recv(timeout=10))  # session.created
            round_trips(ws, 50)  # warm-up
        trips: dict[str, list[float]] = {path: [] for path in urls}
        rates: dict[str, list[float]] = {path: [] for path in urls}
        for _ in range(repeats):  # interleaved: the machine's noise falls on both paths alike
            for path, ws in sockets.items():
                trips[path] += round_trips(ws, rounds // repeats)
                rates[path].append(burst_rate(ws, burst, chars))
    return {path: {"round_trip_p50_s": pct(trips[path], 50), "round_trip_p99_s": pct(trips[path], 99),
                   "round_trips": len(trips[path]), "burst_events_per_s": statistics.median(rates[path]),
                   "burst_events_per_s_all": rates[path]} for path in urls}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--delta-chars", type=int, default=4800)  # 100 ms of 24 kHz pcm16, base64
    args = parser.parse_args(argv)
    from tests.gateway.harness import gateway_config, gateway_processes, write_config
    from tests.gateway.realtime_upstream import realtime_upstream

    with realtime_upstream() as mock, tempfile.TemporaryDirectory() as tmp:
        entry = {"model_name": "voice", "litellm_params": {"model": "openai/gpt-realtime", "api_base": mock.url + "/v1",
                                                           "api_key": "sk-bench"}, "model_info": {"mode": "realtime"}}
        config = write_config(Path(tmp) / "gateway.yaml", gateway_config(Path(tmp), [entry]))
        with gateway_processes(config) as (gateway,):
            urls = {"direct": mock.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime",
                    "gateway": gateway.url.replace("http://", "ws://") + "/v1/realtime?model=voice"}
            paths = measure(urls, args.rounds, args.burst, args.delta_chars)
    direct, relayed = paths["direct"], paths["gateway"]
    added = {f"round_trip_{q}_s": relayed[f"round_trip_{q}_s"] - direct[f"round_trip_{q}_s"] for q in ("p50", "p99")}
    report = {"command": command("bench.realtime_relay", argv), "machine": machine_info(),
              "settings": vars(args), "paths": paths,
              "added": {**added, "per_event_p50_s": added["round_trip_p50_s"] / 2,
                        "per_event_p99_s": added["round_trip_p99_s"] / 2},
              "burst_ratio_gateway_to_direct": relayed["burst_events_per_s"] / direct["burst_events_per_s"]}
    print(json.dumps({k: report[k] for k in ("paths", "added", "burst_ratio_gateway_to_direct")}, indent=2))
    print("wrote", write_report(OUT, report))


if __name__ == "__main__":
    main()
