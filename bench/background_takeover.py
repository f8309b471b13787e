"""What looking for background responses to take over costs (gateway/background.py): every replica runs
`ResponseStore.lapsed` every 5 s, so on a `responses` table holding `--rows` stored responses (of which
`--running` are background runs going on, half of them with a lapsed lease) the look is timed with the
index on `lease_until` (migration 0014) and without it (dropped, as before that migration), on SQLite and
PostgreSQL; and taking one lapsed run over (`ResponseStore.take_over`: the conditional update and the
row read back).

    .venv/bin/python -m bench.background_takeover [--rows 200000] [--running 100] [--repeats 200]

Writes bench/results/background_takeover.json."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, text

from bench.bench_db import on_each_database, server_version
from bench.common import RESULTS, command, machine_info, pct, write_report
from storage.db import create_engine
from storage.migrate import upgrade
from storage.responses import TABLE, ResponseStore

OUT = RESULTS / "background_takeover.json"
CHUNK = 5000


def _rows(count: int, running: int, now: datetime) -> list[dict]:
    rows = []
    for i in range(count):
        background = i < running
        lapsed = background and i % 2 == 0
        rows.append({
            "id": f"resp_{i:08d}", "created_at": now, "expires_at": now + timedelta(days=30), "api_key_id": None,
            "previous_response_id": None, "ancestors": [], "session_id": None,
            "input_items": [{"type": "message", "role": "user", "content": f"question {i}"}],
            "response": {"id": f"resp_{i:08d}", "status": "in_progress" if background else "completed", "output": []},
            "status": "in_progress" if background else None,
            "lease_until": (now - timedelta(seconds=1) if lapsed else now + timedelta(hours=1)) if background else None,
            "lease_token": uuid.uuid4().hex if background else None,
            "request": {"model": "m", "input": f"question {i}", "background": True} if background else None,
            "takeovers": 0})
    return rows


def _timed(call: Callable[[], object], repeats: int) -> dict:
    ms = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        ms.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(ms), "p99_ms": pct(ms, 99), "n": repeats}


def run_one(storage: str, url: str, rows: int, running: int, repeats: int) -> dict:
    engine = create_engine(url)
    upgrade(engine)
    now = datetime.now(UTC)
    all_rows = _rows(rows, running, now)
    started = time.perf_counter()
    with engine.begin() as connection:
        for at in range(0, rows, CHUNK):
            connection.execute(insert(TABLE), all_rows[at:at + CHUNK])
    loaded_s = time.perf_counter() - started
    if storage == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("ANALYZE responses"))
    store = ResponseStore(engine)
    found = store.lapsed(now)
    assert len(found) == running // 2, found
    report: dict = {"storage": storage, "rows": rows, "running": running, "lapsed": len(found), "load_s": loaded_s}
    report["look_indexed"] = _timed(lambda: store.lapsed(now), repeats)
    lapsed_ids = iter(found)
    report["take_over"] = _timed(lambda: store.take_over(next(lapsed_ids), now, now + timedelta(seconds=15),
                                                         uuid.uuid4().hex), len(found))
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_responses_lease_until"))
        if storage == "postgresql":
            connection.execute(text("ANALYZE responses"))
    report["look_unindexed"] = _timed(lambda: store.lapsed(now), repeats)
    report["unindexed_vs_indexed"] = report["look_unindexed"]["median_ms"] / report["look_indexed"]["median_ms"]
    engine.dispose()
    print(f"{storage}: look {report['look_indexed']['median_ms']:.3f} ms indexed, "
          f"{report['look_unindexed']['median_ms']:.3f} ms without the index "
          f"({report['unindexed_vs_indexed']:.0f}x); take over {report['take_over']['median_ms']:.3f} ms", flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--running", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        runs = on_each_database(Path(work), lambda storage, url: run_one(storage, url, args.rows, args.running,
                                                                          args.repeats))
    report = {"command": command("bench.background_takeover", argv), "machine": machine_info(),
              "postgresql": server_version(), "runs": runs}
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
