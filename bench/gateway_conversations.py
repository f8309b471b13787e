"""What a long conversation costs the gateway, on SQLite (the embedded default) and PostgreSQL: `pitstop
serve` in front of a mock upstream (bench/mock_upstream.py, `--delay-ms` before each answer). For each
size, a conversation is filled with that many items (20 a call, as the Agents SDK adds them), then, a
few times each, interleaved:

- `turn`: a Responses request in the conversation (reads every item; the upstream gets them all), with
  `store: false`, so only the conversation is written;
- `list all / 20` and `list all / 100`: every item, page by page, as `OpenAIConversationsSession.get_items`
  reads them (the SDK's cursor, `order=asc`, 20 a page by default);
- `list last 20`: the newest page (`order=desc`), what a UI shows.

    .venv/bin/python -m bench.gateway_conversations [--sizes 100,1000,5000] [--repeats 5] [--delay-ms 5]

Writes bench/results/gateway_conversations.json."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.bench_db import on_each_database_behind_a_mock, server_version
from bench.common import RESULTS, command, machine_info, write_report
from bench.procs import mock_model_config, pitstop_serve

OUT = RESULTS / "gateway_conversations.json"
ITEM_TEXT = "a message of about the length an agent's turn has, with a few words of context in it"


def _list_all(http: httpx.Client, conversation: str, limit: int) -> int:
    """Every item, a page at a time, as the SDKs' cursor pages read them; the number of items."""
    count, after = 0, None
    while True:
        page = http.get(f"/v1/conversations/{conversation}/items",
                        params={"order": "asc", "limit": limit, **({"after": after} if after else {})})
        page.raise_for_status()
        body = page.json()
        count += len(body["data"])
        if not body["has_more"]:
            return count
        after = body["last_id"]


def _run(storage: str, storage_url: str, mock_url: str, args: argparse.Namespace, work: Path) -> dict:
    gateway, url = pitstop_serve(mock_model_config(mock_url, storage_url, work), work / f"gateway-{storage}.log")
    gateway.start(timeout_s=300)
    ms: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            for size in args.sizes:
                conversation = http.post("/v1/conversations", json={}).json()["id"]
                for start in range(0, size, 20):
                    items = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{ITEM_TEXT} ({i})"}
                             for i in range(start, min(start + 20, size))]
                    http.post(f"/v1/conversations/{conversation}/items", json={"items": items}).raise_for_status()
                timed = ms[str(size)]

                def timer(mode: str, call: Callable[[], object], timed: dict[str, list[float]] = timed) -> object:
                    started = time.perf_counter()
                    result = call()
                    timed[mode].append((time.perf_counter() - started) * 1000)
                    return result

                for _ in range(args.repeats):
                    timer("turn", lambda c=conversation: http.post("/v1/responses", json={
                        "model": "m", "conversation": c, "input": "and now?", "store": False}).raise_for_status())
                    for limit in (20, 100):
                        counted = timer(f"list all / {limit}", lambda c=conversation, n=limit: _list_all(http, c, n))
                        assert counted >= size, (counted, size)
                    timer("list last 20", lambda c=conversation: http.get(
                        f"/v1/conversations/{c}/items", params={"limit": 20}).raise_for_status())
    finally:
        gateway.stop()
    return {"storage": storage, "sizes": {size: {mode: {"median_ms": statistics.median(values), "max_ms": max(values),
                                                        "runs": len(values)}
                                                 for mode, values in modes.items()}
                                          for size, modes in ms.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000, 5000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    runs = on_each_database_behind_a_mock("pitstop-bench-conversations-", ["--delay-ms", str(args.delay_ms)],
                                          lambda storage, url, mock_url, work: _run(storage, url, mock_url, args, work))
    for run in runs:
        for size, modes in run["sizes"].items():
            line = "  ".join(f"{mode} {m['median_ms']:8.1f} ms" for mode, m in modes.items())
            print(f"{run['storage']:10s} {size:>6s} items: {line}", flush=True)
    write_report(args.out, {"command": command("bench.gateway_conversations", argv), "machine": machine_info(),
                            "postgresql": server_version(), "delay_ms": args.delay_ms, "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
