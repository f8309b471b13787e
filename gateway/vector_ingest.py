"""Vector store files' ingestion: a file's text chunked and embedded (gateway/passages.py) by a task of
the replica that added it, holding a lease it renews between batches of chunks, and marked `completed`
in the transaction that writes its chunks (storage/vector_stores.py). A replica that stops mid-file
lets its lease lapse (or go, at shutdown), and any replica takes the file over and starts it again. A
database outage leaves the file to that takeover; a file that is not text fails with the reason."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from engine.server.errors import APIError
from gateway.embedders import Embedder, EmbedderError
from gateway.files import Files
from gateway.passages import Chunking, PassageEncoder, decode_text
from gateway.periodic import Periodic
from storage.inserts import describe, is_transient
from storage.vector_stores import VectorStoreStore

LEASE_S = 60.0  # an ingestion's lease; renewed while it runs
ADOPT_S = 15.0  # how often a replica looks for ingestions whose replica stopped
ENCODE_BATCH = 16  # chunks embedded between lease renewals

log = logging.getLogger("pitstop.gateway")


@dataclass
class Ingestion:
    store: VectorStoreStore
    files: Files
    encoder: PassageEncoder  # chunks files (its tokenizer)
    embedders: dict[str | None, Embedder]  # by the name a store records
    lease_s: float = LEASE_S
    tasks: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict)  # this replica's
    _adopter: Periodic | None = None

    def lease_until(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.lease_s)

    def stop(self, store_id: str, file_ids: set[str] | None = None) -> None:
        """Stop this replica's ingestions into the store (of `file_ids` only, when given)."""
        for (sid, file_id), task in list(self.tasks.items()):
            if sid == store_id and (file_ids is None or file_id in file_ids):
                task.cancel()

    def begin(self, store_id: str, file_id: str, chunking: Chunking) -> None:
        key = (store_id, file_id)
        self.tasks[key] = asyncio.create_task(self._ingest(store_id, file_id, chunking),
                                                   name=f"ingesting {file_id} into {store_id}")

    async def _ingest(self, store_id: str, file_id: str, chunking: Chunking) -> None:
        try:
            await self._chunk_and_embed(store_id, file_id, chunking)
        except _Failed as failure:
            await self._fail(store_id, file_id, failure.code, failure.message)
        except Exception as exc:
            if is_transient(exc) or isinstance(exc, APIError) and exc.status == 503:
                log.warning("ingesting %s into %s: %s; its lease will lapse and it will be taken over",
                            file_id, store_id, describe(exc))
            else:
                log.exception("ingesting %s into %s failed", file_id, store_id)
                await self._fail(store_id, file_id, "server_error", describe(exc))
        finally:
            self.tasks.pop((store_id, file_id), None)

    async def _chunk_and_embed(self, store_id: str, file_id: str, chunking: Chunking) -> None:
        store = await asyncio.to_thread(self.store.get_store, store_id)
        if store is None:
            return  # deleted meanwhile
        embedder = self.embedders.get(store["embedding_model"])
        if embedder is None:
            raise _Failed("server_error", f"the store's embedder {store['embedding_model']!r} is not served by "
                                          "this gateway (vector_stores.embedding_model)")
        info = await asyncio.to_thread(self.files.store.get, file_id)
        content = await asyncio.to_thread(self.files.store.content, file_id) if info is not None else None
        if info is None or content is None:
            raise _Failed("invalid_file", f"the file {file_id!r} was deleted (or has expired)")
        try:
            text = decode_text(content, info["filename"])
        except ValueError as exc:
            raise _Failed("unsupported_file", str(exc)) from None
        pieces = await asyncio.to_thread(self.encoder.chunks, text, chunking)
        vectors = []
        for start in range(0, len(pieces), ENCODE_BATCH):
            try:
                vectors.extend(await embedder.embed(pieces[start:start + ENCODE_BATCH], store["api_key_id"]))
            except EmbedderError as exc:
                raise _Failed("server_error", str(exc)) from None
            if not await asyncio.to_thread(self.store.renew_file, store_id, file_id, self.lease_until()):
                return  # cancelled, or left the store, meanwhile
        if await asyncio.to_thread(self.store.finish_file, store_id, file_id, list(zip(pieces, vectors, strict=True)),
                                   len(content)):
            log.info("ingested %s into %s: %d chunks", file_id, store_id, len(pieces))

    async def _fail(self, store_id: str, file_id: str, code: str, message: str) -> None:
        try:
            await asyncio.to_thread(self.store.update_file, store_id, file_id, {
                "status": "failed", "last_error": {"code": code, "message": message}, "lease_until": None},
                ("in_progress",))
        except Exception as exc:
            log.warning("marking %s in %s failed: %s", file_id, store_id, describe(exc))

    def start(self) -> None:
        self._adopter = Periodic(self.adopt, ADOPT_S, "taking over vector store files")
        self._adopter.start()

    async def adopt(self) -> None:
        """Take over the ingestions whose lease ran out (their replica stopped): start each again."""
        now = datetime.now(UTC)
        for store_id, file_id in await asyncio.to_thread(self.store.stale_files, now):
            if (store_id, file_id) in self.tasks or \
                    not await asyncio.to_thread(self.store.take_over_file, store_id, file_id, now, self.lease_until()):
                continue
            row = await asyncio.to_thread(self.store.get_file, store_id, file_id)
            if row is not None:
                log.info("taking over the ingestion of %s into %s", file_id, store_id)
                self.begin(store_id, file_id, Chunking(**row["chunking"]))

    async def close(self) -> None:
        """At shutdown: ingestions stop where they are and let their lease go, for any replica to start
        them again."""
        if self._adopter is not None:
            await self._adopter.close()
        tasks = dict(self.tasks)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        now = datetime.now(UTC)
        for store_id, file_id in tasks:
            try:
                await asyncio.to_thread(self.store.update_file, store_id, file_id, {"lease_until": now},
                                        ("in_progress",))
            except Exception as exc:
                log.warning("letting go of %s in %s: %s", file_id, store_id, describe(exc))



class _Failed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message
