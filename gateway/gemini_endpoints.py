"""Google's Gemini API on the gateway, for apps written against the `google-genai` SDK (its `base_url` set to
the gateway) and Gemini's REST clients, under /v1beta, /v1 (the SDK's default) and /v1alpha:

- `POST models/{model}:generateContent` and `:streamGenerateContent` (`?alt=sse`): the chat the request
  stands for (gateway/gemini_request.py), served as every chat is (routing, ranking, agent sessions, keys,
  limits, the outcome row, whose endpoint is "gemini"), its answer as a GenerateContentResponse
  (gateway/gemini_answer.py, gateway/gemini_stream.py);
- `:countTokens`: that chat's prompt tokens, counted as for Anthropic's count_tokens (gateway/token_count.py);
- `:embedContent` and `:batchEmbedContents`: served by the embeddings path (its cache, limits and row);
- `GET models` and `models/{model}`: the models and route groups the key may use, in Gemini's Model shape.
  /v1/models is OpenAI's list too: a request that carries Google's key (`x-goog-api-key`, `?key=`) or the
  SDK's `x-goog-api-client` header gets Gemini's.

The key is Google's `x-goog-api-key` header (gateway/auth.py reads it as a bearer token) or the `key` query
parameter; errors take Google's shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.server.errors import APIError, bad_request, not_found
from engine.server.json_body import read_json
from engine.server.json_out import SafeJSONResponse
from engine.server.sse import SSEResponse
from gateway import proxy
from gateway.auth import Caller
from gateway.endpoints import _model_objects
from gateway.gemini_answer import error_response
from gateway.gemini_request import chat_request
from gateway.gemini_schema import camel_keys
from gateway.state import GatewayState
from gateway.token_count import count_input_tokens

Endpoint = Callable[[Request], Awaitable[Response]]
_KEY_HEADER = "x-goog-api-key"
_GENERATES = ["generateContent", "streamGenerateContent", "countTokens"]
_EMBEDS = ["embedContent", "batchEmbedContents"]
_PAGE_SIZE = 50  # Gemini's default page
# The headers of an embeddings answer that a Gemini one keeps: which request, model, limits.
_KEPT_HEADERS = ("x-pitstop-", "x-ratelimit-")


def is_gemini(request: Request) -> bool:
    """A request from Google's SDK or a Gemini REST client (by its key, or the SDK's own header)."""
    headers = request.headers
    return _KEY_HEADER in headers or "x-goog-api-client" in headers or "key" in request.query_params


def keyed(request: Request) -> Request:
    """The request with a `?key=` as its x-goog-api-key header, where it sends no key in a header: every
    path authenticates by headers (gateway/auth.py)."""
    key = request.query_params.get("key")
    if not key or _KEY_HEADER in request.headers or "authorization" in request.headers:
        return request
    scope = {**request.scope, "headers": [*request.scope["headers"], (_KEY_HEADER.encode(), key.encode("latin-1"))]}
    return Request(scope, request.receive)


def openai_or_gemini(openai: Endpoint, gemini: Endpoint) -> Endpoint:
    """One path both APIs name (/v1/models): Gemini's answer for Gemini's clients, OpenAI's for the rest."""
    async def either(request: Request) -> Response:
        return await (gemini if is_gemini(request) else openai)(request)
    return either


async def model_call(request: Request) -> Response:
    """POST .../models/{model}:{method}."""
    model, _, method = request.path_params["target"].rpartition(":")
    request = keyed(request)
    if method in ("generateContent", "streamGenerateContent") and model:
        streamed = method == "streamGenerateContent"
        sse = request.query_params.get("alt") == "sse"
        request.state.gemini_call = (model, streamed, sse)
        response = await proxy.gemini(request)
        if isinstance(response, SSEResponse) and not sse:  # a JSON array, as Google's REST streams without alt=sse
            response.headers["content-type"] = "application/json"
        return response
    try:
        if method == "countTokens" and model:
            return await _count_tokens(request, model)
        if method in _EMBEDS and model:
            return await _embed(request, model, batch=method == "batchEmbedContents")
        raise not_found(f"no such method {method!r} on models/{model}: the gateway serves "
                        f"{', '.join(_GENERATES + _EMBEDS)}", "method", "unknown_method")
    except APIError as error:
        return error_response(error)


