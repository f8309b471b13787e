"""What storing chat completions costs (`store: true`, gateway/stored_completions.py), on SQLite (the
embedded default) and PostgreSQL:

- serving: `pitstop serve` in front of a mock upstream (bench/mock_upstream.py, `--delay-ms` before each
  answer, streams in 10 chunks), one request at a time, a chat with and without `store: true`, whole and
  streamed, the four modes interleaved, `--rounds` each, timed by the client (a stored answer is written
  before it goes out; a stream's before its [DONE]);
- reading: `--rows` stored completions of 20 keys, 4 models and 10 metadata labels, 30 days of them,
  then each query `GET /v1/chat/completions` makes, timed `--repeat` times on the store itself: a key's
  first page (20, oldest first) and its newest page, one model's, and one metadata label's (a JSON field:
  no index, the key's rows are scanned).

    .venv/bin/python -m bench.stored_completions [--rounds 100] [--rows 200000]

Writes bench/results/stored_completions.json."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from bench.bench_db import on_each_database_behind_a_mock, server_version
from bench.common import RESULTS, command, machine_info, pct, write_report
from bench.procs import mock_model_config, pitstop_serve
from storage.chat_completions import TABLE, ChatCompletionStore
from storage.db import create_engine

OUT = RESULTS / "stored_completions.json"
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Summarise the plan for the next release in a few words, please."}]


def _serve(url: str, rounds: int) -> dict:
    ms: dict[str, list[float]] = defaultdict(list)
    with httpx.Client(base_url=url, timeout=60) as http:
        def timed(mode: str, body: dict) -> None:
            started = time.perf_counter()
            if body.get("stream"):
                with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    response.raise_for_status()
                    for _ in response.iter_bytes():
                        pass
            else:
                http.post("/v1/chat/completions", json=body).raise_for_status()
            ms[mode].append((time.perf_counter() - started) * 1000)

        for _ in range(5):  # warm: connections, statement caches
            timed("warm", {"model": "m", "messages": MESSAGES, "store": True, "metadata": {"run": "warm"}})
        for _ in range(rounds):
            for stream in (False, True):
                for store in (False, True):
                    mode = f"{'streamed' if stream else 'whole'} {'stored' if store else 'not stored'}"
                    timed(mode, {"model": "m", "messages": MESSAGES, "stream": stream, "store": store,
                                 "metadata": {"run": "bench"}})
    modes = {mode: {"requests": len(v), "median_ms": round(statistics.median(v), 3), "p90_ms": round(pct(v, 90), 3),
                    "p99_ms": round(pct(v, 99), 3)} for mode, v in ms.items() if mode != "warm"}
    return {"modes": modes,
            "stored_vs_not": {kind: round(modes[f"{kind} stored"]["median_ms"] / modes[f"{kind} not stored"]["median_ms"], 3)
                              for kind in ("whole", "streamed")},
            "added_ms": {kind: round(modes[f"{kind} stored"]["median_ms"] - modes[f"{kind} not stored"]["median_ms"], 3)
                         for kind in ("whole", "streamed")}}


def _fill(url: str, rows: int) -> None:
    rng = random.Random(7)
    now = datetime.now(UTC)
    engine = create_engine(url)
    batch: list[dict] = []
    with engine.begin() as connection:
        for i in range(rows):
            model = f"model-{rng.randrange(4)}"
            batch.append({"id": f"chatcmpl-{i:08d}", "created_at": now - timedelta(seconds=30 * 86400 * (1 - i / rows)),
                          "expires_at": now + timedelta(days=30), "api_key_id": f"key-{rng.randrange(20)}",
                          "request_id": f"req-{i}", "model": model, "request_model": "auto",
                          "metadata": {"label": f"l{rng.randrange(10)}", "run": "r"}, "messages": MESSAGES,
                          "settings": {"temperature": 0.7},
                          "completion": {"id": f"chatcmpl-{i:08d}", "object": "chat.completion", "model": model,
                                         "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                             "role": "assistant", "content": "Ship the fixes, then the docs."}}],
                                         "usage": {"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38}}})
            if len(batch) == 5000:
                connection.execute(TABLE.insert(), batch)
                batch = []
        if batch:
            connection.execute(TABLE.insert(), batch)
    if engine.dialect.name == "postgresql":  # the statistics autovacuum keeps on a live table (unanalysed
        with engine.begin() as connection:   # after a bulk load, the planner scans the key's rows: 12 ms)
            connection.exec_driver_sql("ANALYZE chat_completions")
    engine.dispose()


def _read(url: str, rows: int, repeat: int) -> dict:
    _fill(url, rows)
    store = ChatCompletionStore(url)
    now = datetime.now(UTC)
    queries = {
        "key, first page": lambda: store.page("key-3", now, 20, False, None),
        "key, newest page": lambda: store.page("key-3", now, 20, True, None),
        "key, one model": lambda: store.page("key-3", now, 20, True, None, "model-2"),
        "key, one metadata label": lambda: store.page("key-3", now, 20, True, None, None, {"label": "l4"}),
    }
    timings = {}
    for name, query in queries.items():
        query()  # warm
        ms = []
        for _ in range(repeat):
            started = time.perf_counter()
            found, _ = query()
            ms.append((time.perf_counter() - started) * 1000)
        assert len(found) == 20, f"{name}: {len(found)} rows"
        timings[name] = {"median_ms": round(statistics.median(ms), 3), "p90_ms": round(pct(ms, 90), 3)}
    return {"rows": rows, "queries": timings}


def _run(storage: str, storage_url: str, mock_url: str, args: argparse.Namespace, work: Path) -> dict:
    gateway, url = pitstop_serve(mock_model_config(mock_url, storage_url, work), work / f"gateway-{storage}.log")
    gateway.start(timeout_s=300)
    try:
        served = _serve(url, args.rounds)
    finally:
        gateway.stop()
    return {"storage": storage, "serving": served, "reading": _read(storage_url, args.rows, args.repeat)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    runs = on_each_database_behind_a_mock("pitstop-bench-stored-completions-", ["--delay-ms", str(args.delay_ms), "--chunks", "10"],
                                          lambda storage, url, mock_url, work: _run(storage, url, mock_url, args, work))
    for run in runs:
        for mode, m in run["serving"]["modes"].items():
            print(f"{run['storage']:10s} {mode:22s} median {m['median_ms']:6.2f} ms  p90 {m['p90_ms']:6.2f} ms",
                  flush=True)
        for name, q in run["reading"]["queries"].items():
            print(f"{run['storage']:10s} {name:26s} median {q['median_ms']:7.2f} ms", flush=True)
    write_report(args.out, {"command": command("bench.stored_completions", argv), "machine": machine_info(),
                            "postgresql": server_version(), "delay_ms": args.delay_ms, "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
