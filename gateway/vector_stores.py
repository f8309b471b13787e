"""OpenAI's vector stores, served by the gateway itself: files from `/v1/files` are chunked and embedded
in process (gateway/passages.py, gateway/vector_ingest.py), kept in the database
(storage/vector_stores.py), and searched by `/v1/vector_stores/{id}/search` and the Responses API's
`file_search` tool (gateway/file_search.py, gateway/vector_search.py).

A store and its files belong to the API key that made it (another key's is a 404). Adding a file
answers at once, `in_progress`, and it is `completed` once its chunks are written. A store with
`expires_after` (days after its last search) is `expired` past that: still listed, no longer searched."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from engine.server.errors import APIError, bad_request, not_found
from engine.server.fields import read_object
from gateway.auth import Caller
from gateway.db_calls import db_call_or_503
from gateway.embedders import Embedder, EmbedderError, LocalEmbedder, ModelEmbedder, Serve
from gateway.files import Files
from gateway.metadata import checked_metadata
from gateway.passages import Chunking, PassageEncoder, chunking_of
from gateway.responses_api import page_params
from gateway.vector_ingest import Ingestion
from gateway.vector_objects import (
    attributes_of,
    batch_object,
    expired,
    expiry_days_of,
    file_object,
    name_of,
    page_of,
    queries_of,
    store_object,
)
from gateway.vector_search import (
    Filter,
    Hit,
    Ranking,
    SearchIndexes,
    StoreIndex,
    filter_of,
    max_results_of,
    ranking_of,
    top_hits,
)
from storage.vector_stores import FILE_STATUSES, StoredChunks, VectorStoreStore

MAX_BATCH_FILES = 500  # OpenAI's limit on a file batch
_db = db_call_or_503("vector stores", "vector_store_unavailable")


@dataclass
class VectorStores:
    store: VectorStoreStore
    files: Files
    embedding_model: str | None = None  # what new stores are embedded by (None: the built-in encoder)
    encoder: PassageEncoder = field(default_factory=PassageEncoder)
    indexes: SearchIndexes = field(default_factory=SearchIndexes)
    embedders: dict[str | None, Embedder] = field(init=False)
    ingestion: Ingestion = field(init=False)

    def __post_init__(self) -> None:
        self.embedders = {None: LocalEmbedder(self.encoder)}
        if self.embedding_model is not None:
            self.embedders[self.embedding_model] = ModelEmbedder(self.embedding_model)
        self.ingestion = Ingestion(self.store, self.files, self.encoder, self.embedders)

    def connect(self, serve: Serve, caller_of: Callable[[str | None], Awaitable[Caller | None]]) -> None:
        """How a model embedder calls its model, from a store's key (set by the app: gateway/app.py)."""
        for embedder in self.embedders.values():
            if isinstance(embedder, ModelEmbedder):
                embedder.serve, embedder.caller_of = serve, caller_of

    def embedder_of(self, row: Mapping[str, Any], param: str | None = None) -> Embedder:
        embedder = self.embedders.get(row.get("embedding_model"))
        if embedder is None:
            raise bad_request(f"vector store {row['id']!r} was embedded by {row['embedding_model']!r}, which this "
                              "gateway does not serve now (vector_stores.embedding_model)", param,
                              "vector_store_embedder_unavailable")
        return embedder

    def start(self) -> None:
        self.ingestion.start()

    async def close(self) -> None:
        await self.ingestion.close()

    # --- stores
    async def create(self, raw: Any, key_id: str | None) -> dict:
        raw = read_object(raw, {"name", "file_ids", "expires_after", "chunking_strategy", "metadata", "description"})
        file_ids = raw.get("file_ids") or []
        if not isinstance(file_ids, list) or not all(isinstance(f, str) for f in file_ids) \
                or len(file_ids) > MAX_BATCH_FILES:
            raise bad_request(f"'file_ids' must be a list of at most {MAX_BATCH_FILES} file ids", "file_ids",
                              "invalid_value")
        chunking = chunking_of(raw.get("chunking_strategy"), auto=self.embedders[self.embedding_model].chunking)
        for file_id in file_ids:  # every file is the key's before anything is made
            await self.files.owned(file_id, key_id, "file_ids")
        now = datetime.now(UTC)
        row = {"id": "vs_" + uuid.uuid4().hex, "created_at": now, "api_key_id": key_id, "name": name_of(raw.get("name")),
               "metadata": checked_metadata(raw.get("metadata")), "expires_after_days": expiry_days_of(raw.get("expires_after")),
               "last_active_at": now, "version": 0, "embedding_model": self.embedding_model}
        await _db(self.store.put_store, row)
        for file_id in dict.fromkeys(file_ids):
            await self._add(row["id"], file_id, {}, chunking, None)
        return await self.describe(row)

    async def owned(self, store_id: str, key_id: str | None) -> dict:
        row = await _db(self.store.get_store, store_id)
        if row is None or row["api_key_id"] != key_id:  # another key's: as if there were none
            raise not_found(f"no vector store {store_id!r} (unknown, deleted, or made with another API key)", None,
                            "vector_store_not_found")
        return row

    async def describe(self, row: dict) -> dict:
        counts = await _db(self.store.file_counts, [row["id"]])
        return store_object(row, counts[row["id"]])

    async def modify(self, store_id: str, raw: Any, key_id: str | None) -> dict:
        raw = read_object(raw, {"name", "expires_after", "metadata"})
        await self.owned(store_id, key_id)
        values: dict[str, Any] = {}
        if "name" in raw:
            values["name"] = name_of(raw["name"])
        if "metadata" in raw:
            values["metadata"] = checked_metadata(raw["metadata"])
        if "expires_after" in raw:
            values["expires_after_days"] = expiry_days_of(raw["expires_after"])
        if values:
            await _db(self.store.update_store, store_id, values)
        return await self.describe(await self.owned(store_id, key_id))

    async def delete(self, store_id: str, key_id: str | None) -> dict:
        await self.owned(store_id, key_id)
        self.ingestion.stop(store_id)
        await _db(self.store.delete_store, store_id)
        self.indexes.forget(store_id)
        return {"id": store_id, "object": "vector_store.deleted", "deleted": True}

    async def page(self, key_id: str | None, query: Mapping[str, str]) -> dict:
        params = page_params(query)
        rows, more = await _db(self.store.page_stores, key_id, params.limit, params.descending, params.after)
        counts = await _db(self.store.file_counts, [row["id"] for row in rows]) if rows else {}
        data = [store_object(row, counts[row["id"]]) for row in rows]
        return page_of(data, more)

    # --- files
    async def add_file(self, store_id: str, raw: Any, key_id: str | None) -> dict:
        raw = read_object(raw, {"file_id", "attributes", "chunking_strategy"})
        auto = self.embedder_of(await self.owned(store_id, key_id)).chunking
        file_id = raw.get("file_id")
        if not isinstance(file_id, str):
            raise bad_request("'file_id' must be a file's id", "file_id", "invalid_type")
        await self.files.owned(file_id, key_id, "file_id")
        row = await self._add(store_id, file_id, attributes_of(raw.get("attributes")),
                              chunking_of(raw.get("chunking_strategy"), auto=auto), None)
        return file_object(row)

    async def _add(self, store_id: str, file_id: str, attributes: dict, chunking: Chunking, batch_id: str | None) -> dict:
        """The file in the store, and its ingestion started; a file already there is left as it is."""
        row = {"vector_store_id": store_id, "file_id": file_id, "created_at": datetime.now(UTC), "status": "in_progress",
               "last_error": None, "attributes": attributes,
               "chunking": {"max_chunk_size_tokens": chunking.max_chunk_size_tokens,
                            "chunk_overlap_tokens": chunking.chunk_overlap_tokens},
               "usage_bytes": 0, "batch_id": batch_id, "lease_until": self.ingestion.lease_until()}
        if not await _db(self.store.put_file, row):
            existing = await _db(self.store.get_file, store_id, file_id)
            assert existing is not None
            return existing
        self.ingestion.begin(store_id, file_id, chunking)
        return row

    async def owned_file(self, store_id: str, file_id: str, key_id: str | None) -> dict:
        await self.owned(store_id, key_id)
        row = await _db(self.store.get_file, store_id, file_id)
        if row is None:
            raise not_found(f"no file {file_id!r} in vector store {store_id!r}", None, "file_not_found")
        return row

    async def update_file(self, store_id: str, file_id: str, raw: Any, key_id: str | None) -> dict:
        raw = read_object(raw, {"attributes"})
        await self.owned_file(store_id, file_id, key_id)
        await _db(self.store.update_file, store_id, file_id, {"attributes": attributes_of(raw.get("attributes"))})
        return file_object(await self.owned_file(store_id, file_id, key_id))

    async def remove_file(self, store_id: str, file_id: str, key_id: str | None) -> dict:
        await self.owned_file(store_id, file_id, key_id)
        self.ingestion.stop(store_id, {file_id})
        await _db(self.store.delete_file, store_id, file_id)
        return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}

    async def forget_file(self, file_id: str) -> None:
        """A file deleted from `/v1/files` leaves every store, as at OpenAI."""
        for store_id in await _db(self.store.delete_file_everywhere, file_id):
            self.ingestion.stop(store_id, {file_id})

    async def file_page(self, store_id: str, query: Mapping[str, str], key_id: str | None,
                        batch_id: str | None = None) -> dict:
        await self.owned(store_id, key_id)
        params = page_params(query)
        status = query.get("filter")
        if status is not None and status not in FILE_STATUSES:
            raise bad_request(f"'filter' must be one of {', '.join(FILE_STATUSES)}", "filter", "invalid_value")
        rows, more = await _db(self.store.page_files, store_id, params.limit, params.descending, params.after,
                               status, batch_id)
        return page_of([file_object(row) for row in rows], more)

    async def file_content(self, store_id: str, file_id: str, key_id: str | None) -> dict:
        """The file's text as the store holds it: its chunks in order."""
        await self.owned_file(store_id, file_id, key_id)
        chunks = await _db(self.store.chunks, store_id, self.encoder.dim)
        texts = [text for f, text in zip(chunks.file_ids, chunks.texts, strict=True) if f == file_id]
        return {"object": "vector_store.file_content.page", "data": [{"type": "text", "text": t} for t in texts],
                "has_more": False, "next_page": None}

    # --- file batches
    async def create_batch(self, store_id: str, raw: Any, key_id: str | None) -> dict:
        raw = read_object(raw, {"file_ids", "files", "attributes", "chunking_strategy"})
        auto = self.embedder_of(await self.owned(store_id, key_id)).chunking
        if ("file_ids" in raw) == ("files" in raw):
            raise bad_request("give either 'file_ids' or 'files'", "file_ids", "invalid_value")
        attributes, chunking = attributes_of(raw.get("attributes")), chunking_of(raw.get("chunking_strategy"), auto=auto)
        entries = [{"file_id": f} for f in raw["file_ids"]] if "file_ids" in raw and isinstance(raw["file_ids"], list) \
            else raw.get("files")
        if not isinstance(entries, list) or not entries or len(entries) > MAX_BATCH_FILES or not all(
                isinstance(e, dict) and isinstance(e.get("file_id"), str) for e in entries):
            raise bad_request(f"'file_ids' must list 1 to {MAX_BATCH_FILES} file ids (or 'files', objects with a "
                              "file_id)", "file_ids", "invalid_value")
        planned = []
        for i, entry in enumerate(entries):
            await self.files.owned(entry["file_id"], key_id, "file_ids")
            planned.append((entry["file_id"], attributes_of(entry.get("attributes"), f"files[{i}].attributes")
                            if "attributes" in entry else attributes,
                            chunking_of(entry["chunking_strategy"], f"files[{i}].chunking_strategy", auto)
                            if "chunking_strategy" in entry else chunking))
        batch_id = "vsfb_" + uuid.uuid4().hex
        created_at = datetime.now(UTC)
        for file_id, file_attributes, file_chunking in planned:
            await self._add(store_id, file_id, file_attributes, file_chunking, batch_id)
        return batch_object(store_id, batch_id, created_at, await _db(self.store.batch_counts, store_id, batch_id))

    async def get_batch(self, store_id: str, batch_id: str, key_id: str | None) -> dict:
        await self.owned(store_id, key_id)
        rows, _ = await _db(self.store.page_files, store_id, 1, False, None, None, batch_id)
        if not rows:
            raise not_found(f"no file batch {batch_id!r} in vector store {store_id!r}", None, "batch_not_found")
        return batch_object(store_id, batch_id, rows[0]["created_at"],
                            await _db(self.store.batch_counts, store_id, batch_id))

    async def cancel_batch(self, store_id: str, batch_id: str, key_id: str | None) -> dict:
        await self.get_batch(store_id, batch_id, key_id)
        await _db(self.store.cancel_batch, store_id, batch_id)
        rows, _ = await _db(self.store.page_files, store_id, MAX_BATCH_FILES, False, None, "cancelled", batch_id)
        self.ingestion.stop(store_id, {row["file_id"] for row in rows})
        return await self.get_batch(store_id, batch_id, key_id)

    # --- search
    async def search(self, store_ids: list[str], queries: list[str], key_id: str | None, limit: int = 10,
                     ranking: Ranking | None = None, filters: Filter | None = None, param: str = "vector_store_id") -> list[dict]:
        """The best chunks of the stores for the queries (a chunk's score: its best over them), as
        search results: file_id, filename, score, attributes, content."""
        ranking = ranking or Ranking()
        now = datetime.now(UTC)
        rows = [await self.owned(store_id, key_id) for store_id in store_ids]
        for row in rows:
            if expired(row, now):
                raise bad_request(f"vector store {row['id']!r} has expired", param, "vector_store_expired")
        embedders = [self.embedder_of(row, param) for row in rows]
        await _db(self.store.touch, store_ids, now)
        vectors: dict[str | None, np.ndarray] = {}  # the queries embedded once per embedder
        for embedder in embedders:
            if embedder.name not in vectors:  # not queued behind ingestions
                vectors[embedder.name] = await self._embed_query(embedder, queries, key_id, param)
        scored, attributes = [], {}
        for store_id, embedder in zip(store_ids, embedders, strict=True):
            index = await self._index(store_id)
            scores = None
            for vector, query in zip(vectors[embedder.name], queries, strict=True):
                one = index.scores(vector, query, ranking)
                scores = one if scores is None else scores.clip(min=one)
            if scores is not None and len(scores):
                scored.append((store_id, index, scores))
            if filters is not None:
                attributes[store_id] = await _db(self.store.attributes, store_id)

        def allowed(store_id: str, file_id: str) -> bool:
            return filters is None or filters(attributes[store_id].get(file_id, {}))

        hits = top_hits(scored, allowed, limit, ranking.score_threshold)
        return await self._results(hits, attributes)

    @staticmethod
    async def _embed_query(embedder: Embedder, queries: list[str], key_id: str | None, param: str) -> np.ndarray:
        try:
            return await embedder.embed(queries, key_id, queued=False)
        except EmbedderError as exc:  # the model's own refusal (its rate, the budget) said as this search's
            raise APIError(502, f"embedding the query failed: {exc}", param, "embedder_failed") from None

    async def _index(self, store_id: str) -> StoreIndex:
        """The store's index at its current version: the one kept, brought up to date where it is not."""
        index = self.indexes.get(store_id)
        if index is not None and index.chunks.version == await _db(self.store.version, store_id):
            return index
        version, completed = await _db(self.store.completed_files, store_id)
        index = index or StoreIndex.assemble(0, {}, self.encoder.dim)
        missing = index.missing(completed)
        fresh = await _db(self.store.chunks, store_id, self.encoder.dim, missing) if missing else \
            StoredChunks(version, [], [], [], np.zeros((0, self.encoder.dim), np.float32))
        index = await asyncio.to_thread(index.updated, version, completed, fresh)
        self.indexes.keep(store_id, index)
        return index

    async def _results(self, hits: list[Hit], attributes: dict[str, dict[str, dict]]) -> list[dict]:
        names: dict[str, str] = {}
        for hit in hits:
            if hit.file_id not in names:
                row = await _db(self.files.store.get, hit.file_id)
                names[hit.file_id] = row["filename"] if row else ""
        missing = {hit.store_id for hit in hits} - set(attributes)
        for store_id in missing:
            attributes[store_id] = await _db(self.store.attributes, store_id)
        return [{"file_id": hit.file_id, "filename": names[hit.file_id], "score": round(hit.score, 6),
                 "attributes": attributes[hit.store_id].get(hit.file_id, {}),
                 "content": [{"type": "text", "text": hit.text}]} for hit in hits]

    async def search_request(self, store_id: str, raw: Any, key_id: str | None) -> dict:
        """POST /v1/vector_stores/{id}/search."""
        raw = read_object(raw, {"query", "filters", "max_num_results", "ranking_options", "rewrite_query"})
        queries = queries_of(raw.get("query"))
        if raw.get("rewrite_query"):
            raise bad_request("'rewrite_query' is not supported: Pitstop searches with the query as given", "rewrite_query",
                              "unsupported")
        results = await self.search([store_id], queries, key_id, max_results_of(raw.get("max_num_results")),
                                    ranking_of(raw.get("ranking_options")), filter_of(raw.get("filters")))
        return {"object": "vector_store.search_results.page", "search_query": queries, "data": results,
                "has_more": False, "next_page": None}
