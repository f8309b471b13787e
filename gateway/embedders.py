"""What embeds a vector store's chunks and its searches' queries: all-MiniLM-L6-v2 in the gateway
(gateway/passages.py, the default), or an embeddings model of the gateway's own (`vector_stores.
embedding_model`: OpenAI's, a vLLM server's, any `mode: embedding` model), called as a
`/v1/embeddings` request from the store's API key would be: its limits and budget apply, and each
call leaves its outcome row. A store keeps the embedder it was made with, since vectors of two
embedders cannot be compared."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from starlette.responses import Response

from gateway.auth import Caller
from gateway.passages import Chunking, PassageEncoder

MODEL_CHUNKING = Chunking(800, 400)  # OpenAI's `auto`, for embedders that read 8k tokens
MODEL_BATCH = 64  # inputs an embeddings call carries
RATE_LIMIT_TRIES = 20  # a call refused for the key's rate (429) waits and is tried again, so often

Serve = Callable[[Caller, str, Any, str | None], Awaitable[Response]]


class EmbedderError(Exception):
    """The embedder could not embed (its answer an error, the key revoked): the ingestion fails with it."""


class Embedder(Protocol):
    name: str | None  # what the store records: None for the built-in encoder
    chunking: Chunking  # what `auto` chunking stands for with it

    async def embed(self, texts: Sequence[str], key_id: str | None, queued: bool = True) -> np.ndarray:
        """(len(texts), dim) float32 unit rows."""
        ...


@dataclass
class LocalEmbedder:
    encoder: PassageEncoder
    name: str | None = None
    chunking: Chunking = Chunking()

    async def embed(self, texts: Sequence[str], key_id: str | None, queued: bool = True) -> np.ndarray:
        return await asyncio.to_thread(self.encoder.encode, list(texts), queued)


async def _no_caller(key_id: str | None) -> Caller | None:
    raise RuntimeError("the app sets how vector stores find their key (gateway/app.py)")


async def _no_serve(caller: Caller, endpoint: str, raw: Any, batch_id: str | None) -> Response:
    raise RuntimeError("the app sets how vector stores call a model (gateway/app.py)")


@dataclass
class ModelEmbedder:
    name: str
    serve: Serve = _no_serve
    caller_of: Callable[[str | None], Awaitable[Caller | None]] = _no_caller
    chunking: Chunking = MODEL_CHUNKING

    async def embed(self, texts: Sequence[str], key_id: str | None, queued: bool = True) -> np.ndarray:
        caller = await self.caller_of(key_id)
        if caller is None:
            raise EmbedderError("the vector store's API key was revoked")
        rows: list[list[float]] = []
        for start in range(0, len(texts), MODEL_BATCH):
            rows += await self._call(caller, list(texts[start:start + MODEL_BATCH]))
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    async def _call(self, caller: Caller, texts: list[str]) -> list[list[float]]:
        for _ in range(RATE_LIMIT_TRIES):
            answer = await self.serve(caller, "embedding", {"model": self.name, "input": texts}, None)
            if answer.status_code == 429:
                await asyncio.sleep(float(answer.headers.get("retry-after") or 1.0))
                continue
            body = json.loads(bytes(answer.body))
            if answer.status_code != 200:
                message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
                raise EmbedderError(f"{self.name} answered {answer.status_code}: {message or 'no message'}")
            data = sorted(body["data"], key=lambda item: item["index"])
            if len(data) != len(texts):
                raise EmbedderError(f"{self.name} answered {len(data)} embeddings for {len(texts)} inputs")
            return [item["embedding"] for item in data]
        raise EmbedderError(f"{self.name}: the key's rate limit refused every try")
