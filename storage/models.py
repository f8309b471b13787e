"""SQLAlchemy 2 typed models: outcomes, feedback, API keys, stored Responses, conversations, files, batches
and webhooks. Portable across SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names keep Alembic migrations identical on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere; Python None is SQL NULL, not JSON null.
JSON_DOC = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware timestamps everywhere: stored as UTC, read back as UTC.

    SQLite keeps no offset, so naive values read from it are UTC by construction; naive values
    written by callers are taken to be UTC as well.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        str: String(),
        float: Float(),
        dict[str, Any]: JSON_DOC,
        dict[str, float]: JSON_DOC,
        list[str]: JSON_DOC,
        Any: JSON_DOC,
    }


class Outcome(Base):
    """One row per gateway request: what was asked, where it went, what it cost, how it ended."""

    __tablename__ = "outcomes"
    # A route group's latest requests: what its cost preference is calibrated on (storage/traffic.py).
    __table_args__ = (Index("ix_outcomes_route_group_created_at", "route_group", "created_at"),)

    request_id: Mapped[str] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now, index=True)
    # What was asked for: "chat", "completion", "embedding" or "responses" (served as a chat); null on rows
    # logged before it was kept, and on requests refused before their body was read. Training exports
    # leave embeddings out.
    endpoint: Mapped[str | None]
    api_key_id: Mapped[str | None]
    session_id: Mapped[str | None] = mapped_column(index=True)
    turn: Mapped[int | None]
    route_group: Mapped[str | None]
    requested_model: Mapped[str | None]
    model: Mapped[str | None] = mapped_column(index=True)
    deployment: Mapped[str | None]
    engine_instance: Mapped[str | None]
    moved_instance: Mapped[bool] = mapped_column(default=False)
    router_name: Mapped[str | None]
    router_version: Mapped[str | None]
    router_scores: Mapped[dict[str, float] | None]
    cost_preference: Mapped[float | None]
    propensity: Mapped[float | None]
    # The exploration it was routed under (routers/exploration.py): epsilon and the models it could draw.
    explore_epsilon: Mapped[float | None]
    explore_pool: Mapped[list[str] | None]
    # The router's choice, and what verifying its short answer did (routers/verify.py): `model` is what
    # served, which is the escalation model where verification escalated.
    routed_model: Mapped[str | None]
    verify_outcome: Mapped[str | None]
    # Served from the response cache (gateway/response_cache.py): no upstream call, no cost; training
    # exports leave such rows out (the same answer again, and free). Null on rows logged before it was kept.
    cache_hit: Mapped[bool | None]
    rank_score: Mapped[float | None]
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    cached_tokens: Mapped[int | None]
    ttft_s: Mapped[float | None]
    latency_s: Mapped[float | None]
    cost_usd: Mapped[float | None]
    # What it would have cost on its route group's costliest model (storage/usage.py: routing's savings).
    baseline_cost_usd: Mapped[float | None]
    batch_id: Mapped[str | None]  # the batch whose line it was (gateway/batches.py)
    finish_reason: Mapped[str | None]
    tool_calls: Mapped[list[str] | None]
    pin_ttl_s: Mapped[float | None]
    stream: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(default="ok")
    http_status: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    prompt: Mapped[Any | None]  # chat messages (list of dicts) or prompt text; stored only when configured
    completion: Mapped[str | None] = mapped_column(Text)
    extra: Mapped[dict[str, Any] | None]


class UsageRollup(Base):
    """Counted requests summed by minute and by hour (`width_s`) and by what usage is grouped by, kept in
    step with `outcomes` by its writer (storage/usage.py): usage over a month reads these, not the rows.
    Absent dimensions are '' (a primary key column cannot be NULL)."""

    __tablename__ = "usage_rollup"
    # An API key reading its own usage (the primary key serves everyone's, by width and time).
    __table_args__ = (Index("ix_usage_rollup_width_s_api_key_id_bucket", "width_s", "api_key_id", "bucket"),)

    width_s: Mapped[int] = mapped_column(primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # Unix seconds of its start
    model: Mapped[str] = mapped_column(primary_key=True)
    api_key_id: Mapped[str] = mapped_column(primary_key=True)
    route_group: Mapped[str] = mapped_column(primary_key=True)
    endpoint: Mapped[str] = mapped_column(primary_key=True)
    batch: Mapped[bool] = mapped_column(primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[float]
    baseline_cost_usd: Mapped[float]
    cache_hits: Mapped[int] = mapped_column(BigInteger)


class Feedback(Base):
    """A quality signal for one request or a whole session (e.g. thumbs up, task success, judge score)."""

    __tablename__ = "feedback"

    # Client-generated id, so a retried batch of feedback rows cannot insert duplicates.
    id: Mapped[str] = mapped_column(primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(default=utc_now, index=True)
    request_id: Mapped[str | None] = mapped_column(index=True)
    session_id: Mapped[str | None] = mapped_column(index=True)
    # The key that sent it: a session's feedback counts for that key's requests only (sessions are
    # per key, agent_sessions/identity.py); None for the master key or when keys are not required.
    api_key_id: Mapped[str | None]
    metric: Mapped[str]
    value: Mapped[float]
    extra: Mapped[dict[str, Any] | None]


class ApiKey(Base):
    """A gateway API key; only the sha256 of the secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str]
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    revoked_at: Mapped[datetime | None]
    rpm_limit: Mapped[int | None]
    tpm_limit: Mapped[int | None]  # tokens (prompt + completion) a minute
    budget_usd: Mapped[float | None]
    spent_usd: Mapped[float] = mapped_column(default=0.0, server_default="0")
    # What the key may ask for (null: anything): model names and route groups it may send as `model`,
    # and its priority, both the default and the most urgent its requests may ask (lower goes first).
    models: Mapped[list[str] | None]
    priority: Mapped[float | None]
    # A budget over a UTC "day", "week" or "month" (null: over the key's life), and what was spent in the
    # period that started at `period_start` (Unix seconds), the last one the key spent in.
    budget_period: Mapped[str | None]
    period_start: Mapped[int | None] = mapped_column(BigInteger)
    period_spent_usd: Mapped[float] = mapped_column(default=0.0, server_default="0")

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class StoredResponse(Base):
    """A Responses API answer kept for `previous_response_id`, retrieval and `input_items`. A chain is
    read in two queries: the response, then its ancestors by id."""

    __tablename__ = "responses"

    id: Mapped[str] = mapped_column(primary_key=True)  # resp_...
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    # Whose it is: only the same key reads, continues or deletes it (None: the master key, or no keys).
    api_key_id: Mapped[str | None]
    previous_response_id: Mapped[str | None]
    ancestors: Mapped[list[str]]  # the chain before it, oldest first (its previous response last)
    session_id: Mapped[str | None]  # the session its turns run under (agent_sessions/)
    input_items: Mapped[Any]  # its own input, as Responses items with ids (not the instructions)
    response: Mapped[Any]  # the Response object as the client got it
    # A background response's (gateway/background.py): its status (None for any other), and while it is
    # queued or in progress, the lease the replica running it renews.
    status: Mapped[str | None]
    lease_until: Mapped[datetime | None] = mapped_column(index=True)  # replicas look for lapsed ones
    lease_token: Mapped[str | None]  # whose lease it is: a replica whose run was taken over writes no more
    # The request as sent, so that another replica runs it again once the lease of the one running it
    # lapsed; and how many times one did (a request that brings its replicas down is not run forever).
    request: Mapped[Any | None]
    takeovers: Mapped[int] = mapped_column(default=0, server_default="0")



