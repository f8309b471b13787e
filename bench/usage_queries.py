"""What reading usage costs, and what keeping it costs the outcome writer (storage/usage.py: `GET
/v1/organization/usage/*`, `/costs`, `pitstop report usage`).

Two outcome logs on a SQLite file and a throwaway PostgreSQL database, their usage rollups filled as the
writer fills them:

- busy: the Azure 2023 conversation trace (../shared/data/traces/azure2023: real arrival times and token
  counts, 19,366 requests in an hour, 5.4 a second) replayed hour after hour for `--busy-hours` hours;
- quiet: `--quiet-rows` requests spread evenly over 30 days (0.1 a second), token counts drawn likewise.

Requests are spread over 20 API keys and 8 models with skewed (1/rank) weights, 4 route groups; a tenth
are embeddings, one in 50 refused. Each query the endpoints make is timed `--repeat` times two ways, side
by side: on the rollup (what ships) and by scanning the rows of the range with the same GROUP BY (the
first version of this code, kept here as the reference, with an `(api_key_id, created_at)` index for a
key's own usage, added for this run):

- costs, daily buckets by line item over the whole log;
- completions, 24 hourly buckets of the last day by model and key;
- completions, 60 one-minute buckets of the last hour;
- one key's whole log: its embeddings, and its requests daily by model;
- `pitstop report usage --days 7` (the whole busy log).

Then the writer's side: `--batches` batches of 500 consecutive busy-trace requests inserted as the
outcome writer inserts them, with the rollup's upsert in the same transaction and without it (a fresh
table each, interleaved).

    .venv/bin/python -m bench.usage_queries     # ~8 min; bench/results/storage/usage_queries.json
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bench.bench_db import BenchDatabase, server_version
from bench.common import DATA, RESULTS, command, machine_info, write_report
from storage.db import create_engine
from storage.inserts import idempotent_insert
from storage.migrate import upgrade
from storage.models import Outcome, UsageRollup
from storage.usage import EMBEDDING_ENDPOINTS, SUMS, TEXT_ENDPOINTS, UsageQuery, record_usage, usage

OUT = RESULTS / "storage" / "usage_queries.json"
TRACE = DATA / "traces" / "azure2023" / "AzureLLMInferenceTrace_conv.csv"
END = datetime(2026, 12, 1, tzinfo=UTC)
MODELS = [f"model-{i}" for i in range(8)]
KEYS = [f"key{i:02d}" for i in range(20)]
SEED_BATCH = 20_000
WRITE_BATCH = 500  # the outcome writer's batch_size


def load_trace() -> list[tuple[float, int, int]]:
    """(seconds from the trace's start, prompt tokens, output tokens) per request."""
    with TRACE.open() as f:
        rows = [(datetime.fromisoformat(r["TIMESTAMP"][:26]), int(r["ContextTokens"]), int(r["GeneratedTokens"]))
                for r in csv.DictReader(f)]
    first = rows[0][0]
    return [((at - first).total_seconds(), prompt, output) for at, prompt, output in rows]


def arrivals(kind: str, trace: list[tuple[float, int, int]], amount: int) -> list[tuple[float, int, int]]:
    """(seconds before END, prompt, output): the trace replayed `amount` hours, or `amount` requests evenly
    over 30 days with the trace's token counts."""
    if kind == "busy":
        span = 3_600.0
        return [(amount * span - (hour * span + at), prompt, output)
                for hour in range(amount) for at, prompt, output in trace if at < span]
    step = 30 * 86_400 / amount
    return [(30 * 86_400 - i * step, *trace[i % len(trace)][1:]) for i in range(amount)]


def outcome_rows(requests: list[tuple[float, int, int]], rng: random.Random, first: int = 0,
                 prefix: str = "r") -> list[dict[str, Any]]:
    key_weights = [1 / (rank + 1) for rank in range(len(KEYS))]
    model_weights = [1 / (rank + 1) for rank in range(len(MODELS))]
    out = []
    for n, (before_end, prompt, output) in enumerate(requests, start=first):
        embedding, refused = n % 10 == 0, n % 50 == 1
        cost = (prompt * 1e-7 + (0 if embedding else output) * 4e-7) * (0 if refused else 1)
        out.append({
            "request_id": f"{prefix}{n}", "created_at": END - timedelta(seconds=before_end),
            "model": rng.choices(MODELS, model_weights)[0], "api_key_id": rng.choices(KEYS, key_weights)[0],
            "route_group": f"g{n % 4}", "endpoint": "embedding" if embedding else "chat",
            "status": "error" if refused else "ok", "prompt_tokens": prompt,
            "completion_tokens": 0 if embedding else output, "cached_tokens": 0, "cost_usd": cost,
            "baseline_cost_usd": cost * 3, "cache_hit": n % 20 == 0, "stream": False, "moved_instance": False,
            "batch_id": None})
    return out


def seed(engine: Engine, requests: list[tuple[float, int, int]]) -> None:
    rng = random.Random(0)
    with engine.begin() as connection:
        for first in range(0, len(requests), SEED_BATCH):
            batch = outcome_rows(requests[first:first + SEED_BATCH], rng, first)
            connection.execute(sa.insert(Outcome.__table__), batch)
            record_usage(connection, batch)
        connection.execute(sa.text("CREATE INDEX ix_bench_api_key_id_created_at ON outcomes (api_key_id, created_at)"))
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("ANALYZE"))


