"""A chat answer as Gemini's GenerateContentResponse (its `candidates`, one per choice, with their parts:
thought parts where the request asked for thoughts, the text, each tool call as a `functionCall` with its
id; `finishReason`, `logprobsResult`; `usageMetadata`, `modelVersion`, `responseId`), and errors in
Google's shape (`{"error": {"code", "message", "status"}}`), which the `google-genai` SDK raises as its
ClientError and ServerError."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from engine.server.errors import APIError
from engine.server.json_out import SafeJSONResponse
from gateway.backends.answers import reasoning_of
from gateway.pricing import usage_of

_FINISH_REASONS = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "function_call": "STOP",
                   "content_filter": "SAFETY"}
# google.rpc.Code's name for each status the gateway answers with.
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 409: "ABORTED", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
                 500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}


def response_id(request_id: str) -> str:
    return request_id.removeprefix("req-")


def finish_reason(chat_finish: str | None) -> str:
    """Gemini's finish reason: a call of a function ends as any answer does (STOP)."""
    return _FINISH_REASONS.get(chat_finish or "stop", "OTHER")


def usage_metadata(chat_usage: dict | None) -> dict:
    """Gemini's usage: the prompt's tokens (those read from a prompt cache among them), the answer's and,
    apart, its thinking's (what a chat counts among the completion's as `reasoning_tokens`)."""
    counted = usage_of(chat_usage)
    details = (chat_usage or {}).get("completion_tokens_details")
    thoughts = details.get("reasoning_tokens") if isinstance(details, dict) else None
    thoughts = thoughts if type(thoughts) is int and 0 < thoughts <= counted.completion else 0
    usage = {"promptTokenCount": counted.prompt, "candidatesTokenCount": counted.completion - thoughts,
             "totalTokenCount": counted.prompt + counted.completion}
    if counted.cached:
        usage["cachedContentTokenCount"] = counted.cached
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def function_args(arguments: str | None) -> dict:
    """A tool call's arguments as the object a functionCall's `args` is (an empty one when they are not)."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def function_call(call: dict) -> dict:
    function = call.get("function") or {}
    named: dict[str, Any] = {"name": function.get("name") or "", "args": function_args(function.get("arguments"))}
    if call.get("id"):
        named["id"] = call["id"]
    return {"functionCall": named}


def _logprobs(logprobs: Any) -> dict:
    """A choice's token logprobs as Gemini's `logprobsResult` and `avgLogprobs`."""
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(tokens, list) or not tokens:
        return {}
    chosen = [{"token": t.get("token"), "logProbability": t.get("logprob")} for t in tokens]
    top = [{"candidates": [{"token": c.get("token"), "logProbability": c.get("logprob")}
                           for c in t.get("top_logprobs") or ()]} for t in tokens]
    average = sum(t.get("logprob") or 0.0 for t in tokens) / len(tokens)
    return {"logprobsResult": {"topCandidates": top, "chosenCandidates": chosen}, "avgLogprobs": average}


def candidate(choice: dict, thoughts: bool) -> dict:
    """A whole chat choice as a Candidate."""
    reply = choice.get("message") or {}
    parts: list[dict] = []
    if thoughts and (thinking := reasoning_of(reply)):
        parts.append({"text": thinking, "thought": True})
    if isinstance(reply.get("content"), str) and reply["content"]:
        parts.append({"text": reply["content"]})
    parts += [function_call(call) for call in reply.get("tool_calls") or ()]
    return {"content": {"role": "model", "parts": parts or [{"text": ""}]},
            "finishReason": finish_reason(choice.get("finish_reason")), "index": choice.get("index", 0),
            **_logprobs(choice.get("logprobs"))}


def generate_content_response(request_id: str, answer: dict, model: str, thoughts: bool) -> dict:
    """A whole chat answer as a GenerateContentResponse."""
    return {"candidates": [candidate(choice, thoughts) for choice in answer.get("choices") or ()],
            "usageMetadata": usage_metadata(answer.get("usage")), "modelVersion": answer.get("model") or model,
            "responseId": response_id(request_id)}


def error_body(error: APIError) -> dict:
    status = _STATUS_NAMES.get(error.status, "FAILED_PRECONDITION" if error.status < 500 else "INTERNAL")
    info: dict[str, Any] = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "domain": "pitstop",
                            "reason": (error.code or status).upper()}
    if error.param:
        info["metadata"] = {"param": error.param}
    return {"error": {"code": error.status, "message": error.message, "status": status, "details": [info]}}


def error_response(error: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    return SafeJSONResponse(error_body(error), status_code=error.status, headers=headers)