class Conversation(Base):
    """A Conversations API conversation: its items are rows of `conversation_items`. Kept until deleted
    (as at OpenAI, no retention applies)."""

    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(primary_key=True)  # conv_...
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    api_key_id: Mapped[str | None]  # whose it is, as for stored responses
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")  # `metadata` is the declarative base's
    # While a Responses turn runs in it: the turn's lease (gateway/conversation_lease.py), renewed as it
    # runs, so a replica that dies mid-turn holds the conversation no longer than one lease.
    lock_token: Mapped[str | None]
    locked_until: Mapped[datetime | None]


class ConversationItem(Base):
    """One item of a conversation, in the order `seq` gives. Keyed by (conversation, item id), so a write
    retried after an outage lands once; `seq` is the writing replica's clock in microseconds x 1000 plus
    the item's place in its batch, so items keep their order whichever write lands first."""

    __tablename__ = "conversation_items"
    __table_args__ = (Index("ix_conversation_items_conversation_id_seq", "conversation_id", "seq"),)

    conversation_id: Mapped[str] = mapped_column(primary_key=True)
    id: Mapped[str] = mapped_column(primary_key=True)  # msg_..., fc_..., fco_...
    seq: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    item: Mapped[Any]  # the Responses item, as stored input (a message's content may be a string)


class StoredFile(Base):
    """An uploaded file (`/v1/files`), a batch's input or output: its content in the row, so every replica
    serves it. Kept until deleted, or until it expires."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_api_key_id_created_at", "api_key_id", "created_at"),)

    id: Mapped[str] = mapped_column(primary_key=True)  # file-...
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    api_key_id: Mapped[str | None]  # whose it is (None: the master key, or no keys)
    filename: Mapped[str]
    purpose: Mapped[str]
    bytes: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[datetime | None] = mapped_column(index=True)  # None: kept until deleted


class Batch(Base):
    """A Batch API batch (gateway/batches.py): the Batch object as the API answers it, its status, and
    while it runs the lease the replica running it renews."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_api_key_id_created_at", "api_key_id", "created_at"),)

    id: Mapped[str] = mapped_column(primary_key=True)  # batch_...
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    api_key_id: Mapped[str | None]
    status: Mapped[str]
    lease_until: Mapped[datetime | None]
    batch: Mapped[Any]  # the Batch object


