"""The response cache over real sockets with the openai SDK: which requests it serves again, the same
answer whole or streamed, per key, coalesced when identical requests come at once, shared through
Redis by replicas, and nothing but the cache lost when that Redis goes away."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.cache_control import CACHE_HEADER
from storage.export import export_outcomes
from tests.gateway.harness import (
    PRICE_IN,
    PRICE_OUT,
    gateway_config,
    model_entry,
    request_id_of,
    running_gateway,
    wait_until,
    write_config,
)
from tests.gateway.test_gateway_keys import MASTER, create_key
from tests.gateway.test_limits import REDIS_URL, needs_redis
from tests.gateway.upstream import UpstreamProcess
from tests.throwaway_redis import ThrowawayRedis


def cached_config(tmp_path: Path, upstream: UpstreamProcess, suffix: str = "", **cache: object) -> dict:
    """Models `up` (chat) and `embed` (embeddings), with `suffix` after their names."""
    embed = model_entry(f"embed{suffix}", upstream.api_base, provider="hosted_vllm", transport="auto")
    embed["model_info"]["mode"] = "embedding"
    return gateway_config(tmp_path, [model_entry(f"up{suffix}", upstream.api_base), embed], cache=cache)


def chat(text: str, **fields: object) -> dict:
    return {"model": "up", "messages": [{"role": "user", "content": text}], **fields}


def fresh(words: str = "") -> str:
    """A prompt no other test (or earlier run, on a shared Redis) has sent."""
    return f"{uuid.uuid4().hex} {words}".strip()


def streamed_text(response: httpx.Response) -> tuple[str, list[dict]]:
    events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    text = "".join((c.get("delta") or {}).get("content") or "" for e in events for c in e.get("choices") or ())
    return text, events


@pytest.fixture
def upstream(upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> UpstreamProcess:
    return upstreams[0]


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


def test_embeddings_are_kept_per_input_and_only_new_inputs_go_upstream(upstream: UpstreamProcess,
                                                                        tmp_path: Path) -> None:
    with running_gateway(cached_config(tmp_path, upstream)) as gw, gw.http() as http:
        a, b, c = fresh("one two"), fresh("three"), fresh("four five six")
        first = http.post("/v1/embeddings", json={"model": "embed", "input": [a, b]})
        assert first.headers[CACHE_HEADER] == "miss" and b'"object": "list"' in first.content  # the upstream's bytes
        vectors = {text: item["embedding"] for text, item in zip([a, b], first.json()["data"], strict=True)}

        again = http.post("/v1/embeddings", json={"model": "embed", "input": [a, b]})
        assert again.headers[CACHE_HEADER] == "hit" and upstream.stats()["requests"] == 1
        assert [d["embedding"] for d in again.json()["data"]] == [vectors[a], vectors[b]]
        assert again.json()["usage"] == {"prompt_tokens": 0, "total_tokens": 0}  # nothing read upstream

        # A batch of new and known inputs: only the new ones go upstream, and come back in their places.
        mixed = gw.openai().embeddings.with_raw_response.create(model="embed", input=[c, b, a],
                                                              encoding_format="float")
        assert mixed.headers[CACHE_HEADER] == "partial" and upstream.stats()["requests"] == 2
        assert upstream.stats()["bodies"][-1]["input"] == [c]
        answer = mixed.parse()
        assert [d.index for d in answer.data] == [0, 1, 2]
        assert [d.embedding for d in answer.data[1:]] == [vectors[b], vectors[a]]
        assert answer.data[0].embedding[:3] == [4.0, float(ord("a")), 0.0]  # c's: four words, asked alone
        assert answer.usage.prompt_tokens == 4  # what the upstream read: c alone

        # Another encoding is another answer; a single string is the same input as a list of one.
        b64 = http.post("/v1/embeddings", json={"model": "embed", "input": a, "encoding_format": "base64"})
        assert b64.headers[CACHE_HEADER] == "miss"
        single = http.post("/v1/embeddings", json={"model": "embed", "input": a})
        assert single.headers[CACHE_HEADER] == "hit" and single.json()["data"][0]["embedding"] == vectors[a]
        assert upstream.stats()["requests"] == 3

        rows = {r["request_id"]: r for r in gw.rows()}
        assert rows[request_id_of(again)]["cache_hit"] is True and rows[request_id_of(again)]["cost_usd"] == 0
        partial = rows[mixed.headers["x-pitstop-request-id"]]
        assert partial["cache_hit"] is False and partial["prompt_tokens"] == 4 and partial["cost_usd"] > 0
        assert partial["extra"]["cached_inputs"] == 2


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


def test_the_responses_and_messages_apis_are_cached_by_header(upstream: UpstreamProcess, tmp_path: Path) -> None:
    import anthropic

    with running_gateway(cached_config(tmp_path, upstream)) as gw:
        client, prompt = gw.openai(), fresh("[words:4]")
        answers = [client.responses.with_raw_response.create(model="up", input=prompt, temperature=0)
                   for _ in range(2)]
        assert [a.headers[CACHE_HEADER] for a in answers] == ["miss", "hit"]
        first, second = (a.parse() for a in answers)
        assert first.id != second.id and first.output_text == second.output_text  # a Response of its own
        assert client.responses.retrieve(second.id).output_text == first.output_text  # and stored as any
        with client.responses.stream(model="up", input=prompt, temperature=0) as stream:
            assert stream.get_final_response().output_text == first.output_text

        claude = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
        kwargs = {"model": "up", "max_tokens": 16, "messages": [{"role": "user", "content": prompt}]}
        sent = [claude.messages.with_raw_response.create(**kwargs, extra_headers={CACHE_HEADER: "use-cache"})
                for _ in range(2)]
        assert [s.headers[CACHE_HEADER] for s in sent] == ["miss", "hit"]
        assert sent[0].parse().content[0].text == sent[1].parse().content[0].text
        assert upstream.stats()["requests"] == 2  # one for the Responses API's chat, one for the Messages one


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


def test_a_batch_run_again_is_answered_from_the_cache(upstream: UpstreamProcess, tmp_path: Path) -> None:
    from tests.gateway.test_gateway_batches import ended, jsonl

    prompts = [fresh(f"[words:{i + 1}]") for i in range(5)]
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": chat(prompts[i % 5], temperature=0)} for i in range(8)]  # three lines ask again
    with running_gateway(cached_config(tmp_path, upstream)) as gw, gw.openai() as client:
        outputs = []
        for _ in range(2):
            uploaded = client.files.create(file=("eval.jsonl", jsonl(lines)), purpose="batch")
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            done = ended(client, batch.id)
            assert done.status == "completed" and done.output_file_id is not None
            outputs.append([json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()])
        assert upstream.stats()["requests"] == 5  # each distinct question once, over both runs
        texts = [[r["response"]["body"]["choices"][0]["message"]["content"] for r in run] for run in outputs]
        assert texts[0] == texts[1] and [len(t.split()) for t in texts[0]] == [1, 2, 3, 4, 5, 1, 2, 3]
        second = gw.rows([r["response"]["request_id"] for r in outputs[1]])
        assert len(second) == 8 and all(row["cache_hit"] and row["cost_usd"] == 0 for row in second)


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


def flush_and_check(gw_url: str, suffix: str = "") -> None:
    """Keep a chat and an embedding, drop the embeddings model's answers, then all of them."""
    with httpx.Client(base_url=gw_url, timeout=30) as http:
        master = {"authorization": f"Bearer {MASTER}"}
        body, vectors = chat(fresh(), temperature=0, model=f"up{suffix}"), {"model": f"embed{suffix}", "input": fresh()}
        post = [("/v1/chat/completions", body), ("/v1/embeddings", vectors)]

        def seen() -> list[str]:
            return [http.post(path, json=b, headers=master).headers[CACHE_HEADER] for path, b in post]

        assert seen() == ["miss", "miss"] and seen() == ["hit", "hit"]
        assert http.delete("/v1/cache", params={"model": f"embed{suffix}"}).status_code == 401  # the master key only
        flushed = http.delete("/v1/cache", params={"model": f"embed{suffix}"}, headers=master)
        assert flushed.status_code == 200 and flushed.json() == {"object": "cache.flush", "model": f"embed{suffix}",
                                                                 "deleted": 1}
        assert seen() == ["hit", "miss"]
        unknown = http.delete("/v1/cache", params={"model": "nope"}, headers=master)
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
        if not suffix:  # all of it: only where no other test's entries share the store
            assert http.delete("/v1/cache", headers=master).json()["deleted"] == 2
            assert seen() == ["miss", "miss"]


