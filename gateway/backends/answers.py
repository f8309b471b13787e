"""What an upstream's answer must look like before the gateway serves, logs and bills it: OpenAI's
shape, as the client SDKs read it. A deployment that sends anything else (a JSON list, a choice that
is a string, an error object with a 200) is a bad gateway: a 502 `bad_upstream_response` that the
dispatcher retries on another deployment, never a crash. A usage the gateway cannot bill from
(negative, fractional, absurd, not a number) is dropped, and the row is charged the gateway's estimate
instead (gateway/outcomes.py)."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import msgspec
import orjson

from gateway.backends.base import BackendError

log = logging.getLogger("pitstop.gateway")

MAX_REPORTED_TOKENS = 10**9  # more than any context holds: a count past it is garbage, not a bill
_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(raw: bytes) -> Any:
    """JSON as the spec has it: Python's parser also takes NaN and Infinity, which no client can read
    back (the gateway's own JSON responses refuse them)."""
    return json.loads(raw, parse_constant=_no_constant)


def large_json(raw: bytes) -> Any:
    """`strict_json` for bodies that are mostly numbers (an embeddings batch of floats: 65 MB for 2048
    inputs): orjson reads them about 4x faster. What orjson refuses is read again by `strict_json`,
    which also takes what JSON allows and orjson does not (a UTF-16 surrogate escaped alone)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return strict_json(raw)


class _EmbeddingItem(msgspec.Struct):
    embedding: msgspec.Raw  # found and skipped (syntax checked), never made into floats
    index: int | None = None


class _EmbeddingsAnswer(msgspec.Struct):
    data: list[_EmbeddingItem]
    usage: Any = None


_EMBEDDINGS = msgspec.json.Decoder(_EmbeddingsAnswer)


def embedding_vectors(answer: dict) -> list[bytes]:
    """Each input's vector of a checked embeddings answer as JSON text (a list of numbers, or a base64
    string), in the inputs' order (by `index` where every item has one). From the upstream's own bytes
    the vectors are cut out as they are, never read into floats."""
    if isinstance(answer, UpstreamBytes):
        vectors = answer.vectors if answer.vectors is not None else [
            (item.index, item.embedding) for item in _EMBEDDINGS.decode(answer.raw).data]
        items = [(index, bytes(vector)) for index, vector in vectors]
    else:
        items = [(item.get("index"), orjson.dumps(item["embedding"])) for item in answer["data"]]
    if all(isinstance(index, int) for index, _ in items):
        items.sort(key=lambda item: item[0])
    return [vector for _, vector in items]


def embeddings_answer(raw: bytes, skim: bool = True) -> dict:
    """An embeddings answer from an upstream's bytes. Well shaped and with a usage to bill from, it is
    an UpstreamBytes holding only its usage: with `skim`, its vectors are skipped by msgspec, not read
    into millions of Python floats (2,048 x 1536 of them: 35 ms instead of 200-500 ms of orjson, all of
    it on the event loop). Anything else is read whole and checked (`checked_embeddings`), which names
    what is wrong, or is served as read with the gateway's usage estimate. Base64 vectors are a few
    thousand strings, which orjson reads in about 16 ms for 2,048: the gateway skims only floats, as
    skimming base64 measured slower end to end (bench/gateway_embeddings.py)."""
    shaped = None
    if skim:
        with contextlib.suppress(msgspec.MsgspecError):  # read whole below, which names what is wrong
            shaped = _EMBEDDINGS.decode(raw)
    if shaped is not None and shaped.usage is not None and _billable(shaped.usage) and all(
            memoryview(item.embedding)[:1] in (b"[", b'"') for item in shaped.data):
        # The usage read as the whole-answer path reads it (an integer past 64 bits becomes a float there).
        skimmed = UpstreamBytes.of({"usage": large_json(msgspec.json.encode(shaped.usage))}, raw)
        skimmed.vectors = [(item.index, item.embedding) for item in shaped.data]  # views of `raw`, for the cache
        return skimmed
    try:
        answer = large_json(raw)
    except ValueError:
        raise BackendError(502, "upstream sent invalid JSON", retryable=True, code="bad_upstream_response") from None
    usage = answer.get("usage") if isinstance(answer, dict) else None
    answer = checked_embeddings(answer)
    billable = usage is not None and answer.get("usage") is usage  # else the gateway serves its estimate
    return UpstreamBytes.of(answer, raw) if billable else answer


class UpstreamBytes(dict):
    """An answer the gateway left as it came: served as the upstream's own bytes (`raw`), so a large
    one is not written out again. Set only where nothing in it was changed."""

    raw: bytes
    vectors: list[tuple[int | None, msgspec.Raw]] | None = None  # each item's (index, vector JSON), where skimmed

    @classmethod
    def of(cls, answer: dict, raw: bytes) -> UpstreamBytes:
        kept = cls(answer)
        kept.raw = raw
        return kept


def bad_answer(what: str) -> BackendError:
    return BackendError(502, f"the upstream's answer is not in OpenAI's shape: {what}", retryable=True,
                        code="bad_upstream_response")


def _error_with_200(error: Any) -> BackendError:
    message = error.get("message") if isinstance(error, dict) else error
    return BackendError(502, f"the upstream answered 200 with an error: {str(message)[:500]}", retryable=True,
                        code="bad_upstream_response")


def checked_answer(body: Any) -> dict:
    """A whole answer, checked; raises `bad_answer` (or the upstream's own error, sent with a 200)."""
    if not isinstance(body, dict):
        raise bad_answer(f"a JSON {type(body).__name__}, not an object")
    if "choices" not in body and "error" in body:
        raise _error_with_200(body["error"])
    _check_choices(body.get("choices"), "message")
    _check_usage(body)
    return body


def checked_embeddings(body: Any) -> dict:
    """An embeddings answer, checked where the gateway and the SDKs read it: `data`, a list of
    objects each holding an `embedding` (a list of numbers, or a base64 string), and the usage. The
    numbers themselves are passed on unread: a batch holds millions."""
    if not isinstance(body, dict):
        raise bad_answer(f"a JSON {type(body).__name__}, not an object")
    if "data" not in body and "error" in body:
        raise _error_with_200(body["error"])
    data = body.get("data")
    if not isinstance(data, list):
        raise bad_answer("'data' is missing or not a list")
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("embedding"), list | str):
            raise bad_answer(f"data[{i}] is not an object holding an 'embedding' (a list or a base64 string)")
    _check_usage(body)
    return body


