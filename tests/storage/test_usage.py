"""Usage from the outcome log on SQLite and PostgreSQL: rows summed into UTC-aligned buckets and groups,
against totals worked out by hand; filters; what counts as a request; rows from before the baseline."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from storage.db import create_engine
from storage.outcome_writer import OutcomeWriter
from storage.usage import UsageQuery, merged, usage

DAY = 86_400
# 2026-12-01 00:00 UTC: the buckets below are aligned to it.
MIDNIGHT = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


ROWS = [
    # request, seconds after MIDNIGHT, model, key, group, endpoint, prompt, completion, cached, cost, baseline,
    # status, cache hit, batch
    ("a", 3_600, "small", "k1", "auto", "chat", 100, 10, 0, 0.001, 0.010, "ok", False, None),
    ("b", 7_200, "large", "k1", "auto", "chat", 200, 20, 50, 0.020, 0.020, "ok", False, None),
    ("c", DAY + 60, "small", "k2", "auto", "responses", 300, 30, 0, 0.003, 0.030, "ok", False, "batch_1"),
    ("d", DAY + 120, "small", "k2", None, "chat", 0, 0, 0, 0.0, 0.0, "ok", True, None),  # a cache hit
    ("e", DAY + 180, "large", "k2", None, "chat", 0, 0, 0, 0.0, None, "error", False, None),  # refused: not counted
    ("f", DAY + 240, "large", "k1", None, "chat", 40, 4, 0, 0.004, None, "aborted", False, None),  # cut, charged
    ("g", DAY + 300, "embedder", "k1", None, "embedding", 500, 0, 0, 0.0005, 0.0005, "ok", False, None),
    ("h", 2 * DAY + 10, "small", "k1", "auto", "chat", 1, 1, 0, 0.5, 0.5, "ok", False, None),  # past the range
    ("i", -10, "small", "k1", "auto", "chat", 1, 1, 0, 0.5, 0.5, "ok", False, None),  # before it
]


@pytest.fixture
def engine(db_url: str):  # type: ignore[no-untyped-def]
    engine = create_engine(db_url)
    writer = OutcomeWriter(engine)  # the rollup is the writer's: rows reach it as the gateway's do
    for (request_id, offset, model, key, group, endpoint, prompt, completion, cached, cost, baseline, status,
         hit, batch) in ROWS:
        writer.submit(dict(request_id=request_id, created_at=at(MIDNIGHT + offset), model=model, api_key_id=key,
                           route_group=group, endpoint=endpoint, prompt_tokens=prompt, completion_tokens=completion,
                           cached_tokens=cached, cost_usd=cost, baseline_cost_usd=baseline, status=status,
                           cache_hit=hit, batch_id=batch))
    assert writer.flush(timeout=20)
    writer.close()
    yield engine
    engine.dispose()


def two_days(**kwargs: object) -> UsageQuery:
    return UsageQuery(start=MIDNIGHT, end=MIDNIGHT + 2 * DAY, bucket_s=DAY, **kwargs)  # type: ignore[arg-type]


def test_daily_buckets_by_model(engine) -> None:  # type: ignore[no-untyped-def]
    totals = usage(engine, two_days(group_by=("model",), endpoints=("chat", "completion", "responses", "messages")))
    table = {(t.bucket, t.group["model"]): t for t in totals}
    assert sorted(table) == [(0, "large"), (0, "small"), (1, "large"), (1, "small")]
    assert (table[0, "small"].requests, table[0, "small"].input_tokens, table[0, "small"].output_tokens) == (1, 100, 10)
    assert (table[0, "large"].cached_tokens, table[0, "large"].cost_usd) == (50, pytest.approx(0.020))
    # Day 2, small: the batch's responses request and the cache hit; large: only the charged cut ("e" was refused).
    assert (table[1, "small"].requests, table[1, "small"].cache_hits, table[1, "small"].input_tokens) == (2, 1, 300)
    assert (table[1, "large"].requests, table[1, "large"].cost_usd) == (1, pytest.approx(0.004))
    # A row without a baseline (before migration 0016) counts at its own cost.
    assert table[1, "large"].baseline_cost_usd == pytest.approx(0.004)
    assert table[0, "small"].saved_usd == pytest.approx(0.009)


def test_filters_and_whole_range_lines(engine) -> None:  # type: ignore[no-untyped-def]
    mine = usage(engine, two_days(api_key_ids=("k2",)))
    assert [(t.bucket, t.requests) for t in mine] == [(1, 2)]
    batch = usage(engine, two_days(batch=True, group_by=("batch",)))
    assert [(t.group, t.input_tokens) for t in batch] == [({"batch": True}, 300)]
    not_batch = usage(engine, two_days(batch=False, group_by=("batch",)))
    assert {t.group["batch"] for t in not_batch} == {False}
    embeddings = usage(engine, two_days(endpoints=("embedding",), models=("embedder",)))
    assert [(t.requests, t.input_tokens) for t in embeddings] == [(1, 500)]
    by_group = {line.group["route_group"]: line for line in merged(usage(engine, two_days(
        group_by=("route_group", "model"))), keep=("route_group",))}
    assert by_group["auto"].requests == 3
    assert by_group["auto"].cost_usd == pytest.approx(0.024)
    assert by_group["auto"].baseline_cost_usd == pytest.approx(0.060)
    assert by_group[None].requests == 3  # the hit, the cut and the embedding


def test_ranges_are_counted_in_whole_minutes_or_hours(engine) -> None:  # type: ignore[no-untyped-def]
    hourly = UsageQuery(start=MIDNIGHT + 1_800, end=MIDNIGHT + 3 * 3_600 + 5, bucket_s=3_600)
    assert hourly.buckets == 4
    assert hourly.bucket_bounds(0) == (MIDNIGHT, MIDNIGHT + 3_600)
    assert hourly.bucket_bounds(3) == (MIDNIGHT + 3 * 3_600, MIDNIGHT + 4 * 3_600)
    assert [(t.bucket, t.requests) for t in usage(engine, hourly)] == [(1, 1), (2, 1)]
    # From 30 s into the minute of request "a": that minute counts whole.
    minutes = UsageQuery(start=MIDNIGHT + 3_630, end=MIDNIGHT + 3_720, bucket_s=60)
    assert (minutes.buckets, minutes.bucket_bounds(0)) == (2, (MIDNIGHT + 3_600, MIDNIGHT + 3_660))
    assert [(t.bucket, t.input_tokens) for t in usage(engine, minutes)] == [(0, 100)]
    assert usage(engine, UsageQuery(start=MIDNIGHT + 3 * DAY, end=MIDNIGHT + 4 * DAY, bucket_s=60)) == []


def test_a_batch_written_again_is_counted_once(engine) -> None:  # type: ignore[no-untyped-def]
    """A batch whose commit was lost to its writer is written again: its rows are skipped, and so are its sums."""
    again = OutcomeWriter(engine)
    again.submit(dict(request_id="a", created_at=at(MIDNIGHT + 3_600), model="small", status="ok", cost_usd=9.0))
    again.submit(dict(request_id="new", created_at=at(MIDNIGHT + 3_601), model="small", status="ok", cost_usd=1.0))
    assert again.flush(timeout=20)
    again.close()
    [first_hour] = usage(engine, UsageQuery(start=MIDNIGHT + 3_600, end=MIDNIGHT + 7_200, bucket_s=3_600))
    assert (first_hour.requests, first_hour.cost_usd) == (2, pytest.approx(1.001))


def test_the_migration_sums_the_rows_logged_before_it(db_url: str) -> None:
    """A log from before the rollup (written straight into `outcomes` at revision 0015) is summed by 0016."""
    import sqlalchemy as sa
    from alembic import command

    from storage.migrate import alembic_config, upgrade
    from storage.models import Outcome

    command.downgrade(alembic_config(db_url), "0015")
    engine = create_engine(db_url)
    with engine.begin() as connection:
        columns = [c for c in Outcome.__table__.columns if c.name not in ("baseline_cost_usd", "batch_id")]
        connection.execute(sa.insert(sa.table("outcomes", *(sa.column(c.name) for c in columns))), [
            {"request_id": request_id, "created_at": at(MIDNIGHT + offset).replace(tzinfo=None)
             if engine.dialect.name == "sqlite" else at(MIDNIGHT + offset), "model": model, "status": status,
             "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": cost, "cache_hit": hit,
             "stream": False, "moved_instance": False}
            for request_id, offset, model, status, cost, hit in (
                ("old1", 60, "small", "ok", 0.5, False), ("old2", 90, "small", "ok", 0.0, True),
                ("old3", 3_700, "large", "error", 0.0, False), ("old4", 3_800, "large", "aborted", 0.25, False))])
    upgrade(engine)
    table = {(t.bucket, t.group["model"]): t for t in usage(engine, UsageQuery(
        start=MIDNIGHT, end=MIDNIGHT + 7_200, bucket_s=3_600, group_by=("model",)))}
    assert sorted(table) == [(0, "small"), (1, "large")]
    small, large = table[0, "small"], table[1, "large"]
    assert (small.requests, small.cache_hits, small.input_tokens, small.cost_usd) == (2, 1, 20, pytest.approx(0.5))
    assert (large.requests, large.cost_usd, large.baseline_cost_usd) == (1, pytest.approx(0.25), pytest.approx(0.25))
    by_minute = usage(engine, UsageQuery(start=MIDNIGHT, end=MIDNIGHT + 120, bucket_s=60))
    assert [(t.bucket, t.requests) for t in by_minute] == [(1, 2)]
    engine.dispose()
