"""POST /v1/rerank's body, in the shape vLLM, Cohere and Jina take: `model`, `query`, `documents` (strings,
or objects holding a `text`), `top_n` and `return_documents`. Checked as the engine's cross-encoder checks it (engine/rerank_body.py),
so a bad request is a 400 naming its field before it takes a rate slot; then written as the request each way of reranking sends
(gateway/rerank.py): a reranker's own body, or one embeddings call for the query and the documents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers

from engine.rerank_body import parse_rerank_body
from gateway.cache_control import CACHE_FIELD, CACHE_HEADER, CacheControl
from gateway.request_body import GATEWAY_FIELDS, ProxyRequest, asked_priority

# The endpoint's paths (vLLM's server and LiteLLM's proxy answer all three); a batch's lines may name any.
PATHS = ("/v1/rerank", "/rerank", "/v2/rerank")
_GATEWAY_ONLY = frozenset({"service_tier", *GATEWAY_FIELDS})


@dataclass(frozen=True)
class RerankRequest:
    model: str
    query: str
    documents: list[str]  # each document's text, objects read as their `text`
    top_n: int | None  # None: every document
    return_documents: bool  # each result holds its document's text (vLLM's and Jina's default)
    priority: float | None
    cache: CacheControl
    extra: dict[str, Any]  # other fields, sent to a reranker as they came (vLLM's truncate_prompt_tokens, ...)

    @property
    def kept(self) -> int:
        """How many results the answer holds."""
        return len(self.documents) if self.top_n is None else min(self.top_n, len(self.documents))


def parse_rerank_request(raw: Any, headers: Headers | dict[str, str] | None = None) -> RerankRequest:
    body = parse_rerank_body(raw)  # the fields the engine's cross-encoder reads too (engine/rerank_body.py)
    return RerankRequest(body.model, body.query, body.documents, body.top_n, body.return_documents, asked_priority(raw),
                         CacheControl.of(raw.get(CACHE_FIELD), (headers or {}).get(CACHE_HEADER)),
                         {k: v for k, v in body.extra.items() if k not in _GATEWAY_ONLY})


def _as_request(asked: RerankRequest, body: dict, prompt_chars: int) -> ProxyRequest:
    # Billed as embeddings are (gateway/budget_holds.py, gateway/outcomes.py): input tokens, no answer.
    return ProxyRequest(kind="embedding", model=asked.model, body=body, stream=False, include_usage=False,
                        session_id=None, priority=asked.priority, pin_ttl_s=None, cost_preference=None,
                        prompt_text=asked.query, prompt_chars=prompt_chars, cache=asked.cache)


def embeddings_request(asked: RerankRequest) -> ProxyRequest:
    """The query and the documents in one embeddings call, query first, as floats (every provider gives
    those); each input is cached, limited and billed as any embeddings input."""
    body = {"model": asked.model, "input": [asked.query, *asked.documents], "encoding_format": "float"}
    return _as_request(asked, body, len(asked.query) + sum(map(len, asked.documents)))


def reranker_request(asked: RerankRequest) -> ProxyRequest:
    """The body a reranker is sent: the documents as strings (vLLM and Cohere v2 take no objects) and `top_n`
    as asked; not `return_documents`, which vLLM does not know: the gateway puts back the texts it was sent
    where they are asked for. A cross-encoder reads the query with every document: the hold counts it so."""
    body = {**asked.extra, "model": asked.model, "query": asked.query, "documents": asked.documents}
    if asked.top_n is not None:
        body["top_n"] = asked.kept
    return _as_request(asked, body, len(asked.query) * len(asked.documents) + sum(map(len, asked.documents)))
