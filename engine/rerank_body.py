"""A rerank body in the shape vLLM, Cohere and Jina take (`model`, `query`, `documents`: strings or objects
holding a `text`, `top_n`, `return_documents`), checked so a bad one is a 400 naming its field; and the
answer's results as vLLM orders them, best first. One implementation for the engine's cross-encoder server
(engine/cross_encoder_api.py) and the gateway's /v1/rerank (gateway/rerank_request.py, gateway/rerank.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.server.errors import bad_request

# Cohere's limit on a request's documents (vLLM sets none): with the query, one embeddings call of at most
# 1,001 inputs, inside OpenAI's 2,048.
MAX_DOCUMENTS = 1000
RERANK_FIELDS = frozenset({"model", "query", "documents", "top_n", "return_documents"})


@dataclass(frozen=True)
class RerankBody:
    model: str
    query: str
    documents: list[str]  # each document's text, objects read as their `text`
    top_n: int | None  # None: every document
    return_documents: bool  # each result holds its document's text (vLLM's and Jina's default)
    extra: dict[str, Any]  # the body's other fields, as sent

    @property
    def kept(self) -> int:
        """How many results the answer holds."""
        return len(self.documents) if self.top_n is None else min(self.top_n, len(self.documents))


def _text(value: Any, i: int) -> str:
    text = value.get("text") if isinstance(value, dict) else value
    if not isinstance(text, str) or not text:
        raise bad_request(f"'documents[{i}]' must be a non-empty string or an object with a non-empty 'text'",
                          f"documents[{i}]", "invalid_type")
    return text


def parse_rerank_body(raw: Any) -> RerankBody:
    if not isinstance(raw, dict):
        raise bad_request("the body must be a JSON object")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a string", "model")
    query = raw.get("query")
    if not isinstance(query, str) or not query:
        raise bad_request("'query' is required and must be a non-empty string", "query", "invalid_type")
    documents = raw.get("documents")
    if not isinstance(documents, list) or not documents:
        raise bad_request("'documents' must be a non-empty list of strings or of objects with a 'text'",
                          "documents", "invalid_type")
    if len(documents) > MAX_DOCUMENTS:
        raise bad_request(f"'documents' holds {len(documents)} items; at most {MAX_DOCUMENTS} a request", "documents",
                          "invalid_value")
    texts = [_text(document, i) for i, document in enumerate(documents)]
    top_n = raw.get("top_n")
    if top_n is not None and (type(top_n) is not int or top_n < 1):
        raise bad_request("'top_n' must be a positive integer", "top_n", "invalid_value")
    return_documents = raw.get("return_documents")
    if return_documents is not None and not isinstance(return_documents, bool):
        raise bad_request("'return_documents' must be a boolean", "return_documents", "invalid_type")
    return RerankBody(model, query, texts, top_n, return_documents is not False,
                      {k: v for k, v in raw.items() if k not in RERANK_FIELDS})


def ranked_results(scored: list[tuple[int, float]], documents: list[str], kept: int,
                   return_documents: bool) -> list[dict]:
    """vLLM's results: the best `kept` of (document index, score) first, ties in the documents' order, each
    with its document's text where asked."""
    best = sorted(scored, key=lambda pair: (-pair[1], pair[0]))[:kept]
    return [{"index": index, "relevance_score": score,
             **({"document": {"text": documents[index]}} if return_documents else {})} for index, score in best]
