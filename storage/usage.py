"""Usage and spend in time buckets: what `GET /v1/organization/usage/*`, `GET /v1/organization/costs` and
`pitstop report usage` answer.

Read from `usage_rollup`, not from the outcome rows: the outcome writer adds each batch of rows it
inserts to the minute's and the hour's sums (`record_usage`, in the rows' own transaction, for the rows
really inserted, so a retried batch is not counted twice), as litellm keeps daily spend tables beside
its logs. A month then reads at most 720 hours of sums instead of every request of the month
(bench/usage_queries.py). A request counts when it was answered or charged (a stream cut after it
started); refusals before any model read it do not. `baseline_cost_usd` is what routing's requests
would have cost on their group's costliest model (gateway/outcomes.baseline_cost), so a team sees what
the router saved.

Buckets are aligned to multiples of their width in UTC, as OpenAI's are. The range is counted in whole
minutes for one-minute buckets and in whole hours otherwise, from the one holding its start."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from storage.models import UsageRollup

# The APIs whose requests are text generation: OpenAI's "completions" usage covers them all.
TEXT_ENDPOINTS = ("chat", "completion", "responses", "messages")
EMBEDDING_ENDPOINTS = ("embedding", "rerank")  # billed for their input alone: OpenAI's embeddings usage
MODERATION_ENDPOINTS = ("moderation",)  # OpenAI's moderations usage: input tokens and requests
# OpenAI's audio and image usage counts units, not tokens: a transcription's seconds, a speech's characters, the
# images generated (the row's extra.seconds, .characters, .images: gateway/media.py), summed as `units`.
MEDIA_UNITS = {"transcription": "seconds", "translation": "seconds", "speech": "characters", "image": "images",
               "image_edit": "images"}
TRANSCRIPTION_ENDPOINTS = ("transcription", "translation")
SPEECH_ENDPOINTS = ("speech",)
IMAGE_ENDPOINTS = ("image", "image_edit")
MINUTE, HOUR = 60, 3_600
ROLLUP_WIDTHS = (MINUTE, HOUR)
DIMENSIONS = ("model", "api_key_id", "team_id", "route_group", "endpoint", "batch")
SUMS = ("requests", "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "baseline_cost_usd", "cache_hits",
        "units")
_TABLE = UsageRollup.__table__


@dataclass(frozen=True)
class UsageQuery:
    start: int  # Unix seconds, inclusive
    end: int  # Unix seconds, exclusive
    bucket_s: int  # a multiple of a minute; of an hour from an hour up
    group_by: tuple[str, ...] = ()
    endpoints: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    api_key_ids: tuple[str, ...] | None = None
    team_ids: tuple[str, ...] | None = None
    batch: bool | None = None

    def __post_init__(self) -> None:
        assert self.bucket_s % self.width_s == 0 and self.end > self.start, (self.bucket_s, self.start, self.end)
        assert set(self.group_by) <= set(DIMENSIONS), self.group_by

    @property
    def width_s(self) -> int:
        """The rollup read: by minute for buckets under an hour, else by hour."""
        return MINUTE if self.bucket_s < HOUR else HOUR

    @property
    def counted_start(self) -> int:
        return self.start - self.start % self.width_s

    @property
    def counted_end(self) -> int:
        return -(-self.end // self.width_s) * self.width_s

    @property
    def first_bucket(self) -> int:
        """The aligned start of the bucket holding `start`."""
        return self.start - self.start % self.bucket_s

    def bucket_bounds(self, index: int) -> tuple[int, int]:
        """Bucket `index`'s [start, end) in Unix seconds: what it counts."""
        low = self.first_bucket + index * self.bucket_s
        return max(low, self.counted_start), min(low + self.bucket_s, self.counted_end)

    @property
    def buckets(self) -> int:
        return -(-(self.counted_end - self.first_bucket) // self.bucket_s)


@dataclass
class UsageTotals:
    bucket: int  # its index from the range's first bucket
    group: dict[str, Any] = field(default_factory=dict)
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    baseline_cost_usd: float = 0.0
    cache_hits: int = 0
    units: float = 0.0  # OpenAI's audio and image units (MEDIA_UNITS)

    @property
    def saved_usd(self) -> float:
        return self.baseline_cost_usd - self.cost_usd

    def add(self, other: UsageTotals | Mapping[str, Any]) -> None:
        for name in SUMS:
            value = getattr(other, name) if isinstance(other, UsageTotals) else other[name]
            setattr(self, name, getattr(self, name) + value)


def _counted(row: Mapping[str, Any]) -> bool:
    return row.get("status", "ok") == "ok" or (row.get("cost_usd") or 0.0) > 0


def _epoch(moment: datetime | str) -> int:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def deltas(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What `rows` (outcome rows as the writer inserts them) add to each rollup line, in key order."""
    lines: dict[tuple, UsageTotals] = {}
    for row in rows:
        if not _counted(row):
            continue
        epoch = _epoch(row["created_at"])
        dimensions = (row.get("model") or "", row.get("api_key_id") or "", row.get("team_id") or "",
                      row.get("route_group") or "", row.get("endpoint") or "", row.get("batch_id") is not None)
        cost = row.get("cost_usd") or 0.0
        baseline = row.get("baseline_cost_usd")
        sums = {"requests": 1, "input_tokens": row.get("prompt_tokens") or 0, "units": _units(row),
                "output_tokens": row.get("completion_tokens") or 0, "cached_tokens": row.get("cached_tokens") or 0,
                "cost_usd": cost, "baseline_cost_usd": cost if baseline is None else baseline,
                "cache_hits": int(bool(row.get("cache_hit")))}
        for width in ROLLUP_WIDTHS:
            lines.setdefault((width, epoch - epoch % width, *dimensions), UsageTotals(bucket=0)).add(sums)
    # Sorted: replicas' writers then lock shared lines in one order, and never deadlock on them.
    return [{"width_s": key[0], "bucket": key[1], **dict(zip(DIMENSIONS, key[2:], strict=True)),
             **{name: getattr(line, name) for name in SUMS}}
            for key, line in sorted(lines.items())]


def _units(row: Mapping[str, Any]) -> float:
    """An audio or image request's units (MEDIA_UNITS); 0 for any other."""
    unit = MEDIA_UNITS.get(row.get("endpoint") or "")
    value = (row.get("extra") or {}).get(unit) if unit is not None else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def record_usage(connection: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
    """Add `rows` to the rollup, in the caller's transaction."""
    lines = deltas(rows)
    if not lines:
        return
    dialect = {"postgresql": postgresql, "sqlite": sqlite}[connection.dialect.name]
    insert = dialect.insert(_TABLE)
    upsert = insert.on_conflict_do_update(index_elements=[c.name for c in _TABLE.primary_key.columns],
                                          set_={name: _TABLE.c[name] + insert.excluded[name] for name in SUMS})
    connection.execute(upsert, lines)


def usage(engine: Engine, query: UsageQuery) -> list[UsageTotals]:
    """The range's totals by bucket and by the query's groups, ordered by bucket; buckets without a
    counted request are absent."""
    table = _TABLE
    bucket = ((table.c.bucket - query.first_bucket) // query.bucket_s).label("bucket_index")
    groups = [table.c[name] for name in query.group_by]
    conditions = [table.c.width_s == query.width_s, table.c.bucket >= query.counted_start,
                  table.c.bucket < query.counted_end]
    for name, values in (("endpoint", query.endpoints), ("model", query.models), ("api_key_id", query.api_key_ids),
                         ("team_id", query.team_ids)):
        if values is not None:
            conditions.append(table.c[name].in_(values))
    if query.batch is not None:
        conditions.append(table.c.batch.is_(query.batch))
    statement = (select(bucket, *groups, *(func.sum(table.c[name]).label(name) for name in SUMS))
                 .where(and_(*conditions)).group_by(bucket, *groups).order_by(bucket, *groups))
    with engine.connect() as connection:
        rows = connection.execute(statement).mappings().all()
    out = []
    for row in rows:
        totals = UsageTotals(bucket=int(row["bucket_index"]),
                             group={name: _group_value(name, row[name]) for name in query.group_by})
        # PostgreSQL sums bigints as numeric: back to Python's int and float.
        totals.add({name: (float if name.endswith("_usd") or name == "units" else int)(row[name] or 0) for name in SUMS})
        out.append(totals)
    return out


def _group_value(name: str, value: Any) -> Any:
    if name == "batch":
        return bool(value)
    return value or None  # '' in the rollup: the request had none


def merged(totals: Iterable[UsageTotals], keep: tuple[str, ...] = ()) -> list[UsageTotals]:
    """`totals` summed over buckets and every group but `keep`: a report's whole-range lines."""
    lines: dict[tuple, UsageTotals] = {}
    for part in totals:
        group = {name: part.group.get(name) for name in keep}
        lines.setdefault(tuple(group.values()), UsageTotals(bucket=0, group=group)).add(part)
    return list(lines.values())
