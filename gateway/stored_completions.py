"""Stored chat completions, as OpenAI stores them: a chat request with `store: true` (and `metadata` to
find it by) is kept, whole answer and messages, streamed or not, for `stored_completions.retention_days`
(30), and read back with the openai SDK: `client.chat.completions.list(model=..., metadata={...})`,
`.retrieve(id)`, `.messages.list(id)`, `.update(id, metadata=...)`, `.delete(id)`. A distillation or
evaluation job pulls a key's traffic the way it would pull it from OpenAI. Only the key that made one
reads it (without keys, anyone).

`store` is answered here, not forwarded: the upstream that served the chat keeps nothing it was not asked
to. The answer is stored before it goes out (a stream's, before its [DONE]), so a client can read it back
at once; while the database is away it goes to a writer that keeps it until the database takes it (and
the request is served regardless)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine.server.errors import not_found
from gateway.db_calls import db_call_or_503
from gateway.outcomes import OutcomeDraft, storable
from gateway.periodic import Periodic
from gateway.section_config import StoredCompletionsConfig
from storage.chat_completions import ChatCompletionStore, StoredCompletionWriter
from storage.inserts import describe

log = logging.getLogger("pitstop.gateway")

WRITE_TIMEOUT_S = 2.0  # then the writer takes the row, and the answer goes out
SWEEP_INTERVAL_S = 3600.0
# A request's fields that are not its settings: what the row keeps elsewhere, or the transport's.
_NOT_SETTINGS = ("messages", "model", "metadata", "stream", "stream_options")
# What OpenAI shows of a stored completion's request, beside the answer.
_SHOWN_SETTINGS = ("tool_choice", "seed", "top_p", "temperature", "presence_penalty", "frequency_penalty",
                   "tools", "response_format")


class StoredCompletions:
    def __init__(self, config: StoredCompletionsConfig, store: ChatCompletionStore,
                 writer: StoredCompletionWriter) -> None:
        self.config, self.store, self.writer = config, store, writer
        self._sweeper = Periodic(self._sweep, SWEEP_INTERVAL_S, "deleting expired stored chat completions")

    def wanted(self, draft: OutcomeDraft) -> bool:
        """A chat (not a dialect served as one) that asked to be stored, where storing is on."""
        return self.config.enabled and draft.request is not None and draft.request.store and draft.endpoint is None

    async def keep(self, draft: OutcomeDraft, completion: dict) -> None:
        """Store the answer `draft`'s request got (never in the request's way)."""
        if draft.usage_estimated:  # none the deployment could bill from: what is charged, as the client saw
            completion = {**completion, "usage": draft.estimated_usage()}
        try:
            row = self._row(draft, completion)
        except Exception:  # an answer of a shape not kept: served anyway
            log.exception("request %s: its answer could not be stored", draft.request_id)
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.put, row), WRITE_TIMEOUT_S)
        except Exception as exc:
            log.warning("storing chat completion %s: %s; it goes to the writer", row["id"], describe(exc))
            self.writer.submit(row)

    def _row(self, draft: OutcomeDraft, completion: dict) -> dict[str, Any]:
        assert draft.request is not None and draft.route is not None
        body = draft.request.body
        now = datetime.now(UTC)
        completion_id = completion.get("id") if isinstance(completion.get("id"), str) else None
        return self.store.complete({
            "id": completion_id or f"chatcmpl-{uuid.uuid4().hex}", "created_at": now,
            "expires_at": now + timedelta(days=self.config.retention_days),
            "api_key_id": draft.caller.key_id if draft.caller is not None else None,
            "request_id": draft.request_id, "model": completion.get("model") or draft.route.model_name,
            "request_model": draft.request.model, "metadata": body.get("metadata") or {},
            "messages": storable(body["messages"]),
            "settings": storable({k: v for k, v in body.items() if k not in _NOT_SETTINGS}),
            "completion": storable(completion)})

    async def find(self, completion_id: str, key_id: str | None) -> dict[str, Any]:
        """The stored row, or a 404 (also for another key's)."""
        row = await db_call(self.store.get, completion_id, datetime.now(UTC))
        if row is None or row["api_key_id"] != key_id:
            raise not_found(f"no stored chat completion {completion_id!r}", "completion_id")
        return row

    def start(self) -> None:
        self._sweeper.start()

    async def _sweep(self) -> None:
        if purged := await asyncio.to_thread(self.store.purge, datetime.now(UTC)):
            log.info("deleted %d expired stored chat completions", purged)

    async def close(self) -> None:
        await self._sweeper.close()
        self.writer.close(timeout=10)


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A stored completion as OpenAI shows one: the ChatCompletion, its metadata and request id, and what
    its request set."""
    settings = row["settings"]
    shown = {name: settings.get(name) for name in _SHOWN_SETTINGS}
    return {**row["completion"], "object": "chat.completion", "id": row["id"], "request_id": row["request_id"],
            "metadata": row["metadata"], "input_user": settings.get("user"), **shown}


def stored_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's messages as OpenAI lists them: each with an id (`<completion id>-<index>`), its text as
    `content`, and its parts (text and images) as `content_parts` where it came as parts."""
    listed = []
    for i, message in enumerate(row["messages"]):
        content = message.get("content")
        parts = content if isinstance(content, list) else None
        text = "".join(p.get("text", "") for p in parts if isinstance(p, dict)) if parts is not None else content
        listed.append({**message, "id": f"{row['id']}-{i}", "content": text, "content_parts": parts,
                       "name": message.get("name")})
    return listed


def fine_tuning_line(row: dict[str, Any]) -> dict[str, Any] | None:
    """A stored completion as a line of OpenAI's chat fine-tuning format: the request's messages and the
    answer's (first choice's) message, and its tools; None for one whose answer has no message."""
    choices = row["completion"].get("choices") or []
    message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        return None
    answer = {k: v for k, v in message.items() if k in ("content", "tool_calls", "refusal") and v is not None}
    line: dict[str, Any] = {"messages": [*row["messages"], {"role": "assistant", **answer}]}
    for name in ("tools", "parallel_tool_calls"):
        if row["settings"].get(name) is not None:
            line[name] = row["settings"][name]
    return line


def export_stored(url: str, out: Path, since: datetime | None = None, model: str | None = None,
                  metadata: dict[str, str] | None = None) -> int:
    """`pitstop export chat-completions`: the stored completions (every key's) as a fine-tuning JSONL file,
    oldest first; how many lines."""
    from storage.db import create_engine  # noqa: PLC0415  (the CLI's: the gateway has its engine)

    engine = create_engine(url)
    written = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with out.open("w") as sink:
            for row in ChatCompletionStore(engine).every(since, model, metadata):
                if (line := fine_tuning_line(row)) is not None:
                    sink.write(json.dumps(line, ensure_ascii=False) + "\n")
                    written += 1
    finally:
        engine.dispose()
    return written


db_call = db_call_or_503("stored chat completions", "stored_completions_unavailable")
