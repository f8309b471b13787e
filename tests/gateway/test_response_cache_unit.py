"""The response cache's parts: an answer streamed and put back together, the local store's byte budget,
what the key reads, and a request's directives."""

from __future__ import annotations

import asyncio
import json

import pytest

from engine.server.errors import APIError
from gateway.backends.answers import UpstreamBytes, embedding_vectors
from gateway.cache_control import CacheControl
from gateway.cache_stores import LocalCacheStore
from gateway.cached_answers import StreamAssembler, replay_chunks
from gateway.response_cache import CachedAnswer, cache_key, wanted
from gateway.section_config import CacheConfig

CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "m", "system_fingerprint": "fp",
    "choices": [
        {"index": 0, "finish_reason": "tool_calls",
         "logprobs": {"content": [{"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}]},
         "message": {"role": "assistant", "content": "Let me look.", "reasoning_content": "thinking",
                     "tool_calls": [{"id": "call_1", "type": "function",
                                     "function": {"name": "f", "arguments": "{\"x\": 1}"}},
                                    {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}},
        {"index": 1, "finish_reason": "length", "logprobs": None,
         "message": {"role": "assistant", "content": "second sample"}},
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12},
}
COMPLETION = {
    "id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "m",
    "choices": [{"index": 0, "text": " one two", "finish_reason": "stop",
                 "logprobs": {"tokens": [" one", " two"], "token_logprobs": [-1.0, -2.0],
                              "top_logprobs": [{" one": -1.0}, {" two": -2.0}], "text_offset": [0, 4]}}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
}


async def assembled(answer: dict, kind: str) -> dict | None:
    assembler = StreamAssembler(kind)  # type: ignore[arg-type]
    async for chunk in replay_chunks(answer, kind):  # type: ignore[arg-type]
        assembler.add(chunk)
    return assembler.whole()


@pytest.mark.parametrize(("answer", "kind"), [(CHAT, "chat"), (COMPLETION, "completion")])
def test_an_answer_streamed_again_is_put_back_together_unchanged(answer: dict, kind: str) -> None:
    assert asyncio.run(assembled(answer, kind)) == answer


def test_a_stream_assembled_from_deltas_as_upstreams_send_them() -> None:
    envelope = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    deltas = [{"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"},
              {"tool_calls": [{"index": 0, "id": "call_9", "type": "function", "function": {"name": "f", "arguments": ""}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": ": 2}"}}]}]
    assembler = StreamAssembler("chat")
    for delta in deltas:
        assembler.add({**envelope, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    assert assembler.whole() is None  # not ended yet: nothing to keep
    assembler.add({**envelope, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    assembler.add({**envelope, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
    whole = assembler.whole()
    assert whole is not None
    message = whole["choices"][0]["message"]
    assert message["content"] == "Hello"
    assert message["tool_calls"] == [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 2}"}}]
    assert whole["usage"]["total_tokens"] == 3 and whole["object"] == "chat.completion"


def test_a_stream_with_fields_it_does_not_know_is_not_kept() -> None:
    assembler = StreamAssembler("chat")
    assembler.add({"id": "c", "choices": [{"index": 0, "delta": {"audio": {"id": "x"}}, "finish_reason": "stop"}]})
    assert assembler.whole() is None


def test_the_local_store_keeps_to_its_byte_budget_least_recent_out_first() -> None:
    async def run() -> None:
        store = LocalCacheStore(max_bytes=100)
        for key in "abc":
            await store.put(key, b"x" * 40, ttl_s=60)
        assert len(store) == 2 and store.bytes == 80 and await store.get("a") is None
        assert await store.get("b") is not None  # read: now the most recent
        await store.put("d", b"y" * 40, ttl_s=60)
        assert await store.get("c") is None and await store.get("b") is not None
        await store.put("huge", b"z" * 101, ttl_s=60)  # larger than the whole budget: not kept, nothing dropped
        assert len(store) == 2
        await store.put("short", b"s", ttl_s=0.01)
        await asyncio.sleep(0.02)
        assert await store.get("short") is None and store.bytes == 80

    asyncio.run(run())


def test_the_key_reads_what_shapes_the_answer_and_nothing_else() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "tools": [{"b": 1, "a": 2}]}
    key = cache_key("k1", "chat", "m", body)
    same = {"tools": [{"a": 2, "b": 1}], "temperature": 0, "messages": [{"content": "hi", "role": "user"}],
            "stream": True, "stream_options": {"include_usage": True}, "user": "u", "metadata": {"x": "y"},
            "model": "auto"}
    assert cache_key("k1", "chat", "m", same) == key
    assert cache_key("k2", "chat", "m", body) != key  # another API key
    assert cache_key("k1", "chat", "m2", body) != key  # routed to another model
    assert cache_key("k1", "completion", "m", body) != key
    assert cache_key("k1", "chat", "m", {**body, "max_tokens": 5}) != key
    assert key.startswith("m:")  # a model's entries flushed together
    assert cache_key("k1", "chat", "m", body, upstream="openai/gpt-4o") != cache_key(
        "k1", "chat", "m", body, upstream="openai/gpt-4o-2024-11-20")  # the name pointed at another model


def test_which_requests_the_cache_applies_to() -> None:
    none = CacheControl()
    deterministic, everything, opt_in = (CacheConfig(requests=r) for r in ("deterministic", "all", "opt_in"))
    assert wanted(deterministic, "chat", {"temperature": 0}, none)
    assert wanted(deterministic, "chat", {"seed": 3}, none) and wanted(deterministic, "chat", {"top_k": 1}, none)
    assert not wanted(deterministic, "chat", {}, none) and not wanted(deterministic, "chat", {"temperature": 0.2}, none)
    assert wanted(deterministic, "embedding", {}, none)
    assert wanted(everything, "chat", {}, none) and not wanted(opt_in, "chat", {"temperature": 0}, none)
    assert wanted(opt_in, "chat", {}, CacheControl(use=True))
    assert not wanted(everything, "embedding", {}, CacheControl(use=False))


def test_directives_from_the_body_and_the_header() -> None:
    assert CacheControl.of({"no-cache": True, "ttl": 60}, None) == CacheControl(no_cache=True, ttl_s=60.0)
    assert CacheControl.of(None, "no-store, s-maxage=30, use-cache") == CacheControl(use=True, no_store=True,
                                                                                      max_age_s=30.0)
    assert CacheControl.of({"use-cache": True}, "use-cache=false").use is False  # the header wins
    for body, header in [([], None), ({"ttl": -1}, None), ({"ttl": True}, None), ({"s-maxage": "x"}, None),
                         (None, "ttl=nan"), (None, "no-cache=maybe"), (None, "refresh")]:
        with pytest.raises(APIError) as refused:
            CacheControl.of(body, header)
        assert refused.value.status == 400


def test_an_entry_reads_back_as_it_was_kept() -> None:
    kept = CachedAnswer("m", 1700000000.5, b'{"a": 1}\n{"b": 2}')
    assert CachedAnswer.decode(kept.encode()) == kept


def test_vectors_are_cut_from_an_answer_in_the_inputs_order() -> None:
    answer = {"object": "list", "data": [{"object": "embedding", "index": 1, "embedding": [0.5, -1e-3]},
                                         {"object": "embedding", "index": 0, "embedding": "AAAA"}], "usage": {}}
    raw = json.dumps(answer).encode()
    assert embedding_vectors(UpstreamBytes.of({"usage": {}}, raw)) == [b'"AAAA"', b"[0.5, -0.001]"]  # as sent
    assert embedding_vectors(answer) == [b'"AAAA"', b"[0.5,-0.001]"]
