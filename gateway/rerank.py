"""POST /v1/rerank (and /rerank, /v2/rerank: the paths vLLM's server and LiteLLM's proxy answer): a query
and its retrieved documents, given back ordered by relevance, as vLLM answers: `{id, model, results:
[{index, relevance_score, document?}], usage: {total_tokens}}`, best first, `top_n` of them.

Two ways, chosen by the model's `model_info.mode`:
- `rerank`: a cross-encoder reads the query with each document. The request goes to the deployment's own
  reranker (a vLLM server's /rerank over the direct transport, or litellm's `arerank`: Cohere, Jina,
  Voyage, ...), with retries and balancing as any call; its scores are served as it gave them, and the
  answer is kept whole by the response cache (keyed by the reranker's body and `return_documents`).
- `embedding`: a bi-encoder. The query and the documents are embedded in one call of the gateway's own
  embeddings path (its response cache one entry an input, so documents reranked again are not embedded
  again), and a document's relevance is its cosine with the query, as vLLM scores with an embedding
  model. Cheaper, and weaker: the query and a document never meet inside the model.
Either way the request is admitted, limited and billed as an embeddings request (its input tokens at the
model's input price), its texts read by the guardrails as an embeddings request's are, and it leaves one
outcome row saying `endpoint: rerank`. A batch's /v1/rerank lines are served here too (`serve_rerank_body`)."""

from __future__ import annotations

import base64
import functools
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.rerank_body import ranked_results
from engine.server.errors import APIError, bad_request, not_found
from engine.server.json_body import read_json
from engine.server.json_out import SafeJSONResponse
from gateway import tracing
from gateway.auth import Caller
from gateway.backends.answers import bad_answer, embedding_vectors
from gateway.backends.base import CallContext
from gateway.budget_holds import budget_hold, team_hold
from gateway.embedding_cache import embed_cached
from gateway.guardrails import refused_input
from gateway.outcomes import OutcomeDraft
from gateway.own_endpoints import answered
from gateway.rerank_request import (
    PATHS,
    RerankRequest,
    embeddings_request,
    parse_rerank_request,
    reranker_request,
)
from gateway.routing import Route as Routed
from gateway.serving import (
    embed,
    response_headers,
    serve_cached,
    unless_disconnected,
)
from gateway.state import GatewayState

ENDPOINT = "rerank"  # the outcome row's `endpoint`


async def rerank(request: Request) -> Response:
    state: GatewayState = request.app.state.pitstop
    draft = OutcomeDraft(endpoint=ENDPOINT)
    if state.tracing is not None:
        draft.trace = tracing.request_started(state.tracing, request, ENDPOINT)
    return await _answer(request, state, draft)


async def serve_rerank_body(state: GatewayState, caller: Caller, raw: Any, batch_id: str | None,
                            extra: dict | None = None) -> Response:
    """A rerank that came in no HTTP request of its own (a batch's line, gateway/batches.py), served as one
    that did, from `caller`: its answer or its error, and its outcome row (with `extra`)."""
    draft = OutcomeDraft(endpoint=ENDPOINT, caller=caller, batch_id=batch_id)
    draft.extra |= extra or {}
    return await _answer(None, state, draft, raw)


async def _answer(request: Request | None, state: GatewayState, draft: OutcomeDraft, raw: Any = None) -> Response:
    return await answered(request, state, draft, raw, _serve)  # its failures as a proxied request's


ROUTES = [Route(path, rerank, methods=["POST"]) for path in PATHS]


async def _serve(request: Request | None, state: GatewayState, draft: OutcomeDraft, raw: Any) -> Response:
    if request is not None:
        draft.caller = await state.auth.authenticate(request.headers)
        raw = await read_json(request, state.settings.server.max_body_bytes)
    assert draft.caller is not None
    asked = parse_rerank_request(raw, request.headers if request is not None else None)
    draft.caller.check_model(asked.model)
    draft.request = embeddings_request(asked)  # the row's model and texts, whichever way it is served
    natively = reranks_natively(state, asked.model)
    if natively:
        draft.request = reranker_request(asked)
    server = state.settings.server
    hold = budget_hold(draft.caller, draft.request, state.routes, state.pool, draft.request_id,
                       server.request_timeout_s, server.num_retries + 1)
    shared = team_hold(draft.caller, hold)  # the same worst case, held of the key's team's budget
    draft.admission = await state.admit(draft.caller, hold, shared)
    draft.hold, draft.team_hold = hold, shared  # taken: the row's cost settles them
    draft.route = tracing.routed(draft.trace, lambda parsed: Routed(None, parsed.model), draft.request)
    if natively:
        return await _by_reranker(request, state, draft, asked)
    return await _by_cosine(request, state, draft, asked)


def reranks_natively(state: GatewayState, model: str) -> bool:
    """True for a reranker (`mode: rerank`), False for an embedding model (`mode: embedding`, ranked by
    cosine); a 404 for a name the gateway does not serve, a 400 for a route group or a chat model."""
    routes, settings = state.routes, state.settings
    if model in routes.rerank_models:
        return True
    served = ", ".join(sorted(routes.rerank_models | routes.embedding_models)) or "none is configured"
    if model in routes.groups:
        raise bad_request(f"{model!r} is a route group, which routes chats; rerank with a model by name (models "
                          f"that rerank: {served})", "model", "model_not_supported")
    if not routes.adopt(model):  # neither listed nor a name a wildcard serves
        raise not_found(f"the model {model!r} does not exist; models that rerank: {served}", "model",
                        "model_not_found")
    modes = {entry.model_info.mode for entry in settings.model_list if entry.model_name == model}
    if not modes and (wildcard := settings.wildcard_for(model)) is not None:
        modes = {wildcard.model_info.mode}
    if modes & {"rerank", "embedding"}:
        return "rerank" in modes
    raise bad_request(f"the model {model!r} is not marked model_info.mode: rerank (a cross-encoder) or embedding "
                      f"(ranked by cosine), so it does not rerank (models that do: {served})", "model",
                      "model_not_supported")


