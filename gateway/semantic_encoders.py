"""What embeds the semantic cache's texts (`cache.semantic.encoder`): all-MiniLM-L6-v2 in the gateway
(gateway/passages.py, the vector stores' encoder, one copy a process), the routers' distilled static
table, or an embeddings model of the gateway's own. An encoder's name is part of every bucket, so
vectors of two encoders are never compared (replicas configured apart, a static table rebuilt)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any, Protocol

import numpy as np

from gateway.auth import Caller
from gateway.embedders import EmbedderError, Serve
from gateway.passages import PassageEncoder

log = logging.getLogger("pitstop.cache")


@functools.cache
def shared_passage_encoder() -> PassageEncoder:
    """all-MiniLM-L6-v2, loaded once a process (the vector stores' and the semantic cache's)."""
    return PassageEncoder()


class TextEncoder(Protocol):
    name: str

    async def encode(self, text: str, caller: Caller | None) -> np.ndarray:
        """A float32 unit vector. Raises EmbedderError where the encoder could not embed."""
        ...

    def warm(self) -> None:
        """Load what the first encode would (blocks: run in a thread)."""
        ...


class MiniLMText:
    name = "all-minilm-l6-v2-int8"

    def __init__(self, encoder: PassageEncoder | None = None) -> None:
        self.encoder = encoder or shared_passage_encoder()

    async def encode(self, text: str, caller: Caller | None) -> np.ndarray:
        # In a thread (5-10 ms on one core), not queued behind vector store ingestions.
        return (await asyncio.to_thread(self.encoder.encode, [text], False))[0]

    def warm(self) -> None:
        self.encoder.encode(["warm"], False)


class StaticText:
    def __init__(self, encoder: Any) -> None:  # a routers.features.static.StaticEncoder
        self.encoder = encoder
        self.name = f"static-{str(encoder.meta.get('sha256', ''))[:16]}"

    async def encode(self, text: str, caller: Caller | None) -> np.ndarray:
        return self.encoder.encode_one(text)  # a gather and a sum, ~0.2 ms: not worth a thread

    def warm(self) -> None:
        self.encoder.encode_one("warm")


class ModelText:
    """An embeddings model of the gateway's, called once (no retry: a lookup is not worth waiting for) as
    /v1/embeddings from the request's API key: its limits apply, its row is written, its cost billed."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.name = f"model:{model}"
        self.serve: Serve | None = None  # set by the app (gateway/app.py)

    async def encode(self, text: str, caller: Caller | None) -> np.ndarray:
        assert self.serve is not None and caller is not None, "the app connects the semantic cache's encoder"
        answer = await self.serve(caller, "embedding", {"model": self.model, "input": [text]}, None)
        try:
            body = json.loads(bytes(answer.body))
            if answer.status_code != 200:
                message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
                raise EmbedderError(f"{self.model} answered {answer.status_code}: {message or 'no message'}")
            vector = np.asarray(body["data"][0]["embedding"], dtype=np.float32)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EmbedderError(f"{self.model}'s answer holds no embedding: {exc}") from None
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def warm(self) -> None:
        pass


def build_encoder(name: str) -> TextEncoder | None:
    """The encoder `cache.semantic.encoder` names; None (logged) where it cannot be had: the semantic
    part is then off and the exact cache serves alone."""
    if name == "minilm":
        return MiniLMText()
    if name == "static":
        from routers.encoder_store import default_encoder_path  # noqa: PLC0415
        from routers.features.static import StaticEncoder  # noqa: PLC0415

        path = default_encoder_path()
        if not path.is_file():
            log.error("cache.semantic.encoder: static, but %s is missing (routers/encoder_store.py distils it "
                      "from the shared data): the semantic cache is off, the exact cache serves alone", path)
            return None
        return StaticText(StaticEncoder.load(path))
    return ModelText(name)