def checked_rerank(body: Any) -> dict:
    """A reranker's answer (vLLM's `/rerank`, or litellm's `arerank` as a dict), checked where the gateway
    reads it: `results`, objects each holding an integer `index` and a numeric `relevance_score`. Its
    tokens, wherever the reranker reports them (vLLM's `usage.total_tokens`, Jina's and Voyage's in
    litellm's `meta`; Cohere bills searches, not tokens), become an OpenAI `usage` (None: none reported)."""
    if not isinstance(body, dict):
        raise bad_answer(f"a JSON {type(body).__name__}, not an object")
    if "results" not in body and "error" in body:
        raise _error_with_200(body["error"])
    results = body.get("results")
    if not isinstance(results, list):
        raise bad_answer("'results' is missing or not a list")
    for i, result in enumerate(results):
        score = result.get("relevance_score") if isinstance(result, dict) else None
        if type(result.get("index") if isinstance(result, dict) else None) is not int \
                or not isinstance(score, int | float) or isinstance(score, bool):
            raise bad_answer(f"results[{i}] is not an object holding an integer 'index' and a 'relevance_score'")
    body["usage"] = _rerank_usage(body)
    _check_usage(body)
    return body


def _rerank_usage(body: dict) -> dict | None:
    usage, meta = body.get("usage"), body.get("meta")
    found = [usage.get("total_tokens")] if isinstance(usage, dict) else []
    for part in ("tokens", "billed_units"):
        counts = meta.get(part) if isinstance(meta, dict) else None
        if isinstance(counts, dict):
            found += [counts.get("input_tokens"), counts.get("total_tokens")]
    tokens = next((count for count in found if count is not None), None)
    return None if tokens is None else {"prompt_tokens": tokens, "total_tokens": tokens}