async def _by_reranker(request: Request | None, state: GatewayState, draft: OutcomeDraft,
                       asked: RerankRequest) -> Response:
    assert draft.caller is not None and draft.request is not None and draft.route is not None
    cache = state.cache
    if cache is not None:  # a cross-encoder's answer is kept whole (a bi-encoder's vectors are, per input)
        keyed = _shaping(asked, draft.request.body)
        kept = await unless_disconnected(request, cache.look_up(draft, keyed, ENDPOINT))
        if kept is not None:
            return await serve_cached(state, draft, "rerank", None, kept)
    ctx = CallContext(draft.request_id, priority=draft.caller.effective_priority(asked.priority),
                      timeout_s=state.settings.server.request_timeout_s, trace=draft.trace,
                      moderation=draft.moderation)
    work = state.dispatcher.complete(draft.route.model_name, "rerank", draft.request.body, ctx, sent=draft.sending)
    answer, dispatched = await unless_disconnected(request, work)
    draft.answered_by(dispatched)  # its deployment, attempts, and how a hedge went
    draft.usage = answer["usage"]  # None where the reranker reports no tokens: the row is charged an estimate
    scored = _scored(answer["results"], len(asked.documents))
    upstream_id = answer.get("id")
    body = _ranked(draft, asked, scored, upstream_id if isinstance(upstream_id, str) and upstream_id else None)
    if cache is not None and draft.cache is not None:  # before it goes out: the client's next request finds it
        await cache.keep(draft.cache, draft.route.model_name, orjson.dumps(body))
    state.recorder.finish(draft)
    await draft.settled()
    return SafeJSONResponse(body, headers=response_headers(draft))


def _shaping(asked: RerankRequest, sent: dict) -> dict:
    """What the answer depends on: the reranker's body (query, documents, top_n, the fields passed through)
    and whether it holds the documents' texts, which the gateway puts in."""
    return {**sent, "return_documents": asked.return_documents}


def _scored(results: list[dict], documents: int) -> list[tuple[int, float]]:
    """(document index, score) of each result of a checked answer; each index a document's, once."""
    scored = [(result["index"], float(result["relevance_score"])) for result in results]
    indexes = [index for index, _ in scored]
    if not all(0 <= index < documents for index in indexes) or len(set(indexes)) != len(indexes):
        raise bad_answer(f"its results' indexes are not distinct documents' of the {documents} sent")
    return scored


async def _by_cosine(request: Request | None, state: GatewayState, draft: OutcomeDraft,
                     asked: RerankRequest) -> Response:
    inputs = len(asked.documents) + 1
    try:
        if state.cache is not None and state.cache.applies(draft):  # each input kept apart: documents seen hit
            served = await embed_cached(request, state, draft)
        else:
            served = await embed(request, state, draft, keep=functools.partial(_one_vector_each, inputs))
    except APIError as exc:  # a guardrail names the embeddings input it refused: the client sent no `input`
        raise refused_input(exc, lambda i: "query" if i == 0 else f"documents[{i - 1}]") from None
    vectors = _vectors(bytes(served.body), inputs)
    body = _ranked(draft, asked, list(enumerate(cosine_scores(vectors[0], vectors[1:]).tolist())), None)
    return SafeJSONResponse(body, headers=response_headers(draft))


async def _one_vector_each(inputs: int, answer: dict) -> None:
    """Before the row is written: an answer short of a vector an input is a bad gateway, not a ranking."""
    if len(embedding_vectors(answer)) != inputs:
        raise bad_answer(f"the embeddings answer does not hold one vector for each of the {inputs} inputs sent")


def _vectors(raw: bytes, inputs: int) -> np.ndarray:
    """The embeddings answer's vectors in the inputs' order, as rows of float32 (floats, or base64 float32)."""
    data = orjson.loads(raw)["data"]
    if all(isinstance(item.get("index"), int) for item in data):
        data = sorted(data, key=lambda item: item["index"])
    rows = [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") if isinstance(item["embedding"], str)
            else np.asarray(item["embedding"], dtype=np.float32) for item in data]
    if len(rows) != inputs or len({row.shape for row in rows}) != 1:
        raise bad_answer(f"the embeddings answer does not hold {inputs} vectors of one length")
    return np.stack(rows)


def cosine_scores(query: np.ndarray, documents: np.ndarray) -> np.ndarray:
    """Each document row's cosine with the query (0 for a zero vector)."""
    norms = np.linalg.norm(documents, axis=1) * np.linalg.norm(query)
    return np.divide(documents @ query, norms, out=np.zeros(len(documents), dtype=np.float32), where=norms > 0)


def _ranked(draft: OutcomeDraft, asked: RerankRequest, scored: list[tuple[int, float]],
            answer_id: str | None) -> dict:
    """vLLM's answer: the best `top_n` first (ties in the documents' order), each with its text if asked."""
    results = ranked_results(scored, asked.documents, asked.kept, asked.return_documents)
    usage = draft.estimated_usage() if draft.usage_estimated else draft.usage or {}
    return {"id": answer_id or f"rerank-{draft.request_id.removeprefix('req-')}", "model": asked.model,
            "results": results, "usage": {"total_tokens": int(usage.get("total_tokens") or 0)}}
