"""What deleting old outcome rows costs the log's writers (storage/retention.py, `storage.retention_days`):
a synthetic log (`--rows` requests one second apart, each with a feedback row; bench/outcome_export.py's)
on a SQLite file and a throwaway PostgreSQL database, two thirds of it past the cutoff, deleted a batch
of 5,000 rows at a time with a 50 ms pause after each (as the gateway does), the same batches without the
pause, and in one statement each (batch = everything), on a fresh copy each. Meanwhile a thread writes one outcome row every 10 ms in a transaction of its own, as the batch
writer does: how long its inserts waited is what a sweep costs the gateway.

    .venv/bin/python -m bench.outcome_retention     # ~2 min; bench/results/storage/retention.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.bench_db import BenchDatabase, server_version
from bench.common import RESULTS, command, machine_info, pct, write_report
from bench.outcome_export import T0, seed
from storage.db import create_engine
from storage.migrate import upgrade
from storage.models import Outcome
from storage.retention import BATCH_ROWS, PAUSE_S, delete_before

OUT = RESULTS / "storage" / "retention.json"


def writer(url: str, stop: threading.Event, waits: list[tuple[float, float]]) -> None:
    engine = create_engine(url)
    i = 0
    try:
        while not stop.is_set():
            started = time.perf_counter()
            with engine.begin() as connection:
                connection.execute(sa.insert(Outcome.__table__), [{
                    "request_id": f"live{i}", "created_at": T0 + timedelta(days=30), "model": "m", "status": "ok",
                    "stream": False, "moved_instance": False}])
            waits.append((started, time.perf_counter()))
            i += 1
            time.sleep(0.01)
    finally:
        engine.dispose()


def measure(url: str, rows: int, batch_rows: int, pause_s: float) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        upgrade(engine)
        seed(engine, rows)
        waits: list[tuple[float, float]] = []
        stop = threading.Event()
        thread = threading.Thread(target=writer, args=(url, stop, waits))
        thread.start()
        time.sleep(0.5)  # the writer's pace before the sweep
        started = time.perf_counter()
        deleted = delete_before(engine, T0 + timedelta(seconds=rows * 2 // 3), batch_rows=batch_rows, pause_s=pause_s)
        ended = time.perf_counter()
        time.sleep(0.5)  # an insert that waited for the end of the sweep ends meanwhile
        stop.set()
        thread.join()
    finally:
        engine.dispose()
    seconds = ended - started
    before = [(b - a) * 1000 for a, b in waits if b < started]
    during = [(b - a) * 1000 for a, b in waits if b >= started and a <= ended]
    ms = during or [0.0]
    return {"batch_rows": batch_rows, "pause_s": pause_s, "deleted": deleted, "seconds": seconds, "writes_during": len(during),
            "write_wait_ms": {"median": statistics.median(ms), "p99": pct(ms, 99), "max": max(ms)},
            "write_wait_ms_before_median": statistics.median(before or [0.0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    report: dict[str, Any] = {"command": command("bench.outcome_retention"), "machine": machine_info(),
                              "rows": args.rows, "postgresql": server_version(), "results": {}}
    with tempfile.TemporaryDirectory() as folder:
        for backend in ("sqlite", "postgresql"):
            if backend == "postgresql" and server_version() is None:
                print("PostgreSQL is not reachable at 127.0.0.1:5432: its run is skipped", flush=True)
                continue
            results = []
            # The gateway's batches and pauses, the same batches back to back, then one statement.
            for batch_rows, pause_s in ((BATCH_ROWS, PAUSE_S), (BATCH_ROWS, 0.0), (args.rows, 0.0)):
                database = BenchDatabase.create() if backend == "postgresql" else None
                url = database.sqlalchemy_url if database else f"sqlite:///{folder}/retention-{batch_rows}-{pause_s}.db"
                try:
                    result = measure(url, args.rows, batch_rows, pause_s)
                finally:
                    if database is not None:
                        database.drop()
                results.append(result)
                waits = result["write_wait_ms"]
                print(f"{backend:10s} batches of {batch_rows:7d}, pause {pause_s * 1000:2.0f} ms: deleted {result['deleted']} in {result['seconds']:.2f} s;"
                      f" a writer's insert waited median {waits['median']:.1f} ms, p99 {waits['p99']:.1f} ms, max "
                      f"{waits['max']:.1f} ms ({result['writes_during']} inserts; "
                      f"{result['write_wait_ms_before_median']:.1f} ms median before)", flush=True)
            report["results"][backend] = results
    write_report(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