async def _authorized(request: Request, model: str) -> tuple[GatewayState, Caller, Any]:
    """The gateway, the caller (a 401 or a 403 for the model), and the request's body."""
    state: GatewayState = request.app.state.pitstop
    caller = await state.auth.authenticate(request.headers)
    caller.check_model(model)
    return state, caller, await read_json(request, state.settings.server.max_body_bytes)


async def _count_tokens(request: Request, model: str) -> Response:
    """countTokens of `contents`, or of a whole `generateContentRequest` (its system instruction and tools too)."""
    state, _, raw = await _authorized(request, model)
    raw = camel_keys(raw)
    if not isinstance(raw, dict):
        raise bad_request("the body must be a JSON object")
    asked = camel_keys(raw.get("generateContentRequest")) or {"contents": raw.get("contents")}
    if isinstance(asked, dict):
        asked = {k: v for k, v in asked.items() if k != "model"}  # the request's own `models/...` name
    chat = chat_request(asked, model, stream=False).chat
    counted = await count_input_tokens(state, chat, request.headers)
    return SafeJSONResponse({"totalTokens": counted.tokens}, headers=counted.headers)


def _content_text(content: Any, where: str) -> str:
    parts = camel_keys(content).get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list) or not parts or not all(
            isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts):
        raise bad_request(f"'{where}.parts' must be a non-empty list of text parts", f"{where}.parts", "invalid_type")
    return "\n".join(p["text"] for p in parts)


def _embed_requests(raw: Any, model: str, batch: bool) -> tuple[list[str], int | None]:
    """The texts to embed, and the dimensions asked (the same for all)."""
    raw = camel_keys(raw)
    if not isinstance(raw, dict):
        raise bad_request("the body must be a JSON object")
    requests = raw.get("requests") if batch else [raw]
    if not isinstance(requests, list) or not requests:
        raise bad_request("'requests' must be a non-empty list", "requests", "invalid_type")
    texts, dimensions = [], []
    for i, asked in enumerate(requests):
        where = f"requests[{i}]" if batch else "content"
        asked = camel_keys(asked)
        if not isinstance(asked, dict):
            raise bad_request(f"'{where}' must be an EmbedContentRequest", where, "invalid_type")
        named = asked.get("model")
        if batch and named is not None and (not isinstance(named, str) or named.removeprefix("models/") != model):
            raise bad_request(f"'{where}.model' is {named!r}, not the path's models/{model}", f"{where}.model",
                              "invalid_value")
        texts.append(_content_text(asked.get("content"), f"{where}.content" if batch else "content"))
        dimensions.append(asked.get("outputDimensionality"))
    if any(asked != dimensions[0] for asked in dimensions):
        raise bad_request("every request must ask the same outputDimensionality", "outputDimensionality",
                          "invalid_value")
    asked_dimensions = dimensions[0]
    if asked_dimensions is not None and (type(asked_dimensions) is not int or asked_dimensions < 1):
        raise bad_request("'outputDimensionality' must be a positive integer", "outputDimensionality",
                          "invalid_value")
    return texts, asked_dimensions