def scanned(engine: Engine, query: UsageQuery) -> int:
    """The first version: the range's rows grouped in SQL. Returns the result lines."""
    outcomes = Outcome.__table__
    epoch = (sa.cast(sa.func.strftime("%s", outcomes.c.created_at), sa.Integer) if engine.dialect.name == "sqlite"
             else sa.cast(sa.func.floor(sa.func.extract("epoch", outcomes.c.created_at)), sa.BigInteger))
    bucket = ((epoch - query.first_bucket) // query.bucket_s).label("bucket")
    groups = [outcomes.c[name] for name in query.group_by]
    where = [outcomes.c.created_at >= datetime.fromtimestamp(query.counted_start, UTC),
             outcomes.c.created_at < datetime.fromtimestamp(query.counted_end, UTC),
             sa.or_(outcomes.c.status == "ok", outcomes.c.cost_usd > 0)]
    for name, values in (("endpoint", query.endpoints), ("model", query.models), ("api_key_id", query.api_key_ids)):
        if values is not None:
            where.append(outcomes.c[name].in_(values))
    sums = [sa.func.count(), sa.func.sum(outcomes.c.prompt_tokens), sa.func.sum(outcomes.c.completion_tokens),
            sa.func.sum(outcomes.c.cached_tokens), sa.func.sum(outcomes.c.cost_usd),
            sa.func.sum(outcomes.c.baseline_cost_usd), sa.func.sum(sa.case((outcomes.c.cache_hit.is_(True), 1),
                                                                           else_=0))]
    statement = sa.select(bucket, *groups, *sums).where(*where).group_by(bucket, *groups)
    with engine.connect() as connection:
        return len(connection.execute(statement).all())


def cases(days: float) -> dict[str, UsageQuery]:
    end = int(END.timestamp())
    start = end - int(days * 86_400)
    return {
        "costs: daily buckets by line item, the whole log": UsageQuery(start=start, end=end, bucket_s=86_400,
                                                                       group_by=("model",)),
        "completions: 24 hourly buckets by model and key": UsageQuery(
            start=end - 86_400, end=end, bucket_s=3_600, group_by=("model", "api_key_id"), endpoints=TEXT_ENDPOINTS),
        "completions: 60 one-minute buckets": UsageQuery(start=end - 3_600, end=end, bucket_s=60,
                                                         endpoints=TEXT_ENDPOINTS),
        "embeddings: one key's whole log": UsageQuery(start=start, end=end, bucket_s=86_400,
                                                      endpoints=EMBEDDING_ENDPOINTS, api_key_ids=(KEYS[3],)),
        "one key's whole log, daily by model": UsageQuery(start=start, end=end, bucket_s=86_400, group_by=("model",),
                                                          api_key_ids=(KEYS[3],)),
        "report usage --days 7": UsageQuery(start=end - 7 * 86_400, end=end, bucket_s=86_400,
                                            group_by=("route_group", "model", "api_key_id")),
    }


def timed(call: Any, repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def reads(engine: Engine, repeat: int, days: float) -> dict[str, Any]:
    out = {}
    for name, query in cases(days).items():
        rollup_ms, totals = timed(lambda q=query: usage(engine, q), repeat)
        scan_ms, lines = timed(lambda q=query: scanned(engine, q), repeat)
        assert len(totals) == lines, (name, len(totals), lines)  # the same lines either way
        out[name] = {"rollup_ms": rollup_ms, "scan_ms": scan_ms, "scan_over_rollup": scan_ms / rollup_ms,
                     "result_lines": lines}
    return out


def writes(engine: Engine, trace: list[tuple[float, int, int]], batches: int) -> dict[str, Any]:
    """Batches inserted as OutcomeWriter._insert_rows does, with and without the rollup, interleaved."""
    insert = idempotent_insert(Outcome.__table__, engine.dialect.name).returning(Outcome.request_id)
    rng = random.Random(1)
    ms: dict[str, list[float]] = {"with_rollup": [], "rows_only": []}
    for i in range(batches):
        for way in ("with_rollup", "rows_only") if i % 2 == 0 else ("rows_only", "with_rollup"):
            first = (i * WRITE_BATCH) % (len(trace) - WRITE_BATCH)
            batch = outcome_rows([(-1_000_000 + at, p, o) for at, p, o in trace[first:first + WRITE_BATCH]], rng,
                                 prefix=f"w{way}{i}-")
            started = time.perf_counter()
            with engine.begin() as connection:
                written = set(connection.execute(insert, batch).scalars())
                if way == "with_rollup":
                    record_usage(connection, (row for row in batch if row["request_id"] in written))
            ms[way].append((time.perf_counter() - started) * 1000)
    with_rollup, rows_only = statistics.median(ms["with_rollup"]), statistics.median(ms["rows_only"])
    return {"batch_rows": WRITE_BATCH, "batches": batches, "with_rollup_ms_median": with_rollup,
            "rows_only_ms_median": rows_only, "with_rollup_over_rows_only": with_rollup / rows_only}


def rollup_lines(engine: Engine) -> dict[str, int]:
    table = UsageRollup.__table__
    with engine.connect() as connection:
        return {f"width_{int(width)}s": int(count) for width, count in connection.execute(
            sa.select(table.c.width_s, sa.func.count()).group_by(table.c.width_s))}


def measure(url: str, requests: list[tuple[float, int, int]], days: float, repeat: int,
            trace: list[tuple[float, int, int]] | None, batches: int) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        upgrade(engine)
        started = time.perf_counter()
        seed(engine, requests)
        result: dict[str, Any] = {"rows": len(requests), "days": days, "seed_s": time.perf_counter() - started,
                                  "rollup_lines": rollup_lines(engine), "reads": reads(engine, repeat, days)}
        if trace is not None:
            result["writes"] = writes(engine, trace, batches)
        assert set(SUMS) <= set(UsageRollup.__table__.c.keys())
        return result
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy-hours", type=int, default=48)
    parser.add_argument("--quiet-rows", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not TRACE.is_file():
        sys.exit(f"{TRACE} is absent (../shared/data): this benchmark replays it")
    trace = load_trace()
    report: dict[str, Any] = {"command": command("bench.usage_queries"), "machine": machine_info(),
                              "trace": str(TRACE.relative_to(DATA)), "postgresql": server_version(), "results": {}}
    logs = {"busy": (arrivals("busy", trace, args.busy_hours), args.busy_hours / 24),
            "quiet": (arrivals("quiet", trace, args.quiet_rows), 30.0)}
    with tempfile.TemporaryDirectory() as folder:
        for backend in ("sqlite", "postgresql"):
            if backend == "postgresql" and server_version() is None:
                print("PostgreSQL is not reachable at 127.0.0.1:5432: its run is skipped", flush=True)
                continue
            for log_name, (requests, days) in logs.items():
                database = BenchDatabase.create() if backend == "postgresql" else None
                url = database.sqlalchemy_url if database else f"sqlite:///{folder}/usage-{log_name}.db"
                try:
                    result = measure(url, requests, days, args.repeat, trace if log_name == "busy" else None,
                                     args.batches)
                finally:
                    if database is not None:
                        database.drop()
                report["results"][f"{backend}/{log_name}"] = result
                print(f"{backend}, {log_name} log: {len(requests):,} rows over {days:g} days seeded in "
                      f"{result['seed_s']:.1f} s; rollup lines {result['rollup_lines']}", flush=True)
                for name, read in result["reads"].items():
                    print(f"  {name:50s} rollup {read['rollup_ms']:8.1f} ms, scanning the rows "
                          f"{read['scan_ms']:8.1f} ms ({read['scan_over_rollup']:.1f}x), {read['result_lines']} lines",
                          flush=True)
                if "writes" in result:
                    write = result["writes"]
                    print(f"  a batch of {WRITE_BATCH} rows: {write['with_rollup_ms_median']:.1f} ms with the rollup, "
                          f"{write['rows_only_ms_median']:.1f} ms without ({write['with_rollup_over_rows_only']:.2f}x)",
                          flush=True)
    write_report(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
