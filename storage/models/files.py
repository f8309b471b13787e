"""Files and what is made from them: batches with their output records, vector stores with their files
and chunks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, LargeBinary, Text
from sqlalchemy.orm import Mapped, mapped_column

from storage.models.base import Base, utc_now


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