async def _embed(request: Request, model: str, batch: bool) -> Response:
    """embedContent (one content) or batchEmbedContents (several), as one embeddings request."""
    state, caller, raw = await _authorized(request, model)
    texts, dimensions = _embed_requests(raw, model, batch)
    body: dict[str, Any] = {"model": model, "input": texts}
    if dimensions is not None:
        body["dimensions"] = dimensions
    answer = await proxy.serve_body(state, caller, "embedding", body, None, {"api": "gemini"})
    headers = {k: v for k, v in answer.headers.items() if k.startswith(_KEPT_HEADERS)}
    served = orjson.loads(bytes(answer.body))
    if answer.status_code != 200:
        error = served.get("error") or {}
        return error_response(APIError(answer.status_code, error.get("message") or "the embeddings failed",
                                        error.get("param"), error.get("code")), headers)
    vectors = [{"values": item["embedding"]} for item in sorted(served["data"], key=lambda item: item["index"])]
    return SafeJSONResponse({"embeddings": vectors} if batch else {"embedding": vectors[0]}, headers=headers)


def _gemini_models(state: GatewayState, caller: Caller) -> list[dict]:
    """The models and route groups the caller may use that generate or embed, as Gemini's Model objects."""
    entries = {entry.model_name: entry for entry in state.settings.model_list}
    models = []
    for listed in _model_objects(state):
        name, entry = listed["id"], entries.get(listed["id"])
        mode = entry.model_info.mode if entry is not None else None
        if (listed.get("pitstop") or {}).get("wildcard") or mode not in (None, "chat", "completion", "embedding") \
                or not caller.may_use(name):
            continue
        model: dict[str, Any] = {"name": f"models/{name}", "baseModelId": name, "version": "pitstop",
                                 "displayName": name, "description": "served by Pitstop" + (
                                     " (a route group)" if (listed.get("pitstop") or {}).get("route_group") else ""),
                                 "supportedGenerationMethods": _EMBEDS if mode == "embedding" else _GENERATES}
        if "max_model_len" in listed:
            model["inputTokenLimit"] = listed["max_model_len"]
        if entry is not None and entry.model_info.max_output_tokens is not None:
            model["outputTokenLimit"] = entry.model_info.max_output_tokens
        models.append(model)
    return models


async def list_models(request: Request) -> Response:
    """GET .../models: a page (`pageSize`, `pageToken`) of the caller's models."""
    request = keyed(request)
    state: GatewayState = request.app.state.pitstop
    try:
        caller = await state.auth.authenticate(request.headers)
        size, token = request.query_params.get("pageSize", str(_PAGE_SIZE)), request.query_params.get("pageToken", "0")
        if not size.isdigit() or not token.isdigit():
            raise bad_request("'pageSize' and 'pageToken' must be the numbers a page gives", "pageToken")
        start, size_ = int(token), min(int(size) or _PAGE_SIZE, 1000)
        models = _gemini_models(state, caller)
        page: dict[str, Any] = {"models": models[start:start + size_]}
        if start + size_ < len(models):
            page["nextPageToken"] = str(start + size_)
        return SafeJSONResponse(page)
    except APIError as error:
        return error_response(error)


async def get_model(request: Request) -> Response:
    """GET .../models/{model}: one of them."""
    request = keyed(request)
    state: GatewayState = request.app.state.pitstop
    name = request.path_params["model"].removeprefix("models/")
    try:
        caller = await state.auth.authenticate(request.headers)
        if caller.may_use(name):
            state.routes.adopt(name)  # a name a wildcard matches is a model, as for OpenAI's retrieve
        for model in _gemini_models(state, caller):
            if model["baseModelId"] == name:
                return SafeJSONResponse(model)
        raise not_found(f"models/{name} is not found for this key", "model", "model_not_found")
    except APIError as error:
        return error_response(error)


_PREFIXES = ("v1beta", "v1", "v1alpha")
ROUTES = [Route(f"/{prefix}/models/{{target:path}}", model_call, methods=["POST"]) for prefix in _PREFIXES] + [
    route for prefix in _PREFIXES if prefix != "v1"  # /v1's are OpenAI's too: gateway/app.py asks `is_gemini`
    for route in (Route(f"/{prefix}/models", list_models, methods=["GET"]),
                  Route(f"/{prefix}/models/{{model:path}}", get_model, methods=["GET"]))]
