"""Reading logged outcomes with their feedback, filtered: what `pitstop export outcomes --since
--route-group` and `pitstop eval router-logs` run against the database.

A synthetic log (`--rows` requests over ten route groups, one second apart, each with a request-level
feedback row, and every tenth session with a session-level one) is written to a throwaway PostgreSQL
database and to a SQLite file. Each filter (none; the last 1% of time; one group, 10%; one group's
last 1% of time, 0.1%) is read with storage/export.py's query as it is (feedback averaged only for
the kept requests, a semi-join) and with the whole feedback table averaged first (the plan before),
side by side in one process, best of `--repeat`; both must return the same rows.

    .venv/bin/python -m bench.outcome_export     # ~1.5 min; bench/results/storage/export.json
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bench.bench_db import BenchDatabase, server_version
from bench.common import RESULTS, command, machine_info, write_report
from storage.db import create_engine
from storage.export import export_query
from storage.migrate import upgrade
from storage.models import Feedback, Outcome

OUT = RESULTS / "storage" / "export.json"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
GROUPS = 10
BATCH = 20_000


def seed(engine: Engine, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with engine.begin() as connection:
        for start in range(0, rows, BATCH):
            ids = range(start, min(rows, start + BATCH))
            connection.execute(sa.insert(Outcome.__table__), [
                {"request_id": f"r{i}", "created_at": T0 + timedelta(seconds=i), "route_group": f"g{i % GROUPS}",
                 "session_id": f"s{i // 4}", "model": "m", "status": "ok", "stream": False, "moved_instance": False,
                 "router_name": "pitstop", "prompt": f"question {i}"} for i in ids])
            feedback = [{"id": f"f{i}", "created_at": T0 + timedelta(seconds=i + 5), "request_id": f"r{i}",
                         "session_id": f"s{i // 4}", "metric": "thumbs", "value": rng.random()} for i in ids]
            feedback += [{"id": f"s{i}", "created_at": T0 + timedelta(seconds=i + 9), "request_id": None,
                          "session_id": f"s{i // 4}", "metric": "task", "value": rng.random()}
                         for i in ids if i % 40 == 3]
            connection.execute(sa.insert(Feedback.__table__), feedback)
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("ANALYZE"))


def read(engine: Engine, narrow: bool, **filters: Any) -> tuple[float, list[tuple]]:
    started = time.perf_counter()
    with engine.connect() as connection:
        rows = [tuple(r) for r in connection.execute(export_query(**filters, narrow_feedback=narrow))]
    return time.perf_counter() - started, rows


def measure(engine: Engine, rows: int, repeat: int) -> list[dict[str, Any]]:
    late = T0 + timedelta(seconds=rows - rows // 100)
    cases = {"none": {}, "last 1% of time": {"since": late}, "one group (10%)": {"route_group": "g3"},
             "one group, last 1% of time (0.1%)": {"route_group": "g3", "since": late}}
    out = []
    for label, filters in cases.items():
        timings: dict[bool, list[float]] = {True: [], False: []}
        results: dict[bool, list[tuple]] = {}
        for _ in range(repeat):
            for narrow in (True, False):  # interleaved, so drift on a shared machine hits both
                seconds, results[narrow] = read(engine, narrow, **filters)
                timings[narrow].append(seconds)
        assert results[True] == results[False], f"{label}: the two plans disagree"
        best = {narrow: min(t) for narrow, t in timings.items()}
        out.append({"filter": label, "rows": len(results[True]),
                    "with_feedback": sum(r[-2] is not None for r in results[True]),
                    "narrowed_s": best[True], "whole_feedback_s": best[False],
                    "speedup": best[False] / best[True]})
        print(f"{engine.dialect.name:10s} {label:36s} {len(results[True]):7d} rows: narrowed {best[True]:.3f} s, "
              f"whole feedback table {best[False]:.3f} s ({best[False] / best[True]:.1f}x)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    report: dict[str, Any] = {"command": command("bench.outcome_export"), "machine": machine_info(),
                              "rows": args.rows, "postgresql": server_version(), "results": {}}
    database = BenchDatabase.create()
    try:
        with tempfile.TemporaryDirectory() as folder:
            for name, url in (("postgresql", database.sqlalchemy_url), ("sqlite", f"sqlite:///{folder}/bench.db")):
                upgrade(url)
                engine = create_engine(url)
                started = time.perf_counter()
                seed(engine, args.rows)
                print(f"{name}: seeded {args.rows} requests in {time.perf_counter() - started:.0f} s", flush=True)
                report["results"][name] = measure(engine, args.rows, args.repeat)
                engine.dispose()
    finally:
        database.drop()
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