class BatchRecord(Base):
    """One finished line of a batch: its output (or error) record, written as the batch runs, so a replica
    that takes over a batch whose replica stopped serves only the lines not yet finished."""

    __tablename__ = "batch_records"

    batch_id: Mapped[str] = mapped_column(primary_key=True)
    custom_id: Mapped[str] = mapped_column(primary_key=True)
    failed: Mapped[bool]
    record: Mapped[Any]  # the output file's line, as JSON


class WebhookEndpoint(Base):
    """Where events are POSTed (`/v1/webhook_endpoints`, gateway/webhook_endpoints.py), signed with its
    secret; after a rotation that keeps the old secret, with that one too until `previous_secret_until`.
    The secrets are kept as they are: signing needs them."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(primary_key=True)  # we_...
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now)
    name: Mapped[str]
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]]
    secret: Mapped[str]
    previous_secret: Mapped[str | None]
    previous_secret_until: Mapped[datetime | None]


class WebhookDelivery(Base):
    """One event on its way to one endpoint (an outbox row): written in the transaction of the change the
    event tells of, so an event is never lost nor told of a change that did not happen. Any replica sends
    it, holding it (`claimed_until`) while it does; one that fails is tried again from `next_attempt_at`."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(primary_key=True)  # wh_...: the `webhook-id` header, the same on retries
    endpoint_id: Mapped[str | None] = mapped_column(index=True)  # a /v1/webhook_endpoints one, signed; or
    url: Mapped[str | None] = mapped_column(Text)  # a URL of the config's (`alerts.webhook_url`): `data` as is
    event_id: Mapped[str]  # evt_...: the event's, the same for every endpoint it goes to
    event_type: Mapped[str]
    object_id: Mapped[str]  # what the event is about (resp_..., batch_...)
    event_created_at: Mapped[int] = mapped_column(BigInteger)  # Unix seconds of the change
    data: Mapped[Any | None]  # the event's `data` where it is more than `{"id": object_id}`
    status: Mapped[str]  # pending, delivered, failed (given up)
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    next_attempt_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]
    claim_token: Mapped[str | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None] = mapped_column(index=True)  # delivered or given up


class StoredChatCompletion(Base):
    """A chat completion asked to be stored (`store: true`, gateway/stored_completions.py): the answer, the
    messages that asked for it, and the request's settings, for distillation and evaluations."""

    __tablename__ = "chat_completions"
    __table_args__ = (Index("ix_chat_completions_api_key_id_created_at", "api_key_id", "created_at"),)

    id: Mapped[str] = mapped_column(primary_key=True)  # chatcmpl-...
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    api_key_id: Mapped[str | None]  # whose it is (None: the master key, or no keys)
    request_id: Mapped[str]  # the gateway's, as in the outcome row
    model: Mapped[str]  # the model that answered
    request_model: Mapped[str]  # what the request named (a route group, say)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")
    messages: Mapped[Any]  # the request's messages
    settings: Mapped[Any]  # the request's other fields (temperature, tools, ...), as sent
    completion: Mapped[Any]  # the ChatCompletion as the client got it


class VectorStore(Base):
    """A vector store (`/v1/vector_stores`, gateway/vector_stores.py): the files searched together, owned
    by the API key that made it. `version` moves whenever its chunks change, so a replica's search index
    of it knows when to reload."""

    __tablename__ = "vector_stores"
    __table_args__ = (Index("ix_vector_stores_api_key_id_created_at", "api_key_id", "created_at"),)

    id: Mapped[str] = mapped_column(primary_key=True)  # vs_...
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    api_key_id: Mapped[str | None]  # whose it is (None: the master key, or no keys)
    name: Mapped[str | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")
    expires_after_days: Mapped[int | None]  # after its last activity (OpenAI's `expires_after`)
    last_active_at: Mapped[datetime] = mapped_column(default=utc_now)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    embedding_model: Mapped[str | None]  # what embeds its chunks and queries (None: the built-in encoder)


class VectorStoreFile(Base):
    """A file in a vector store: its ingestion's status (the replica chunking and embedding it holds a
    lease, so another one takes over if it stops), its attributes for search filters."""

    __tablename__ = "vector_store_files"

    vector_store_id: Mapped[str] = mapped_column(primary_key=True)
    file_id: Mapped[str] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    status: Mapped[str] = mapped_column(index=True)  # in_progress, completed, failed, cancelled
    last_error: Mapped[dict[str, Any] | None]
    attributes: Mapped[dict[str, Any]]
    chunking: Mapped[dict[str, Any]]  # {"max_chunk_size_tokens", "chunk_overlap_tokens"}
    usage_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    batch_id: Mapped[str | None]  # the file batch that added it
    lease_until: Mapped[datetime | None]


class VectorStoreChunk(Base):
    """One chunk of a file in a vector store: its text and its embedding (float32 bytes)."""

    __tablename__ = "vector_store_chunks"

    vector_store_id: Mapped[str] = mapped_column(primary_key=True)
    file_id: Mapped[str] = mapped_column(primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)  # the chunk's place in its file
    text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
