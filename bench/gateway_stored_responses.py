"""What storing Responses costs the gateway, on SQLite (the embedded default) and PostgreSQL: `pitstop
serve` in front of a mock upstream (bench/mock_upstream.py, `--delay-ms` before each answer), one request
at a time, the modes interleaved, each timed by the client and by the gateway's CPU (its process tree,
/proc: 10 ms ticks, so a mode's mean over its requests).

- `stateless` / `stored`: one short input with `store: false` / with the default (one insert before the
  answer goes out).
- `chain` / `history`: a conversation of `--turns` turns, continued with `previous_response_id` (the
  gateway reads the chain: two queries, then an insert) or sent whole each turn with `store: false` (what
  a client does without stored responses). Both send the upstream the same messages.
- `conversation`: the same conversation kept in a Conversations API conversation (each turn names it and
  sends only its new input, as the OpenAI Agents SDK does): the gateway reads its items (two queries),
  adds the turn's items and stores the response before the answer goes out. Again the same messages.
- `background queued` / `background completed`: the `stored` request with `background: true`: until
  its `queued` answer, and until a client polling every 2 ms sees it completed (its row written three
  times: queued, in progress, completed; the polls' CPU counted too).

    .venv/bin/python -m bench.gateway_stored_responses [--rounds 100] [--turns 20] [--delay-ms 5]

Writes bench/results/gateway_stored_responses.json."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx

from bench.bench_db import on_each_database_behind_a_mock, server_version
from bench.common import RESULTS, command, machine_info, pct, write_report
from bench.procs import Service, mock_model_config, pitstop_serve

OUT = RESULTS / "gateway_stored_responses.json"
TURN_TEXT = "and now the next step of the plan, in a few words please"
POLL_S = 0.002  # how often a background response is polled until it has completed


class Timer:
    def __init__(self, http: httpx.Client, gateway: Service) -> None:
        self.http, self.gateway = http, gateway
        self.ms: dict[str, list[float]] = defaultdict(list)
        self.cpu_ms: dict[str, list[float]] = defaultdict(list)

    def post(self, mode: str, body: dict, path: str = "/v1/responses") -> dict:
        cpu, started = self.gateway.cpu_seconds(), time.perf_counter()
        response = self.http.post(path, json={"model": "m", **body} if path == "/v1/responses" else body)
        self.ms[mode].append((time.perf_counter() - started) * 1000)
        self.cpu_ms[mode].append((self.gateway.cpu_seconds() - cpu) * 1000)
        response.raise_for_status()
        return response.json()


def _background(timer: Timer) -> None:
    """A background response: answered `queued`, then polled every POLL_S until it has completed."""
    cpu, started = timer.gateway.cpu_seconds(), time.perf_counter()
    response_id = timer.post("background queued", {"input": TURN_TEXT, "background": True})["id"]
    while timer.http.get(f"/v1/responses/{response_id}").json()["status"] in ("queued", "in_progress"):
        time.sleep(POLL_S)
    timer.ms["background completed"].append((time.perf_counter() - started) * 1000)
    timer.cpu_ms["background completed"].append((timer.gateway.cpu_seconds() - cpu) * 1000)


def _conversations(timer: Timer, turns: int) -> None:
    """One conversation each way, turn by turn: continued by id, sent whole, and kept in a conversation."""
    previous: str | None = None
    history: list[dict] = []
    conversation = timer.post("conversation create", {}, "/v1/conversations")["id"]
    for turn in range(turns):
        ask = {"role": "user", "content": f"{TURN_TEXT} ({turn})"}

        def mode(name: str, turn: int = turn) -> str:
            return f"{name} turn {turn + 1}" if turn + 1 in (1, turns) else name

        chained = timer.post(mode("chain"), {"input": [ask], **({"previous_response_id": previous} if previous else {})})
        previous = chained["id"]
        history.append(ask)
        whole = timer.post(mode("history"), {"input": history, "store": False})
        history += whole["output"]
        timer.post(mode("conversation"), {"input": [ask], "conversation": conversation})


def _run(storage: str, storage_url: str, mock_url: str, args: argparse.Namespace, work: Path) -> dict:
    gateway, url = pitstop_serve(mock_model_config(mock_url, storage_url, work), work / f"gateway-{storage}.log")
    gateway.start(timeout_s=300)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            timer = Timer(http, gateway)
            for _ in range(5):  # warm: connections, statement caches
                timer.post("warm", {"input": "hi"})
                timer.post("warm", {"input": "hi", "store": False})
            for _ in range(args.rounds):
                timer.post("stateless", {"input": TURN_TEXT, "store": False})
                timer.post("stored", {"input": TURN_TEXT})
                _background(timer)
            for _ in range(args.conversations):
                _conversations(timer, args.turns)
    finally:
        gateway.stop()
    modes = {mode: {"requests": len(ms), "median_ms": statistics.median(ms), "p90_ms": pct(ms, 90),
                    "p99_ms": pct(ms, 99), "gateway_cpu_ms_mean": statistics.fmean(timer.cpu_ms[mode])}
             for mode, ms in timer.ms.items() if mode != "warm"}

    def ratio(a: str, b: str, key: str = "median_ms") -> float | None:
        return modes[a][key] / modes[b][key] if modes[b][key] else None  # CPU: no tick in a short run

    return {"storage": storage, "modes": modes,
            "stored_vs_stateless": {"latency": ratio("stored", "stateless"),
                                    "cpu": ratio("stored", "stateless", "gateway_cpu_ms_mean")},
            "background_completed_vs_stored": {"latency": ratio("background completed", "stored"),
                                               "cpu": ratio("background completed", "stored", "gateway_cpu_ms_mean")},
            "chain_vs_history": {"latency": ratio("chain", "history"),
                                 "cpu": ratio("chain", "history", "gateway_cpu_ms_mean")},
            "conversation_vs_history": {"latency": ratio("conversation", "history"),
                                        "cpu": ratio("conversation", "history", "gateway_cpu_ms_mean")},
            "last_turn_chain_vs_history": ratio(f"chain turn {args.turns}", f"history turn {args.turns}"),
            "last_turn_conversation_vs_history": ratio(f"conversation turn {args.turns}",
                                                       f"history turn {args.turns}")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    runs = on_each_database_behind_a_mock("pitstop-bench-responses-", ["--delay-ms", str(args.delay_ms)],
                                          lambda storage, url, mock_url, work: _run(storage, url, mock_url, args, work))
    for run in runs:
        for mode, m in run["modes"].items():
            print(f"{run['storage']:10s} {mode:18s} median {m['median_ms']:6.2f} ms  p90 {m['p90_ms']:6.2f} ms  "
                  f"gateway CPU {m['gateway_cpu_ms_mean']:5.2f} ms", flush=True)
        print(f"{run['storage']:10s} stored/stateless {run['stored_vs_stateless']['latency']:.2f}x latency; "
              f"chain/history {run['chain_vs_history']['latency']:.2f}x latency; "
              f"conversation/history {run['conversation_vs_history']['latency']:.2f}x latency; "
              f"background completed/stored {run['background_completed_vs_stored']['latency']:.2f}x latency",
              flush=True)
    write_report(args.out, {"command": command("bench.gateway_stored_responses", argv), "machine": machine_info(),
                            "postgresql": server_version(), "delay_ms": args.delay_ms, "turns": args.turns,
                            "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
