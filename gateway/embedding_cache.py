"""Embeddings through the response cache, one entry an input (as litellm's cache keeps them): a batch
whose inputs were embedded before, in this batch or any other, sends upstream only the inputs the cache
does not hold, and its answer is put back together in the inputs' order. That is the re-indexing job's
case: documents chunked into batches again after a few of them changed.

Vectors are kept and put back as JSON text (a list of numbers, or a base64 string), cut from the
upstream's bytes and never read into floats. The answer's `usage` is what the upstream read for it (the
inputs it was sent; zero when the cache held them all), which is what the request is billed."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from engine.server.errors import APIError
from gateway.backends.answers import embedding_vectors
from gateway.backends.base import BackendError, CallContext
from gateway.guardrails import refused_input
from gateway.outcomes import OutcomeDraft
from gateway.serving import embed, response_headers, unless_disconnected
from gateway.state import GatewayState


def inputs_of(value: Any) -> list[Any]:
    """A checked `input` as its list of inputs: a string, or a list of token ids, is one."""
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int)):
        return [value]
    return list(value)


async def embed_cached(request: Request | None, state: GatewayState, draft: OutcomeDraft) -> Response:
    cache = state.cache
    assert cache is not None and draft.caller is not None and draft.request is not None and draft.route is not None
    parsed, model = draft.request, draft.route.model_name
    inputs = inputs_of(parsed.body["input"])
    shaping = {**parsed.body, "encoding_format": parsed.body.get("encoding_format") or "float"}  # OpenAI's default
    keys = [cache.key(draft, {**shaping, "input": item}) for item in inputs]
    kept = await unless_disconnected(request, cache.read_many(keys, parsed.cache))
    missing = [i for i, found in enumerate(kept) if found is None]
    if len(missing) == len(inputs):  # nothing kept: served as without a cache, its vectors kept
        draft.extra["cache"] = "miss"
        return await embed(request, state, draft, keep=lambda answer: _keep(state, draft, keys, answer))
    vectors: list[bytes | None] = [None if found is None else found.body for found in kept]
    draft.usage = {"prompt_tokens": 0, "total_tokens": 0}  # the inputs the cache held cost nothing
    if missing:
        draft.extra["cache"], draft.extra["cached_inputs"] = "partial", len(inputs) - len(missing)
        ctx = CallContext(draft.request_id, priority=draft.caller.effective_priority(parsed.priority),
                          timeout_s=state.settings.server.request_timeout_s, trace=draft.trace,
                          moderation=draft.moderation)
        rest = {**parsed.body, "input": [inputs[i] for i in missing]}
        try:
            answer, dispatched = await unless_disconnected(
                request, state.dispatcher.complete(model, "embedding", rest, ctx, sent=draft.sending))
        except APIError as exc:  # a guardrail names an input of `rest`: the client's is at another place
            raise refused_input(exc, lambda i: f"input[{missing[i]}]") from None
        draft.deployment, draft.attempts = dispatched.deployment, dispatched.attempts
        draft.usage = answer.get("usage")
        fresh = await _keep(state, draft, [keys[i] for i in missing], answer)
        if fresh is None:
            raise BackendError(502, f"the upstream's answer does not hold one embedding for each of the {len(missing)} "
                               "inputs sent", code="bad_upstream_response")
        for i, vector in zip(missing, fresh, strict=True):
            vectors[i] = vector
    else:
        draft.extra["cache"] = "hit"
    usage = draft.estimated_usage() if draft.usage_estimated else draft.usage
    state.recorder.finish(draft)
    await draft.settled()
    return Response(_answer(model, vectors, usage), media_type="application/json", headers=response_headers(draft))


async def _keep(state: GatewayState, draft: OutcomeDraft, keys: list[str], answer: dict) -> list[bytes] | None:
    """The upstream's vectors for `keys`' inputs, kept; None (and nothing kept) where it did not send
    one for each input."""
    assert state.cache is not None and draft.request is not None and draft.route is not None
    vectors = embedding_vectors(answer)
    if len(vectors) != len(keys):
        return None
    await state.cache.keep_many(keys, vectors, draft.route.model_name, draft.request.cache)
    return vectors


def _answer(model: str, vectors: list[bytes | None], usage: Any) -> bytes:
    data = b",".join(b'{"object":"embedding","index":%d,"embedding":%s}' % (i, vector)
                     for i, vector in enumerate(vectors) if vector is not None)
    return b'{"object":"list","data":[%s],"model":%s,"usage":%s}' % (data, orjson.dumps(model), orjson.dumps(usage))

