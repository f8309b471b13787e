"""Vector stores' API shapes: the objects `/v1/vector_stores` answers (a store, a file in it, a file
batch) and the checks on what requests send (names, expiry, attributes, queries), each a 400 naming the
field."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.server.errors import bad_request
from gateway.metadata import MAX_METADATA_KEY, MAX_METADATA_PAIRS, MAX_METADATA_VALUE
from gateway.passages import Chunking
from storage.vector_stores import FILE_STATUSES

MAX_EXPIRY_DAYS = 365


def _seconds(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp())


def _expires_at(row: Mapping[str, Any]) -> datetime | None:
    days = row.get("expires_after_days")
    return None if days is None else row["last_active_at"] + timedelta(days=days)


def expired(row: Mapping[str, Any], now: datetime | None = None) -> bool:
    expires_at = _expires_at(row)
    return expires_at is not None and expires_at <= (now or datetime.now(UTC))


def store_object(row: Mapping[str, Any], counts: Mapping[str, int]) -> dict:
    """The VectorStore object the API answers."""
    file_counts = {status: counts.get(status, 0) for status in FILE_STATUSES}
    status = "expired" if expired(row) else "in_progress" if file_counts["in_progress"] else "completed"
    days = row.get("expires_after_days")
    return {"id": row["id"], "object": "vector_store", "created_at": _seconds(row["created_at"]),
            "name": row.get("name") or "", "usage_bytes": counts.get("usage_bytes", 0),
            "file_counts": {**file_counts, "total": sum(file_counts.values())}, "status": status,
            "expires_after": None if days is None else {"anchor": "last_active_at", "days": days},
            "expires_at": _seconds(_expires_at(row)), "last_active_at": _seconds(row["last_active_at"]),
            "metadata": row.get("metadata") or {}}


def file_object(row: Mapping[str, Any]) -> dict:
    """The VectorStoreFile object the API answers (its id is the file's)."""
    return {"id": row["file_id"], "object": "vector_store.file", "usage_bytes": row.get("usage_bytes") or 0,
            "created_at": _seconds(row["created_at"]), "vector_store_id": row["vector_store_id"],
            "status": row["status"], "last_error": row.get("last_error"),
            "chunking_strategy": Chunking(**row["chunking"]).public(), "attributes": row.get("attributes") or {}}


def batch_object(store_id: str, batch_id: str, created_at: datetime | None, counts: Mapping[str, int]) -> dict:
    """A file batch's status is its files': in progress while any is, cancelled if any was, else completed."""
    file_counts = {status: counts.get(status, 0) for status in FILE_STATUSES}
    status = "in_progress" if file_counts["in_progress"] else "cancelled" if file_counts["cancelled"] else \
        "failed" if file_counts["failed"] and not file_counts["completed"] else "completed"
    return {"id": batch_id, "object": "vector_store.files_batch", "created_at": _seconds(created_at),
            "vector_store_id": store_id, "status": status,
            "file_counts": {**file_counts, "total": sum(file_counts.values())}}


def attributes_of(value: Any, param: str = "attributes") -> dict[str, Any]:
    """A file's attributes: up to 16 keys of at most 64 characters, each a string (up to 512), a number
    or a boolean."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_METADATA_PAIRS or not all(
            isinstance(k, str) and len(k) <= MAX_METADATA_KEY and (
                isinstance(v, bool | int | float) or isinstance(v, str) and len(v) <= MAX_METADATA_VALUE)
            for k, v in value.items()):
        raise bad_request(f"'{param}' must be at most {MAX_METADATA_PAIRS} keys (up to {MAX_METADATA_KEY} "
                          f"characters), each a string (up to {MAX_METADATA_VALUE}), a number or a boolean", param,
                          "invalid_value")
    return value


def expiry_days_of(value: Any) -> int | None:
    if value is None:
        return None
    days = value.get("days") if isinstance(value, dict) else None
    if not isinstance(value, dict) or value.get("anchor") != "last_active_at" or type(days) is not int \
            or not 1 <= days <= MAX_EXPIRY_DAYS:
        raise bad_request(f"'expires_after' must be {{\"anchor\": \"last_active_at\", \"days\": 1 to "
                          f"{MAX_EXPIRY_DAYS}}}", "expires_after", "invalid_value")
    return days


def name_of(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise bad_request("'name' must be a string", "name", "invalid_type")
    return value


def queries_of(value: Any) -> list[str]:
    queries = [value] if isinstance(value, str) else value
    if not isinstance(queries, list) or not queries or not all(isinstance(q, str) and q.strip() for q in queries):
        raise bad_request("'query' must be a non-empty string or a list of them", "query", "invalid_value")
    return queries




def page_of(data: list[dict], more: bool) -> dict:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": more}
