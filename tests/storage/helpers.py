"""Row factories and table readers shared by the storage tests."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from storage.db import create_engine
from storage.models import Outcome


def outcome_row(i: int, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "request_id": f"req-{i:06d}",
        "session_id": f"sess-{i % 7}",
        "turn": i % 5,
        "model": "small" if i % 2 else "large",
        "router_name": "mf",
        "router_version": "1",
        "router_scores": {"small": 0.3, "large": 0.8},
        "prompt_tokens": 100 + i,
        "completion_tokens": 10 + i % 50,
        "cost_usd": 0.001 * (i % 3),
        "latency_s": 0.5,
        "tool_calls": ["search"] if i % 4 == 0 else [],
        "prompt": [{"role": "user", "content": f"question {i}"}],
    }
    row.update(overrides)
    return row


def outcome_ids(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.scalars(sa.select(Outcome.request_id)))
    finally:
        engine.dispose()