def checked_moderation(body: Any) -> dict:
    """A moderation answer (OpenAI's /moderations, or litellm's `amoderation` as a dict), checked where the
    gateway and the SDKs read it: `results`, objects each with a boolean `flagged`, `categories` of
    booleans and `category_scores` of numbers. Passed on as it came otherwise (`id`, `model`,
    `category_applied_input_types`, whatever else the upstream adds)."""
    if not isinstance(body, dict):
        raise bad_answer(f"a JSON {type(body).__name__}, not an object")
    if "results" not in body and "error" in body:
        raise _error_with_200(body["error"])
    results = body.get("results")
    if not isinstance(results, list) or not results:
        raise bad_answer("'results' is missing, empty or not a list")
    for i, result in enumerate(results):
        categories = result.get("categories") if isinstance(result, dict) else None
        scores = result.get("category_scores") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(result.get("flagged"), bool) \
                or not isinstance(categories, dict) or not all(isinstance(v, bool) for v in categories.values()) \
                or not isinstance(scores, dict) or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in scores.values()):
            raise bad_answer(f"results[{i}] is not an object holding a boolean 'flagged', 'categories' of booleans "
                             "and 'category_scores' of numbers")
    _check_usage(body)
    return body


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def checked_scores(body: Any) -> dict:
    """vLLM's /classify or /score answer, checked where the gateway reads it: `data`, objects each holding an
    integer `index` and either `probs` (a list of numbers: a classification) or a numeric `score`; its `usage`
    as OpenAI's (else the row is charged an estimate). Passed on as it came otherwise."""
    if not isinstance(body, dict):
        raise bad_answer(f"a JSON {type(body).__name__}, not an object")
    if "data" not in body and "error" in body:
        raise _error_with_200(body["error"])
    data = body.get("data")
    if not isinstance(data, list):
        raise bad_answer("'data' is missing or not a list")
    for i, item in enumerate(data):
        probs = item.get("probs") if isinstance(item, dict) else None
        scored = isinstance(item, dict) and (_number(item.get("score")) or (
            isinstance(probs, list) and all(map(_number, probs))))
        if not scored or type(item.get("index")) is not int:
            raise bad_answer(f"data[{i}] is not an object holding an integer 'index' and 'probs' or a 'score'")
    _check_usage(body)
    return body


def checked_chunk(chunk: Any) -> dict:
    """A stream chunk, checked as `checked_answer` checks a whole answer (a usage chunk has no choices)."""
    if not isinstance(chunk, dict):
        raise bad_answer(f"a stream event that is a JSON {type(chunk).__name__}, not an object")
    _check_choices(chunk.get("choices", []), "delta")
    _check_usage(chunk)
    return chunk


def _check_choices(choices: Any, part: str) -> None:
    if not isinstance(choices, list):
        raise bad_answer("'choices' is missing or not a list")
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise bad_answer(f"choices[{i}] is not an object")
        _check_text(choice.get("text"), f"choices[{i}].text")  # a completion's (read wherever it is)
        if (message := choice.get(part)) is not None:  # a chat answer's
            if not isinstance(message, dict):
                raise bad_answer(f"choices[{i}].{part} is not an object")
            _check_text(message.get("content"), f"choices[{i}].{part}.content")
            calls = message.get("tool_calls")
            if calls is not None and not (isinstance(calls, list) and all(
                    isinstance(call, dict) and isinstance(call.get("function", {}), dict) for call in calls)):
                raise bad_answer(f"choices[{i}].{part}.tool_calls is not a list of tool calls")
            for j, call in enumerate(calls or ()):
                for name in ("name", "arguments"):  # text, or the outcome row's tool names are not
                    _check_text(call.get("function", {}).get(name), f"choices[{i}].{part}.tool_calls[{j}].function.{name}")
        _check_text(choice.get("finish_reason"), f"choices[{i}].finish_reason")


def _check_text(value: Any, where: str) -> None:
    if value is not None and not isinstance(value, str):
        raise bad_answer(f"{where} is not a string")


def _check_usage(body: dict) -> None:
    usage = body.get("usage")
    if usage is None or _billable(usage):
        return
    log.warning("an upstream reported a usage the gateway cannot bill from (%.200r); charging an estimate", usage)
    body["usage"] = None


def _billable(usage: Any) -> bool:
    if not isinstance(usage, dict):
        return False
    details = usage.get("prompt_tokens_details")
    if details is not None and not (isinstance(details, dict) and _count(details.get("cached_tokens"))):
        return False
    return all(_count(usage.get(name)) for name in _COUNTS)


def _count(value: Any) -> bool:
    """A token count: absent, or a whole number in range (not a bool, a float or a string)."""
    return value is None or (type(value) is int and 0 <= value <= MAX_REPORTED_TOKENS)


def reasoning_of(message: dict) -> str | None:
    """A reasoning model's thinking in a chat message or delta, as vLLM's reasoning parsers and DeepSeek's
    API give it (`reasoning_content`; `reasoning` in newer vLLM): the Responses and Messages APIs serve it
    as a reasoning item and a thinking block."""
    text = message.get("reasoning_content") or message.get("reasoning")
    return text if isinstance(text, str) and text else None
