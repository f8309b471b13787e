"""Fuzz what an upstream may answer (gateway/backends/answers.py): any JSON value is either refused as
a 502 or read whole by everything the gateway does with an answer (the outcome row's text, tool
calls, tokens and cost, verification's text, the JSON served); hypothesis draws near-OpenAI answers
with wrong types."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.backends.answers import (
    MAX_REPORTED_TOKENS,
    UpstreamBytes,
    checked_answer,
    checked_chunk,
    checked_embeddings,
    embeddings_answer,
    large_json,
    strict_json,
)
from gateway.backends.base import BackendError, Kind
from gateway.image_tokens import DEFAULT
from gateway.outcomes import OutcomeDraft, usage_tokens
from gateway.request_body import parse_embeddings_request
from gateway.verify import _chunk_text, answer_text

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=8))
anything = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                        max_leaves=8)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, anything)


counts = maybe(st.integers(0, 5000))
usages = st.fixed_dictionaries({}, optional={"prompt_tokens": counts, "completion_tokens": counts,
                                             "total_tokens": counts,
                                             "prompt_tokens_details": maybe(st.fixed_dictionaries(
                                                 {}, optional={"cached_tokens": counts}))})
tool_calls = st.lists(maybe(st.fixed_dictionaries(
    {"function": maybe(st.fixed_dictionaries({"name": maybe(st.text(max_size=5)),
                                              "arguments": maybe(st.text(max_size=5))}))})), max_size=2)
messages = st.fixed_dictionaries({}, optional={"role": maybe(st.just("assistant")), "content": maybe(st.text(max_size=8)),
                                               "tool_calls": maybe(tool_calls)})
choices = st.lists(maybe(st.fixed_dictionaries({}, optional={
    "message": maybe(messages), "delta": maybe(messages), "text": maybe(st.text(max_size=8)),
    "finish_reason": maybe(st.sampled_from(["stop", "length", "tool_calls"]))})), max_size=2)
answers = maybe(st.fixed_dictionaries({}, optional={"choices": maybe(choices), "usage": maybe(usages),
                                                    "error": maybe(st.fixed_dictionaries({"message": st.text(max_size=5)}))}))


def _read_as_the_gateway_does(draft: OutcomeDraft) -> None:
    draft.deployment = None
    prompt, completion, cached = draft.tokens
    assert all(type(n) is int and 0 <= n <= 3 * MAX_REPORTED_TOKENS for n in (prompt, completion, cached))
    assert math.isfinite(prompt * 1e-6 + completion * 2e-6)  # the row's cost
    assert isinstance("".join(draft.completion_parts), str)  # raises if a part is not text
    assert all(isinstance(name, str) for name in draft.tool_calls)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=answers, kind=st.sampled_from(["chat", "completion"]))
@example(body={"choices": [{"message": {"tool_calls": [{"function": {"name": 1}}]}}]}, kind="chat")
def test_any_whole_answer_is_refused_or_read_whole(body: Any, kind: Kind) -> None:
    try:
        checked = checked_answer(copy.deepcopy(body))
    except BackendError as error:
        assert error.status == 502 and error.retryable
        return
    draft = OutcomeDraft()
    draft.take_response(checked)
    _read_as_the_gateway_does(draft)
    answer_text(checked, kind)
    usage_tokens(checked.get("usage"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunk=answers, kind=st.sampled_from(["chat", "completion"]))
@example(chunk={"choices": [{"delta": {"tool_calls": [{"function": {"name": 1, "arguments": ""}}]}}]}, kind="chat")
def test_any_stream_chunk_is_refused_or_read_whole(chunk: Any, kind: Kind) -> None:
    try:
        checked = checked_chunk(copy.deepcopy(chunk))
    except BackendError as error:
        assert error.status == 502
        return
    draft = OutcomeDraft()
    draft.take_chunk(checked)
    _read_as_the_gateway_does(draft)
    _chunk_text(checked)


vectors = maybe(st.one_of(st.lists(st.floats(-1, 1), max_size=3), st.text(max_size=8)))
embedding_answers = maybe(st.fixed_dictionaries({}, optional={
    "data": maybe(st.lists(maybe(st.fixed_dictionaries({}, optional={"embedding": vectors, "index": counts})),
                           max_size=3)),
    "usage": maybe(usages), "error": maybe(st.fixed_dictionaries({"message": st.text(max_size=5)}))}))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=embedding_answers)
def test_any_embeddings_answer_is_refused_or_served_and_billed(body: Any) -> None:
    try:
        checked = checked_embeddings(copy.deepcopy(body))
    except BackendError as error:
        assert error.status == 502 and error.retryable
        return
    assert all(isinstance(item["embedding"], list | str) for item in checked["data"])
    draft = OutcomeDraft()
    draft.request = parse_embeddings_request({"model": "m", "input": "some words to embed"})
    draft.usage = checked.get("usage")
    _read_as_the_gateway_does(draft)
    if draft.usage is None:  # what serving.embed serves when the upstream gave no usage it can bill from
        draft.deployment = SimpleNamespace(image_tokens=DEFAULT)  # type: ignore[assignment]  # any deployment
        assert draft.estimated_usage() == {"prompt_tokens": 5, "total_tokens": 5}


@settings(max_examples=300, deadline=None)
@given(value=st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)),
                          lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                  st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                          max_leaves=8))
def test_large_json_reads_what_strict_json_reads(value: Any) -> None:
    """orjson (embeddings' reader) and the stdlib agree, a UTF-16 surrogate alone included (orjson
    refuses it; the stdlib reads it), and both refuse NaN."""
    import json

    raw = json.dumps(value).encode()
    assert large_json(raw) == strict_json(raw) == value
    assert large_json(b'{"a": "x\\ud83d"}') == {"a": "x\ud83d"}
    for not_json in (b"[NaN]", b'{"a": Infinity}', b"{"):
        try:
            large_json(not_json)
        except ValueError:
            continue
        raise AssertionError(f"read {not_json!r}")


def _read_whole(raw: bytes) -> dict | None:
    """The embeddings answer read whole (every float), as before msgspec: None where it is refused."""
    try:
        answer = large_json(raw)
    except ValueError:
        return None
    try:
        return checked_embeddings(answer)
    except BackendError:
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=embedding_answers)
@example(body={"data": [{"embedding": [1.0, "x"]}], "usage": {"prompt_tokens": 1}})
@example(body={"data": [{"embedding": None}], "usage": {"prompt_tokens": 1}})
@example(body={"data": [], "usage": {"": -(2**63) - 1}})  # past 64 bits: a float read whole (hypothesis found it)
def test_an_embeddings_answer_skimmed_agrees_with_it_read_whole(body: Any) -> None:
    """msgspec skims a billable answer (its vectors skipped); it must take and refuse what reading every
    float takes and refuses, and bill the same usage."""
    import json

    raw = json.dumps(body).encode()
    whole = _read_whole(raw)
    try:
        skimmed = embeddings_answer(raw)
    except BackendError as error:
        assert error.status == 502 and whole is None
        return
    assert whole is not None and skimmed.get("usage") == whole.get("usage")
    assert isinstance(skimmed, UpstreamBytes) == (whole.get("usage") is not None)
    for broken in (raw.replace(b"]", b",]", 1), raw.replace(b"1.0", b"NaN", 1), raw[:-1]):
        if broken != raw and _read_whole(broken) is None:
            try:
                embeddings_answer(broken)
            except BackendError:
                continue
            raise AssertionError(f"skimmed what reading whole refuses: {broken[:200]!r}")


def test_a_billable_batch_is_skimmed_not_read() -> None:
    import json

    body = {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [0.25] * 8} for i in range(3)]
            + [{"object": "embedding", "index": 3, "embedding": "AACAPg=="}], "usage": {"prompt_tokens": 7}}
    raw = json.dumps(body).encode()
    skimmed = embeddings_answer(raw)
    assert isinstance(skimmed, UpstreamBytes) and skimmed.raw is raw
    assert dict(skimmed) == {"usage": {"prompt_tokens": 7}}  # no vector was made into floats
    without_usage = embeddings_answer(json.dumps({**body, "usage": None}).encode())
    assert not isinstance(without_usage, UpstreamBytes) and without_usage["data"][0]["embedding"] == [0.25] * 8
