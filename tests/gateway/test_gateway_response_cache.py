"""The response cache on chat completions, over real sockets with the openai SDK: which requests it
serves again, the same answer whole or streamed (tool calls included), per key, coalesced when
identical requests come at once, shared through Redis by replicas, and nothing but the cache lost when
that Redis goes away. On the other endpoints (embeddings, Responses, Messages, batches) and its own
(the master key's flush): test_gateway_response_cache_endpoints.py."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.cache_control import CACHE_HEADER
from storage.export import export_outcomes
from tests.gateway.harness import PRICE_IN, PRICE_OUT, running_gateway, wait_until, write_config
from tests.gateway.response_cache_helpers import cached_config, chat, fresh
from tests.gateway.test_gateway_keys import MASTER, create_key
from tests.gateway.test_limits import REDIS_URL, needs_redis
from tests.gateway.upstream import UpstreamProcess
from tests.throwaway_redis import ThrowawayRedis


def streamed_text(response: httpx.Response) -> tuple[str, list[dict]]:
    events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    text = "".join((c.get("delta") or {}).get("content") or "" for e in events for c in e.get("choices") or ())
    return text, events


def test_a_deterministic_answer_is_served_again_whole_and_streamed(upstream: UpstreamProcess,
                                                                   tmp_path: Path) -> None:
    with running_gateway(cached_config(tmp_path, upstream)) as gw, gw.http() as http:
        client = gw.openai()
        prompt = fresh("[words:7]")
        first = client.chat.completions.with_raw_response.create(**chat(prompt, temperature=0))
        second = client.chat.completions.with_raw_response.create(**chat(prompt, temperature=0))
        assert upstream.stats()["requests"] == 1
        assert first.headers[CACHE_HEADER] == "miss" and second.headers[CACHE_HEADER] == "hit"
        assert int(second.headers["age"]) >= 0
        a, b = first.parse(), second.parse()
        assert b.choices[0].message.content == a.choices[0].message.content and len(a.choices[0].message.content.split()) == 7
        assert b.usage.completion_tokens == a.usage.completion_tokens == 7

        with http.stream("POST", "/v1/chat/completions", json=chat(
                prompt, temperature=0, stream=True, stream_options={"include_usage": True})) as streamed:
            assert streamed.headers[CACHE_HEADER] == "hit"
            text, events = streamed_text(streamed)
        assert text == a.choices[0].message.content
        assert events[-1]["usage"]["completion_tokens"] == 7 and events[-2]["choices"][0]["finish_reason"] == "stop"
        assert upstream.stats()["requests"] == 1

        rows = {r["request_id"]: r for r in gw.rows()}
        miss, hit = rows[first.headers["x-pitstop-request-id"]], rows[second.headers["x-pitstop-request-id"]]
        assert miss["cache_hit"] is False and miss["cost_usd"] == pytest.approx(miss["prompt_tokens"] * PRICE_IN
                                                                                + 7 * PRICE_OUT)
        assert miss["extra"]["cache"] == "miss"
        assert hit["cache_hit"] is True and hit["cost_usd"] == 0 and hit["deployment"] is None
        assert hit["model"] == "up" and hit["completion_tokens"] == 7 and hit["status"] == "ok"

        exported = tmp_path / "export.jsonl"
        assert export_outcomes(gw.storage_url, exported) == 1  # the answers served again are not training data
        assert json.loads(exported.read_text())["request_id"] == miss["request_id"]


def test_a_streamed_answer_is_kept_with_its_tool_calls(upstream: UpstreamProcess, tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]
    with running_gateway(cached_config(tmp_path, upstream)) as gw, gw.http() as http:
        prompt = fresh()
        with http.stream("POST", "/v1/chat/completions", json=chat(prompt, seed=7, tools=tools, stream=True)) as first:
            assert first.headers[CACHE_HEADER] == "miss"
            _, events = streamed_text(first)
        streamed_args = "".join(c["delta"]["tool_calls"][0]["function"].get("arguments") or ""
                                for e in events for c in e["choices"] if (c.get("delta") or {}).get("tool_calls"))
        whole = gw.openai().chat.completions.with_raw_response.create(**chat(prompt, seed=7, tools=tools))
        assert whole.headers[CACHE_HEADER] == "hit" and upstream.stats()["requests"] == 1
        message = whole.parse().choices[0]
        assert message.finish_reason == "tool_calls"
        call = message.message.tool_calls[0]
        assert call.function.name == "lookup" and call.function.arguments == streamed_args
        assert json.loads(call.function.arguments) == {"query": prompt}

        # Streamed again, the call comes back in OpenAI's chunk shape: the SDK's stream helper rebuilds it.
        with gw.openai().chat.completions.stream(**chat(prompt, seed=7, tools=tools)) as again:
            final = again.get_final_completion()
        assert final.choices[0].message.tool_calls[0].function.arguments == streamed_args
        assert upstream.stats()["requests"] == 1


def test_which_requests_are_cached(upstream: UpstreamProcess, tmp_path: Path) -> None:
    with running_gateway(cached_config(tmp_path, upstream)) as gw:
        client = gw.openai()

        def served(body: dict, **extra: object) -> str:
            before = upstream.stats()["requests"]
            raw = client.chat.completions.with_raw_response.create(**body, **extra)
            went = upstream.stats()["requests"] - before
            return f"{raw.headers.get(CACHE_HEADER, '-')}/{went}"

        sampled = chat(fresh(), temperature=0.7)
        assert [served(sampled), served(sampled)] == ["-/1", "-/1"]  # sampled: a fresh answer each time
        opted = {"extra_body": {"cache": {"use-cache": True}}}
        assert [served(sampled, **opted), served(sampled, **opted)] == ["miss/1", "hit/0"]

        greedy = chat(fresh(), temperature=0)
        assert served(greedy) == "miss/1"
        assert served(greedy, extra_body={"cache": {"no-cache": True}}) == "miss/1"  # asked afresh, and kept
        assert served(greedy, extra_headers={CACHE_HEADER: "use-cache=false"}) == "-/1"
        assert served(greedy, extra_headers={CACHE_HEADER: "s-maxage=3600"}) == "hit/0"
        time.sleep(0.05)
        assert served(greedy, extra_body={"cache": {"s-maxage": 0.01}}) == "miss/1"  # older than it accepts

        unkept = chat(fresh(), temperature=0)
        assert served(unkept, extra_body={"cache": {"no-store": True}}) == "miss/1"
        assert served(unkept) == "miss/1"
        assert served(unkept) == "hit/0"
        # The key is what shapes the answer: other sampling settings, another answer.
        assert served({**unkept, "max_tokens": 5}) == "miss/1"
        assert served({**unkept, "user": "someone-else", "metadata": {"run": "2"}}) == "hit/0"

        short = chat(fresh(), temperature=0)
        assert served(short, extra_body={"cache": {"ttl": 0.3}}) == "miss/1"
        time.sleep(0.5)
        assert served(short) == "miss/1"


def test_bad_cache_directives_are_a_400_naming_them(upstream: UpstreamProcess, tmp_path: Path) -> None:
    with running_gateway(cached_config(tmp_path, upstream)) as gw, gw.http() as http:
        for fields, headers, param in [
                ({"cache": "yes"}, {}, "cache"),
                ({"cache": {"no-cache": "true"}}, {}, "cache"),
                ({"cache": {"ttl": 0}}, {}, "cache"),
                ({"cache": {"forever": True}}, {}, "cache"),
                ({}, {CACHE_HEADER: "ttl=soon"}, CACHE_HEADER),
                ({}, {CACHE_HEADER: "keep-it"}, CACHE_HEADER)]:
            response = http.post("/v1/chat/completions", json=chat("x", **fields), headers=headers)
            assert response.status_code == 400, (fields, headers, response.text)
            assert response.json()["error"]["param"] == param
        assert upstream.stats()["requests"] == 0


def test_opt_in_and_all(upstream: UpstreamProcess, tmp_path: Path) -> None:
    with running_gateway(cached_config(tmp_path, upstream, requests="opt_in")) as gw:
        client = gw.openai()
        greedy = chat(fresh(), temperature=0)
        for _ in range(2):
            assert CACHE_HEADER not in client.chat.completions.with_raw_response.create(**greedy).headers
        assert upstream.stats()["requests"] == 2
    upstream.reset()
    with running_gateway(cached_config(tmp_path / "all", upstream, requests="all")) as gw:
        client = gw.openai()
        sampled = chat(fresh())
        headers = [client.chat.completions.with_raw_response.create(**sampled).headers[CACHE_HEADER]
                   for _ in range(2)]
        assert headers == ["miss", "hit"] and upstream.stats()["requests"] == 1


def test_each_key_reads_only_its_own_answers(upstream: UpstreamProcess, tmp_path: Path) -> None:
    for shared in (False, True):
        upstream.reset()
        raw = cached_config(tmp_path / str(shared), upstream, shared_across_keys=shared)
        raw["auth"] = {"require_keys": True, "master_key": MASTER}
        config = write_config(tmp_path / f"{shared}.yaml", raw)
        _, alice = create_key(config, "alice")
        _, bob = create_key(config, "bob")
        with running_gateway(raw) as gw:
            greedy = chat(fresh(), temperature=0)
            seen = [gw.openai(key).chat.completions.with_raw_response.create(**greedy).headers[CACHE_HEADER]
                    for key in (alice, bob, alice)]
        assert seen == (["miss", "hit", "hit"] if shared else ["miss", "miss", "hit"])


@pytest.mark.anyio
async def test_identical_requests_at_once_share_one_upstream_call(upstream: UpstreamProcess, tmp_path: Path) -> None:
    with running_gateway(cached_config(tmp_path, upstream)) as gw:
        client = gw.async_openai()
        body = chat(fresh("[delay:0.5]"), temperature=0)
        answers = await asyncio.gather(*(client.chat.completions.with_raw_response.create(**body) for _ in range(6)))
        assert upstream.stats()["requests"] == 1
        assert sorted(a.headers[CACHE_HEADER] for a in answers) == ["coalesced"] * 5 + ["miss"]
        assert len({a.parse().choices[0].message.content for a in answers}) == 1

        # One that fails leaves the others to ask for themselves.
        failing = chat(fresh("[delay:0.3] [fail:500]"), temperature=0)
        answers = await asyncio.gather(*(client.chat.completions.with_raw_response.create(**failing)
                                         for _ in range(3)), return_exceptions=True)
        assert all(getattr(a, "status_code", None) == 500 for a in answers)
        assert upstream.stats()["requests"] == 1 + 3


@needs_redis
def test_replicas_share_answers_through_redis(upstream: UpstreamProcess, tmp_path: Path) -> None:
    raw = cached_config(tmp_path, upstream, backend="redis")
    raw["redis_url"] = REDIS_URL
    with running_gateway(raw) as a, running_gateway({**raw, "storage": {
            "url": f"sqlite:///{tmp_path / 'b.db'}", "spool_path": None}}) as b:
        greedy = chat(fresh(), temperature=0)
        first = a.openai().chat.completions.with_raw_response.create(**greedy)
        second = b.openai().chat.completions.with_raw_response.create(**greedy)
        assert (first.headers[CACHE_HEADER], second.headers[CACHE_HEADER]) == ("miss", "hit")
        assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
        assert upstream.stats()["requests"] == 1

        x, y, z = fresh(), fresh(), fresh()  # embeddings: each input's entry read in one MGET, written in one pipeline
        with a.http() as http_a, b.http() as http_b:
            assert http_a.post("/v1/embeddings", json={"model": "embed", "input": [x, y]}).headers[CACHE_HEADER] == "miss"
            mixed = http_b.post("/v1/embeddings", json={"model": "embed", "input": [y, z, x]})
            assert mixed.headers[CACHE_HEADER] == "partial" and upstream.stats()["bodies"][-1]["input"] == [z]
            assert http_a.post("/v1/embeddings", json={"model": "embed", "input": [z]}).headers[CACHE_HEADER] == "hit"
        assert upstream.stats()["requests"] == 3


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    server = ThrowawayRedis()
    server.start()
    yield server
    server.kill()


def test_redis_going_away_costs_only_the_cache(upstream: UpstreamProcess, tmp_path: Path,
                                                throwaway_redis: ThrowawayRedis) -> None:
    raw = cached_config(tmp_path, upstream, backend="redis")
    raw["redis_url"] = throwaway_redis.url
    raw["limits"] = {"fail_open": True}
    with running_gateway(raw) as gw:
        client = gw.openai()
        greedy = chat(fresh(), temperature=0)

        def seen() -> str:
            return client.chat.completions.with_raw_response.create(**greedy).headers[CACHE_HEADER]

        assert seen() == "miss"
        wait_until(lambda: seen() == "hit", what="a kept answer served again")
        before = upstream.stats()["requests"]
        throwaway_redis.kill()
        for _ in range(5):  # served by the upstream, as without a cache
            answer = client.chat.completions.with_raw_response.create(**greedy)
            assert answer.headers[CACHE_HEADER] == "miss" and answer.parse().choices[0].message.content
        assert upstream.stats()["requests"] == before + 5
        metrics = gw.http().get("/metrics").text
        assert 'pitstop_response_cache_total{outcome="error"}' in metrics

        throwaway_redis.start()  # back: kept and served again once the store's rest (5 s) is over
        wait_until(lambda: seen() == "hit", timeout=30, what="the cache back with its Redis")
