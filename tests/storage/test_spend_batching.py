"""Keys' and teams' spend added by the outcome writer, with the rows' batch (storage/spend.py): one UPDATE per
key and team a batch charges, in the rows' transaction, for the rows really inserted (a batch written again
after a lost commit, or a spooled chunk replayed, adds nothing), in the budget period each row names; two
writers on one database add up; a deleted team or a row the database refuses fails nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from storage.db import create_engine
from storage.keys import KeyStore
from storage.models import ApiKey, Team
from storage.outcome_writer import OutcomeWriter
from storage.rows import RowShape
from storage.teams import TeamStore

from .helpers import outcome_row

FRIDAY, SATURDAY = 1_796_342_400, 1_796_428_800  # two days' starts (UTC), as budget periods name them


def charged_row(i: int, key_id: str, team_id: str | None, cost: float, **more: Any) -> dict[str, Any]:
    return outcome_row(i, api_key_id=key_id, team_id=team_id, cost_usd=cost, **more)


@contextmanager
def writer_on(url: str, **options: Any) -> Iterator[OutcomeWriter]:
    """A writer that writes only when flushed (a long interval, a large batch): one batch a flush."""
    writer = OutcomeWriter(url, batch_size=1_000, flush_interval_s=60, **options)
    try:
        yield writer
    finally:
        writer.close()


@contextmanager
def spend_updates(writer: OutcomeWriter) -> Iterator[list[str]]:
    """The UPDATE statements the writer's engine sends to api_keys and teams."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            seen.append(statement.split()[1])

    event.listen(writer._engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(writer._engine, "before_cursor_execute", note)


def spend_of(url: str, table: type[ApiKey] | type[Team], row_id: str) -> tuple[float, int | None, float]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(sa.select(table.spent_usd, table.period_start, table.period_spent_usd)
                                     .where(table.id == row_id)).one()
    finally:
        engine.dispose()
    return row[0], row[1], row[2]


@pytest.fixture
def key_in_team(db_url: str) -> tuple[str, str]:
    team = TeamStore(db_url).create("platform")
    key_id, _ = KeyStore(db_url).create("app", team_id=team.id)
    return key_id, team.id


def test_a_batch_adds_its_costs_with_one_update_per_key_and_team(db_url: str, key_in_team: tuple[str, str]) -> None:
    key_id, team_id = key_in_team
    other_id, _ = KeyStore(db_url).create("alone")
    rows = [charged_row(i, key_id, team_id, 0.001 * (i % 7), key_period_start=FRIDAY, team_period_start=FRIDAY)
            for i in range(200)] + [charged_row(1_000 + i, other_id, None, 0.002) for i in range(5)]
    with writer_on(db_url) as writer, spend_updates(writer) as updates:
        for row in rows:
            writer.submit(row)
        assert writer.flush(timeout=20)
    assert sorted(updates) == ["api_keys", "api_keys", "teams"]  # one batch: one UPDATE each, not one a row
    team_sum = sum(r["cost_usd"] for r in rows[:200])
    assert spend_of(db_url, ApiKey, key_id) == (pytest.approx(team_sum), FRIDAY, pytest.approx(team_sum))
    assert spend_of(db_url, Team, team_id) == (pytest.approx(team_sum), FRIDAY, pytest.approx(team_sum))
    assert spend_of(db_url, ApiKey, other_id) == (pytest.approx(0.01), None, 0.0)  # a lifetime budget's


def test_each_row_counts_in_the_budget_period_it_names(db_url: str, key_in_team: tuple[str, str]) -> None:
    """A request admitted on Friday and finished on Saturday names Friday: Saturday's total starts without it."""
    key_id, team_id = key_in_team
    with writer_on(db_url) as writer:
        writer.submit(charged_row(1, key_id, team_id, 0.5, key_period_start=FRIDAY, team_period_start=FRIDAY))
        assert writer.flush(timeout=20)
        writer.submit(charged_row(2, key_id, team_id, 0.25, key_period_start=SATURDAY, team_period_start=SATURDAY))
        writer.submit(charged_row(3, key_id, team_id, 0.125, key_period_start=FRIDAY, team_period_start=FRIDAY))
        assert writer.flush(timeout=20)
    for table, row_id in ((ApiKey, key_id), (Team, team_id)):
        assert spend_of(db_url, table, row_id) == (pytest.approx(0.875), SATURDAY, pytest.approx(0.25))


def test_a_batch_written_again_after_a_lost_commit_is_counted_once(
        db_url: str, key_in_team: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch commits, then the connection breaks before the writer hears so: it writes the batch again."""
    key_id, team_id = key_in_team
    writer = OutcomeWriter(db_url, batch_size=1_000, flush_interval_s=60, max_backoff_s=0.05)
    insert = writer._insert_rows
    attempts: list[int] = []

    def commit_then_lose_the_answer(rows: list[dict[str, Any]]) -> None:
        attempts.append(len(rows))
        insert(rows)
        if len(attempts) == 1:
            raise sa_exc.OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(writer, "_insert_rows", commit_then_lose_the_answer)
    rows = [charged_row(i, key_id, team_id, 0.01) for i in range(30)]
    try:
        for row in rows:
            writer.submit(row)
        assert writer.flush(timeout=20)
    finally:
        writer.close()
    assert attempts == [30, 30]
    assert spend_of(db_url, ApiKey, key_id)[0] == pytest.approx(0.3)
    assert spend_of(db_url, Team, team_id)[0] == pytest.approx(0.3)


def test_a_spooled_chunk_replayed_after_a_crash_is_counted_once(
        db_url: str, key_in_team: tuple[str, str], tmp_path: Path) -> None:
    """A process died after the chunk's commit, before the spool heard of it: the next one replays it."""
    key_id, team_id = key_in_team
    rows = [charged_row(i, key_id, team_id, 0.01, key_period_start=FRIDAY) for i in range(20)]
    with writer_on(db_url) as writer:
        for row in rows[:10]:
            writer.submit(row)
        assert writer.flush(timeout=20)
    spool = tmp_path / "outcomes.spool.jsonl"
    shape = RowShape(OutcomeWriter.table)  # type: ignore[arg-type]
    spool.write_text("".join(shape.to_json(shape.complete(row)) + "\n" for row in rows))  # 10 written, 10 not
    with writer_on(db_url, spool_path=spool) as writer:
        assert writer.flush(timeout=20)
        assert writer.stats().spool_pending == 0
    assert spend_of(db_url, ApiKey, key_id) == (pytest.approx(0.2), FRIDAY, pytest.approx(0.2))
    assert spend_of(db_url, Team, team_id)[0] == pytest.approx(0.2)


def test_two_writers_on_one_database_add_up(db_url: str, key_in_team: tuple[str, str]) -> None:
    """Two gateway replicas' writers charging one key and team at once: increments, never an overwrite. Each
    writes its own model's rows, so no usage sum's row lock puts one transaction behind the other."""
    key_id, team_id = key_in_team
    per_writer, cost = 300, 0.001

    def replica(name: str) -> None:
        with OutcomeWriter(db_url, batch_size=7, flush_interval_s=0.01) as writer:
            for i in range(per_writer):
                writer.submit(charged_row(i, key_id, team_id, cost, request_id=f"{name}-{i}", model=name,
                                          key_period_start=FRIDAY, team_period_start=FRIDAY))
            assert writer.flush(timeout=60)

    threads = [threading.Thread(target=replica, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = 2 * per_writer * cost
    assert spend_of(db_url, ApiKey, key_id) == (pytest.approx(total), FRIDAY, pytest.approx(total))
    assert spend_of(db_url, Team, team_id) == (pytest.approx(total), FRIDAY, pytest.approx(total))


def test_a_deleted_team_fails_no_batch(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Its key was revoked and the team deleted while the key's last request ran: the key keeps its spend."""
    teams, keys = TeamStore(db_url), KeyStore(db_url)
    team = teams.create("gone")
    key_id, _ = keys.create("app", team_id=team.id)
    keys.revoke(key_id)
    teams.delete(team.id)
    with writer_on(db_url) as writer, caplog.at_level("INFO", logger="storage.spend"):
        writer.submit(charged_row(1, key_id, team.id, 0.5))
        writer.submit(charged_row(2, key_id, team.id, 0.25))
        assert writer.flush(timeout=20)
        stats = writer.stats()
    assert (stats.written, stats.rejected, stats.retries) == (2, 0, 0)
    assert spend_of(db_url, ApiKey, key_id)[0] == pytest.approx(0.75)
    assert f"team {team.id} is gone" in caplog.text


def test_a_row_refused_for_good_still_charges_its_key(pg_migrated_url: str, tmp_path: Path) -> None:
    """PostgreSQL refuses a row (a token count past its integer column): the row goes to the dead letters,
    its cost to its key's and team's spend all the same (the limiter counted it; a restart must too)."""
    url = pg_migrated_url
    team = TeamStore(url).create("platform")
    key_id, _ = KeyStore(url).create("app", team_id=team.id)
    with writer_on(url, spool_path=tmp_path / "outcomes.spool.jsonl") as writer:
        writer.submit(charged_row(1, key_id, team.id, 0.5, prompt_tokens=2**40))
        writer.submit(charged_row(2, key_id, team.id, 0.25))
        assert writer.flush(timeout=20)
        assert (writer.stats().written, writer.stats().rejected) == (1, 1)
    assert spend_of(url, ApiKey, key_id)[0] == pytest.approx(0.75)
    assert spend_of(url, Team, team.id)[0] == pytest.approx(0.75)