def test_the_master_key_flushes_the_cache(upstream: UpstreamProcess, tmp_path: Path) -> None:
    raw = cached_config(tmp_path, upstream)
    raw["auth"] = {"require_keys": True, "master_key": MASTER}
    with running_gateway(raw) as gw:
        flush_and_check(gw.url)
    off = gateway_config(tmp_path / "off", [model_entry("up", upstream.api_base)],
                         auth={"require_keys": True, "master_key": MASTER})
    with running_gateway(off) as gw, gw.http() as http:
        refused = http.delete("/v1/cache", headers={"authorization": f"Bearer {MASTER}"})
        assert refused.status_code == 404 and "cache" in refused.json()["error"]["message"]


@needs_redis
def test_a_flush_on_redis_empties_every_replica_and_a_model_pointed_elsewhere_starts_afresh(
        upstream: UpstreamProcess, tmp_path: Path) -> None:
    suffix = f"-{uuid.uuid4().hex[:8]}"  # this run's models alone are flushed from the shared Redis
    raw = cached_config(tmp_path, upstream, suffix, backend="redis")
    raw |= {"redis_url": REDIS_URL, "auth": {"require_keys": True, "master_key": MASTER}}
    with running_gateway(raw) as gw:
        flush_and_check(gw.url, suffix)
        answer = chat(fresh(), temperature=0, model=f"up{suffix}")
        with gw.http() as http:
            master = {"authorization": f"Bearer {MASTER}"}
            assert http.post("/v1/chat/completions", json=answer, headers=master).headers[CACHE_HEADER] == "miss"
    moved = json.loads(json.dumps(raw))  # the same name, now served by another upstream model
    moved["model_list"][0]["litellm_params"]["model"] = f"hosted_vllm/up{suffix}"
    moved["storage"] = {"url": f"sqlite:///{tmp_path / 'moved.db'}", "spool_path": None}
    with running_gateway(moved) as gw, gw.http() as http:
        master = {"authorization": f"Bearer {MASTER}"}
        assert http.post("/v1/chat/completions", json=answer, headers=master).headers[CACHE_HEADER] == "miss"
        assert http.post("/v1/chat/completions", json=answer, headers=master).headers[CACHE_HEADER] == "hit"
