"""A cross-encoder in the gateway's process (`pitstop-local/` with `model_info.mode: rerank` on a reranker's
folder, or `mode: classify` on a decoder classifier's): /v1/rerank's cross-encoder path (gateway/rerank.py)
asks it as it asks a vLLM server's /rerank, /score and /classify (gateway/vllm_endpoints.py) as a vLLM
server's, and it answers as vLLM does, from the engine's runner (engine/cross_encoder.py,
engine/cross_encoder_api.py) or a decoder classifier on an engine of its own (engine/decoder_scorer.py).
It serves nothing else: a chat, completion or embeddings request is a 400 naming /v1/rerank."""

from __future__ import annotations

from collections.abc import AsyncIterator

from engine.classify_api import classify_answer
from engine.cross_encoder_api import PairScorer, rerank_answer, score_answer
from engine.decoder_scorer import DecoderScorer
from engine.sampling_params import InvalidRequestError
from engine.server.errors import APIError
from gateway.backends.answers import checked_rerank, checked_scores
from gateway.backends.base import BackendError, CallContext, Kind


class CrossEncoderBackend:
    accepts_session = False
    uses_rank = False
    native_tools = False
    anthropic_fields = False
    serves_embeddings = False

    def __init__(self, served_model: str, encoder: PairScorer, classifies: bool = False) -> None:
        self.served_model = served_model
        self.encoder = encoder
        self.classifies = classifies  # `mode: classify`: /classify only (a decoder classifier of any labels)

    async def start(self) -> None:
        await self.encoder.start()  # a cross-encoder is loaded when built (off the loop on a reload); an engine starts

    async def close(self) -> None:
        await self.encoder.shutdown()

    async def healthy(self) -> bool:
        return True

    async def context_window(self) -> int | None:
        return self.encoder.max_model_len  # a query and a document together

    async def count_tokens(self, body: dict) -> int | None:
        return None

    def _refused(self, kind: Kind) -> BackendError:
        what, serves = ("a classifier", "/classify") if self.classifies else ("a cross-encoder", "/v1/rerank")
        return BackendError(400, f"the model {self.served_model!r} is {what}: it serves {serves}, not {kind} "
                            "requests", retryable=False, param="model", code="model_not_supported")

    async def complete(self, kind: Kind, body: dict, ctx: CallContext) -> dict:
        answer_of = {"classify": classify_answer} if self.classifies else {"rerank": rerank_answer,
                                                                             "score": score_answer}
        if kind not in answer_of:
            raise self._refused(kind)
        if kind == "classify" and not isinstance(self.encoder, DecoderScorer):
            raise self._refused(kind)
        try:
            answer = await answer_of[kind](self.encoder, {**body, "model": self.served_model}, None,  # type: ignore[operator]
                                           self.served_model)
        except APIError as exc:
            raise BackendError(exc.status, exc.message, retryable=False, param=exc.param, code=exc.code) from None
        except InvalidRequestError as exc:  # a pair past the model's length, a bad truncate_prompt_tokens
            raise BackendError(400, str(exc), retryable=False, param=exc.param, code=exc.code) from None
        # Read as a vLLM server's answer is: its usage as OpenAI's.
        return checked_rerank(answer) if kind == "rerank" else checked_scores(answer)

    async def stream(self, kind: Kind, body: dict, ctx: CallContext) -> AsyncIterator[dict]:
        raise self._refused(kind)
        yield {}  # an async generator, as the interface's stream is
