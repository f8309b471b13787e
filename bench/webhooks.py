"""What webhooks cost and how fast they go (storage/webhooks.py, gateway/webhooks.py), on a SQLite file and
a throwaway PostgreSQL database, side by side:

- the outbox on the change's transaction: a background response's final write (`ResponseStore.advance`,
  in progress -> completed) with 0, 1 and 3 endpoints taking the event, and the same UPDATE alone (the
  write before webhooks), interleaved, `--writes` each;
- latency from an event's commit to its receipt, one event at a time (`--events`, 20 a second), sent by a
  `WebhookSender` (the gateway's, with its defaults) to a receiver in another process: made on the
  sender's own replica (it is woken after the commit) and on another replica (found at its next look,
  every `poll_s` = 1 s);
- a burst: `--burst` events committed at once, until all are received, by one sender and by two sharing
  the database (PostgreSQL; each delivery must arrive once).

    .venv/bin/python -m bench.webhooks      # ~1 min; bench/results/webhooks.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from prometheus_client import CollectorRegistry
from sqlalchemy import update
from sqlalchemy.engine import Engine

from bench.bench_db import BenchDatabase, server_version
from bench.common import RESULTS, command, machine_info, pct, write_report
from bench.procs import free_port, probe
from gateway.access_config import WebhooksConfig
from gateway.webhooks import WebhookSender, new_secret
from storage.db import create_engine
from storage.migrate import upgrade
from storage.responses import ACTIVE, ResponseStore
from storage.responses import TABLE as RESPONSES
from storage.webhooks import EventOutbox, WebhookStore


def receiver_main(port: int) -> None:
    """A receiver: notes when each event's object arrived (and how many times); GET /log returns them."""
    arrivals: dict[str, list[float]] = {}

    async def hook(request: web.Request) -> web.Response:
        at = time.time()
        event = json.loads(await request.read())
        arrivals.setdefault(event["data"]["id"], []).append(at)
        return web.json_response({"ok": True})

    async def log(request: web.Request) -> web.Response:
        return web.json_response(arrivals)

    async def clear(request: web.Request) -> web.Response:
        arrivals.clear()
        return web.json_response({"ok": True})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.add_routes([web.post("/hook", hook), web.get("/log", log), web.post("/clear", clear),
                    web.get("/healthz", health)])
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _response_row(response_id: str, now: datetime) -> dict[str, Any]:
    return {"id": response_id, "created_at": now, "expires_at": now.replace(year=now.year + 1), "api_key_id": None,
            "previous_response_id": None, "ancestors": [], "session_id": None, "input_items": [],
            "response": {"status": "in_progress"}, "status": "in_progress", "lease_until": now, "lease_token": "t",
            "request": None}


def _endpoints(url: str, store: WebhookStore, hook: str, how_many: int) -> None:
    with create_engine(url).begin() as connection:
        connection.exec_driver_sql("DELETE FROM webhook_endpoints")
        connection.exec_driver_sql("DELETE FROM webhook_deliveries")
    now = datetime.now(UTC)
    for i in range(how_many):
        store.add_endpoint({"id": f"we_{i}", "created_at": now, "updated_at": now, "name": f"e{i}", "url": hook,
                            "event_types": ["response.completed"], "secret": new_secret(),
                            "previous_secret": None, "previous_secret_until": None})


def _write_without_outbox(engine: Engine, response_id: str) -> None:
    """The final write as it was before webhooks: the UPDATE alone."""
    with engine.begin() as connection:
        connection.execute(update(RESPONSES).where(RESPONSES.c.id == response_id, RESPONSES.c.status.in_(ACTIVE),
                                                   RESPONSES.c.lease_token == "t")
                           .values(response={"status": "completed"}, status="completed", lease_until=None))


