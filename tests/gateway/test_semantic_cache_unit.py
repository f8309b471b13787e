"""The semantic cache's parts without a gateway: what is compared and what must be equal, the guard,
the local index's bounds and expiry, and the Redis index's entries and copies."""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import pytest

from gateway.cache_stores import RedisCacheStore
from gateway.semantic_index import LocalSemanticIndex
from gateway.semantic_redis import RedisSemanticIndex, decode_entry, encode_entry
from gateway.semantic_text import compared_part, compatible, embedded, fingerprint
from tests.gateway.test_limits import REDIS_URL, needs_redis


def unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_the_last_user_message_is_compared_and_the_rest_must_be_equal() -> None:
    body = {"temperature": 0, "messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "name": "ann", "content": "Hi there?"}]}
    compared = compared_part("chat", body)
    assert compared is not None and compared.text == "Hi there?"
    assert compared.rest == {"temperature": 0, "messages": [{"role": "system", "content": "Be brief."},
                                                            {"role": "user", "name": "ann"}]}
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    assert compared_part("chat", parts).text == "a\nb"  # type: ignore[union-attr]
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    assert compared_part("chat", {"messages": [{"role": "user", "content": [image]}]}) is None  # not compared
    assert compared_part("chat", {"messages": [{"role": "user", "content": "q"},
                                               {"role": "assistant", "content": "a"}]}) is None
    assert compared_part("completion", {"prompt": "p", "max_tokens": 3}).rest == {"max_tokens": 3}  # type: ignore[union-attr]
    assert compared_part("completion", {"prompt": ["p", "q"]}) is None
    assert compared_part("completion", {"prompt": "p", "echo": True}) is None
    assert compared_part("embedding", {"input": "x"}) is None


@pytest.mark.parametrize(("a", "b", "passes"), [
    ("What is 17 x 23?", "what is 17 x 23", True),
    ("What is 17 x 23?", "What is 17 x 24?", False),
    ("What is 17 x 23?", "What is 23 x 17?", False),
    ("Who came first?", "Who came second?", False),
    ("Say 'hi' to Ann", "Say 'hello' to Ann", False),
    ("Janet's ducks", "Janet’s ducks", True),  # an apostrophe is no quote
    ("What does `ls -a` do?", "What does `ls -l` do?", False),
    ("Is it safe?", "Is it not safe?", False),
    ("Is it safe?", "Isn't it safe?", False),
    ("Convert Celsius to Fahrenheit", "Convert Fahrenheit to Celsius", False),  # the same words swapped
    ("How do I reverse a list in Python?", "In Python, how do I reverse a list?", False),  # the guard's cost
    ("How do I reverse a list in Python?", "How can I reverse a Python list?", True),  # other words too
])
def test_the_guard(a: str, b: str, passes: bool) -> None:
    assert compatible(fingerprint(a), fingerprint(b)) is passes


def test_what_is_embedded_drops_case_spacing_and_the_final_punctuation() -> None:
    assert embedded("  What IS\tthe   capital?! ") == embedded("what is the capital") == "what is the capital"


def test_the_local_index_bounds_its_buckets_and_expires_entries() -> None:
    async def run() -> None:
        index = LocalSemanticIndex(max_entries=2, max_total=3)
        pr = fingerprint("q")
        await index.add("m:a", "k1", unit(1, 0), pr, 60)
        await index.add("m:a", "k2", unit(0, 1), pr, 60)
        found = await index.search("m:a", unit(1, 0.1), pr, 0.9)
        assert [c.key for c in found.candidates] == ["k1"] and found.best == pytest.approx(0.995, abs=1e-3)
        index.served("m:a", "k1")
        await index.add("m:a", "k3", unit(1, 1), pr, 60)  # full: k2, the least recently served, goes
        assert index.buckets["m:a"].keys == ["k1", "k3"]
        await index.add("m:a", "k3", unit(1, 1), pr, 60)  # the same key again: once
        assert index.buckets["m:a"].keys == ["k1", "k3"]
        await index.add("m:b", "k4", unit(1, 0), pr, 60)
        await index.add("m:b", "k5", unit(1, 0), pr, 60)  # four in all: the least recent bucket goes
        assert list(index.buckets) == ["m:b"]
        guarded = await index.search("m:b", unit(1, 0), fingerprint("q 2"), 0.9)
        assert guarded.candidates == [] and guarded.guarded
        await index.add("x:c", "k6", unit(1, 0), pr, 0.05)
        time.sleep(0.1)
        assert (await index.search("x:c", unit(1, 0), pr, 0.5)).candidates == []
        assert await index.delete_prefix("m:") == 2 and list(index.buckets) == ["x:c"]

    asyncio.run(run())


def test_an_entry_on_redis_reads_back() -> None:
    vector = unit(*np.random.default_rng(0).normal(size=384))
    key, back, pr, expires = decode_entry(encode_entry("m:abc", vector, fingerprint("q"), 12.5))
    assert (key, pr, expires) == ("m:abc", fingerprint("q"), 12.5)
    assert float(back @ vector) == pytest.approx(1.0, abs=1e-3) and len(encode_entry("m:abc", vector, pr, 1)) < 900


@needs_redis
def test_replicas_copies_of_a_redis_bucket_take_only_what_was_written_since() -> None:
    async def run() -> None:
        a = RedisSemanticIndex(RedisCacheStore(REDIS_URL), max_entries=3, max_total=10)
        b = RedisSemanticIndex(RedisCacheStore(REDIS_URL), max_entries=3, max_total=10)
        model, pr = f"m{uuid.uuid4().hex[:8]}", fingerprint("q")
        bucket = f"{model}:x"
        read, sent = b._read, []  # what each of b's lookups carried back from Redis

        async def counted(**kwargs: object) -> list:
            reply = await read(**kwargs)
            sent.append(len(reply) - 3)
            return reply

        b._read = counted  # type: ignore[assignment]
        try:
            await a.add(bucket, "k1", unit(1, 0), pr, 60)
            assert [c.key for c in (await b.search(bucket, unit(1, 0), pr, 0.9)).candidates] == ["k1"]
            assert (await b.search(bucket, unit(1, 0), pr, 0.9)).best is not None
            assert sent == [1, 0] and len(b.copies.buckets[bucket]) == 1  # nothing new: no entry sent again
            for i in range(2, 6):
                await a.add(bucket, f"k{i}", unit(1, i / 100), pr, 60)
            await b.search(bucket, unit(1, 0), pr, 0.9)
            assert sent[-1] == 3  # what was written since, as far as the list still holds it
            assert b.copies.buckets[bucket].keys == ["k3", "k4", "k5"]  # the list's newest three, as Redis holds
            await a.add(bucket, "k6", unit(1, 0), pr, 60)
            await b.search(bucket, unit(1, 0), pr, 0.9)
            assert sent[-1] == 1 and b.copies.buckets[bucket].keys == ["k4", "k5", "k6"]
            assert await a.delete_prefix(f"{model}:") == 3
            await a.add(bucket, "k9", unit(0, 1), pr, 60)  # written afresh: b's copy is replaced, not added to
            await b.search(bucket, unit(1, 0), pr, 0.9)
            assert b.copies.buckets[bucket].keys == ["k9"]
        finally:
            await a.delete_prefix(f"{model}:")
            for index in (a, b):
                await index.store.close()

    asyncio.run(run())
