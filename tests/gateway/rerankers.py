"""A fake cross-encoder server for the rerank tests, served on a real socket in this process: vLLM's
`/rerank`, `/v1/rerank` (vLLM's answer: every result with its document, `usage.total_tokens`, `top_n` cut)
and Cohere's `/v2/rerank` (what litellm's `cohere/` provider calls: no documents, billed in search units).
A document's score says what it was: the share of its words that are in the query, less a thousandth a
place (ties broken by order). It keeps every request's body and headers; a query with `[fail:500]`
answers that status (`[fail:500@r1]`: only the instance named r1), one with `[bad-index]` answers an index
past the documents."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def score_of(query: str, document: str, index: int) -> float:
    words = document.lower().split()
    shared = sum(word in query.lower().split() for word in words)
    return round(shared / len(words) - index / 1000, 6)


def pair_tokens(query: str, document: str) -> int:
    """What vLLM's usage counts for one pair: the query and the document read together (words here)."""
    return len(query.split()) + len(document.split())


class FakeReranker:
    def __init__(self, name: str = "r") -> None:
        self.name = name
        self.requests: list[tuple[str, dict, dict[str, str]]] = []  # (path, body, headers) of each call
        self._lock = threading.Lock()

    async def rerank(self, request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        with self._lock:
            self.requests.append((request.url.path, body, dict(request.headers)))
        query, documents = body["query"], body["documents"]
        failure = re.search(r"\[fail:(\d+)(?:@(\w+))?\]", query)
        if failure and failure.group(2) in (None, self.name):
            status = int(failure.group(1))
            return JSONResponse({"error": {"message": f"{self.name} failed", "type": "server_error", "param": None,
                                           "code": None}}, status_code=status)
        scored = sorted(((score_of(query, d, i), i) for i, d in enumerate(documents)), key=lambda s: (-s[0], s[1]))
        top_n = body.get("top_n") or len(documents)
        cohere = request.url.path == "/v2/rerank"
        results: list[dict[str, Any]] = [
            {"index": i, "relevance_score": score, **({} if cohere else {"document": {"text": documents[i]}})}
            for score, i in scored[:top_n]]
        if "[bad-index]" in query:
            results[0]["index"] = len(documents)
        if cohere:
            return JSONResponse({"id": f"cohere-{self.name}", "results": results,
                                 "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}})
        return JSONResponse({"id": f"rerank-{self.name}", "model": body.get("model"), "results": results,
                             "usage": {"total_tokens": sum(pair_tokens(query, d) for d in documents)}})

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "bge-reranker", "object": "model"}]})

    def app(self) -> Starlette:
        return Starlette(routes=[*(Route(path, self.rerank, methods=["POST"])
                                   for path in ("/rerank", "/v1/rerank", "/v2/rerank")),
                                 Route("/v1/models", self.models, methods=["GET"])])