def outbox_cost(url: str, hook: str, writes: int) -> dict[str, Any]:
    """Microseconds per final write without the outbox, and with 0, 1 and 3 endpoints taking the event,
    interleaved by round."""
    store = WebhookStore(url)
    responses = ResponseStore(url)
    engine = create_engine(url)
    times: dict[str, list[float]] = {"no_outbox": [], "0_endpoints": [], "1_endpoints": [], "3_endpoints": []}
    rounds = 10
    for r in range(rounds):
        for name in times:
            _endpoints(url, store, hook, 0 if name == "no_outbox" else int(name[0]))
            now = datetime.now(UTC)
            for i in range(writes // rounds):
                responses.put(_response_row(f"resp_{r}_{name}_{i}", now))
            for i in range(writes // rounds):
                start = time.perf_counter()
                if name == "no_outbox":
                    _write_without_outbox(engine, f"resp_{r}_{name}_{i}")
                else:
                    responses.advance(f"resp_{r}_{name}_{i}", {"status": "completed"}, None, "t")
                times[name].append((time.perf_counter() - start) * 1e6)
    engine.dispose()
    return {name: {"median_us": round(pct(v, 50), 1), "p99_us": round(pct(v, 99), 1), "writes": len(v)}
            for name, v in times.items()}


async def _log(http: httpx.AsyncClient, base: str) -> dict[str, list[float]]:
    return (await http.get(base + "/log")).json()


async def _wait_for(http: httpx.AsyncClient, base: str, ids: list[str], timeout_s: float) -> dict[str, list[float]]:
    deadline = time.monotonic() + timeout_s
    while True:
        arrivals = await _log(http, base)
        if all(i in arrivals for i in ids) or time.monotonic() > deadline:
            return arrivals
        await asyncio.sleep(0.02)


async def latency(url: str, base: str, events: int, same_replica: bool) -> dict[str, Any]:
    """Commit-to-receipt seconds for events made one at a time, 20 a second."""
    store = WebhookStore(url)
    _endpoints(url, store, base + "/hook", 1)
    outbox = EventOutbox()
    sender = WebhookSender(store, outbox, WebhooksConfig(), CollectorRegistry())
    maker = ResponseStore(url, outbox if same_replica else EventOutbox())  # another replica's: no wake
    committed: dict[str, float] = {}
    now = datetime.now(UTC)
    tag = "same" if same_replica else "other"
    for i in range(events):
        maker.put(_response_row(f"resp_{tag}_{i}", now))
    async with httpx.AsyncClient() as http:
        await http.post(base + "/clear")
        await sender.start()
        for i in range(events):
            response_id = f"resp_{tag}_{i}"
            await asyncio.to_thread(maker.advance, response_id, {"status": "completed"}, None, "t")
            committed[response_id] = time.time()
            await asyncio.sleep(0.05)
        arrivals = await _wait_for(http, base, list(committed), 30.0)
        await sender.close()
    waits = [arrivals[i][0] - committed[i] for i in committed if i in arrivals]
    return {"events": events, "received": len(waits), "p50_ms": round(pct(waits, 50) * 1e3, 1),
            "p99_ms": round(pct(waits, 99) * 1e3, 1), "max_ms": round(max(waits) * 1e3, 1)}


async def burst(url: str, base: str, events: int, senders: int) -> dict[str, Any]:
    """`events` committed at once; seconds until all arrived, and how many arrived more than once."""
    store = WebhookStore(url)
    _endpoints(url, store, base + "/hook", 1)
    outboxes = [EventOutbox() for _ in range(senders)]
    running = [WebhookSender(store, outbox, WebhooksConfig(), CollectorRegistry()) for outbox in outboxes]
    maker = ResponseStore(url, outboxes[0])
    now = datetime.now(UTC)
    ids = [f"resp_burst{senders}_{i}" for i in range(events)]
    for response_id in ids:
        maker.put(_response_row(response_id, now))
    async with httpx.AsyncClient() as http:
        await http.post(base + "/clear")
        for sender in running:
            await sender.start()
        start = time.time()
        engine = create_engine(url)

        def end_all() -> None:  # one transaction, as many ends at once
            with engine.begin() as connection:
                for response_id in ids:
                    EventOutbox.queue_event(connection, "response.completed", response_id)
            outboxes[0].wake()

        await asyncio.to_thread(end_all)
        arrivals = await _wait_for(http, base, ids, 120.0)
        for sender in running:
            await sender.close()
        engine.dispose()
    last = max(times[0] for times in arrivals.values())
    copies = Counter(len(times) for times in arrivals.values())
    return {"events": events, "senders": senders, "received": len(arrivals), "seconds": round(last - start, 3),
            "per_second": round(len(arrivals) / (last - start), 1),
            "received_more_than_once": sum(n for copies_, n in copies.items() if copies_ > 1)}


async def measure(url: str, base: str, args: argparse.Namespace, two_senders: bool) -> dict[str, Any]:
    upgrade(url)
    result: dict[str, Any] = {"outbox_cost_on_the_final_write": outbox_cost(url, base + "/hook", args.writes)}
    result["latency_same_replica"] = await latency(url, base, args.events, same_replica=True)
    result["latency_another_replica"] = await latency(url, base, args.events, same_replica=False)
    result["burst_one_sender"] = await burst(url, base, args.burst, 1)
    if two_senders:
        result["burst_two_senders"] = await burst(url, base, args.burst, 2)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--out", default=str(RESULTS / "webhooks.json"))
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver:
        receiver_main(args.receiver)
        return
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-m", "bench.webhooks", "--receiver", str(port)])
    base = f"http://127.0.0.1:{port}"
    report: dict[str, Any] = {"command": command("bench.webhooks", argv), "machine": machine_info(),
                              "postgresql": server_version()}
    try:
        deadline = time.monotonic() + 30
        while not probe(base + "/healthz"):
            assert time.monotonic() < deadline and receiver.poll() is None, "the receiver did not start"
            time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            report["sqlite"] = asyncio.run(measure(f"sqlite:///{Path(tmp) / 'webhooks.db'}", base, args, False))
        database = BenchDatabase.create()
        try:
            report["postgresql_results"] = asyncio.run(measure(database.sqlalchemy_url, base, args, True))
        finally:
            database.drop()
    finally:
        receiver.terminate()
        receiver.wait()
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
