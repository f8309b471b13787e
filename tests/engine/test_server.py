"""The OpenAI-compatible server over a real socket, on the tiny model and the torch runner, driven
by the openai SDK (sync and async) and httpx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from engine.async_engine import AsyncEngine
from engine.build import build_engine
from engine.server.app import create_app
from tests.engine.serving import serve_in_thread

MODEL = "tiny"
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 6  # several full KV blocks
NO_EOS = {"ignore_eos": True}  # a random model may pick EOS at any step: fix the output lengths


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> AsyncEngine:
    return build_engine(tiny_model_dir, num_blocks=256, block_size=16, max_model_len=512, max_num_seqs=8)


@pytest.fixture(scope="module")
def base_url(engine: AsyncEngine) -> Iterator[str]:
    with serve_in_thread(create_app(engine, MODEL)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_models_and_health(client: openai.OpenAI, base_url: str):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok"}


def test_completion_with_usage_and_cached_tokens_on_a_repeated_prompt(client: openai.OpenAI):
    first = client.completions.create(model=MODEL, prompt=LONG_PROMPT, max_tokens=5, temperature=0,
                                      extra_body=NO_EOS)
    assert first.object == "text_completion" and first.id.startswith("cmpl-")
    choice = first.choices[0]
    assert choice.finish_reason == "length" and isinstance(choice.text, str)
    usage = first.usage
    assert usage.completion_tokens == 5 and usage.prompt_tokens > 32
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    again = client.completions.create(model=MODEL, prompt=LONG_PROMPT, max_tokens=5, temperature=0,
                                      extra_body=NO_EOS)
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached >= 32 and cached % 16 == 0 and cached < again.usage.prompt_tokens


def test_completion_from_token_ids(client: openai.OpenAI):
    out = client.completions.create(model=MODEL, prompt=[5, 6, 7, 8], max_tokens=3, extra_body=NO_EOS)
    assert out.usage.prompt_tokens == 4 and out.usage.completion_tokens == 3


def test_chat_completion_renders_the_template_with_tools(client: openai.OpenAI):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, extra_body=NO_EOS)
    assert plain.object == "chat.completion"
    assert plain.choices[0].message.role == "assistant" and plain.choices[0].finish_reason == "length"
    assert plain.usage.completion_tokens == 4
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object", "properties": {}}}}]
    with_tools = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, max_tokens=4,
                                                extra_body=NO_EOS)
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens
    no_tools = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, tool_choice="none",
                                              max_tokens=4, extra_body=NO_EOS)
    assert no_tools.usage.prompt_tokens == plain.usage.prompt_tokens


def test_chat_without_max_tokens_runs_to_the_end_of_the_context(client: openai.OpenAI):
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 400}],
                                         extra_body=NO_EOS)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.total_tokens == 512


def test_streaming_chat_with_usage(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=6, stream=True,
        stream_options={"include_usage": True}, extra_body=NO_EOS)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_completion_matches_its_token_count(client: openai.OpenAI):
    stream = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=7, stream=True,
                                       extra_body=NO_EOS)
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk


def test_raw_sse_framing(base_url: str):
    body = {"model": MODEL, "prompt": "abc", "max_tokens": 3, "stream": True, **NO_EOS}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    assert json.loads(events[-3][len("data: "):])["choices"][0]["finish_reason"] == "length"


def test_async_client_concurrent_requests(base_url: str):
    async def main():
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=30)
        async with client:
            whole = [client.completions.create(model=MODEL, prompt=f"request {i}", max_tokens=4,
                                               extra_body=NO_EOS) for i in range(4)]
            stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "s"}],
                                                          max_tokens=4, stream=True, extra_body=NO_EOS)
            results = await asyncio.gather(*whole)
            chunks = [c async for c in stream]
        return results, chunks

    results, chunks = asyncio.run(main())
    assert all(r.usage.completion_tokens == 4 for r in results)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_session_pin_control_api(client: openai.OpenAI, base_url: str):
    sessions = f"{base_url}/v1/engine/sessions"
    assert httpx.post(f"{sessions}/agent-1/pin", json={"ttl_s": 30}).status_code == 404
    assert httpx.get(f"{sessions}/agent-1").status_code == 404
    client.completions.create(model=MODEL, prompt=LONG_PROMPT + " turn one", max_tokens=3,
                              extra_body={"session_id": "agent-1", **NO_EOS})
    info = httpx.get(f"{sessions}/agent-1").json()
    assert info["turns"] == 1 and info["cached_tokens"] >= 32 and info["pinned_blocks"] == 0
    pinned = httpx.post(f"{sessions}/agent-1/pin", json={"ttl_s": 30}).json()
    assert pinned["pinned_blocks"] == info["cached_tokens"] // 16 and pinned["session_id"] == "agent-1"
    assert httpx.post(f"{sessions}/agent-1/extend", json={"ttl_s": 60}).json()["extended"] is True
    info = httpx.get(f"{sessions}/agent-1").json()
    assert info["pinned_blocks"] == pinned["pinned_blocks"] and 59 < info["pin_ttl_remaining_s"] <= 60
    assert httpx.get(f"{base_url}/v1/engine/stats").json()["blocks"]["pinned"] >= pinned["pinned_blocks"]
    assert httpx.delete(f"{sessions}/agent-1/pin").json() == {"session_id": "agent-1", "unpinned": True}
    assert httpx.delete(f"{sessions}/agent-1/pin").json()["unpinned"] is False
    missing = httpx.post(f"{sessions}/agent-1/extend", json={"ttl_s": 5})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "pin_not_found"


def test_pin_ttl_on_the_request_pins_when_it_finishes(client: openai.OpenAI, base_url: str):
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=2,
                                   extra_body={"session_id": "agent-2", "pin_ttl_s": 120, **NO_EOS})
    info = httpx.get(f"{base_url}/v1/engine/sessions/agent-2").json()
    assert info["pinned_blocks"] >= 2 and info["pin_ttl_remaining_s"] > 100
    httpx.delete(f"{base_url}/v1/engine/sessions/agent-2/pin")


def test_metrics_scrape(client: openai.OpenAI, base_url: str):
    client.completions.create(model=MODEL, prompt=LONG_PROMPT, max_tokens=2, extra_body=NO_EOS)
    httpx.post(f"{base_url}/v1/completions", json={"model": MODEL})  # a 400
    text = httpx.get(f"{base_url}/metrics").text
    for name in ("pitstop_engine_requests_total{", "pitstop_engine_request_errors_total{",
                 "pitstop_engine_time_to_first_token_seconds_bucket{", "pitstop_engine_request_latency_seconds_count{",
                 'pitstop_engine_tokens_total{kind="cached_prompt"}', 'pitstop_engine_kv_blocks{state="used"}',
                 'pitstop_engine_kv_blocks{state="pinned"}', 'pitstop_engine_kv_blocks{state="cached_free"}',
                 "pitstop_engine_prefix_hit_tokens_total", 'pitstop_engine_pin_events_total{event="expired"}',
                 'pitstop_engine_pin_events_total{event="evicted"}', "pitstop_engine_healthy 1.0"):
        assert name in text, name
    assert 'status="400"' in text


def test_chat_logprobs_whole_and_streamed(client: openai.OpenAI):
    """One entry a generated token, in OpenAI's shape; the stream's entries, joined, are the whole
    answer's (greedy, so the same tokens)."""
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "temperature": 0,
           "logprobs": True, "top_logprobs": 3, "extra_body": NO_EOS}
    whole = client.chat.completions.create(**ask)
    entries = whole.choices[0].logprobs.content
    assert len(entries) == whole.usage.completion_tokens == 6
    assert "".join(e.token for e in entries) == whole.choices[0].message.content
    for entry in entries:
        assert entry.logprob <= 0 and bytes(entry.bytes).decode() == entry.token
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token  # greedy
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
    streamed = [e for chunk in client.chat.completions.create(**ask, stream=True) if chunk.choices
                and chunk.choices[0].logprobs for e in chunk.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 5)) for e in streamed] == [(e.token, round(e.logprob, 5)) for e in entries]
    plain = client.chat.completions.create(**{**ask, "logprobs": False, "top_logprobs": 0})
    assert plain.choices[0].logprobs is None


def test_completion_logprobs(client: openai.OpenAI):
    answer = client.completions.create(model=MODEL, prompt="abc", max_tokens=4, temperature=0, logprobs=2,
                                       extra_body=NO_EOS)
    logprobs = answer.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 4
    assert "".join(logprobs.tokens) == answer.choices[0].text
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(4)]
    assert all(len(top) <= 2 and max(top.values()) == lp for top, lp in zip(logprobs.top_logprobs,
                                                                           logprobs.token_logprobs, strict=True))


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": 1}, "logprobs"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "logprobs": True}, "logprobs"),
])
def test_bad_logprobs_are_400s(base_url: str, body: dict, param: str):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    response = httpx.post(f"{base_url}{path}", json={"model": MODEL, **body})
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_several_choices_whole_and_streamed(client: openai.OpenAI):
    """n samples of one prompt: their own indexes, the prompt counted once in the usage, seeded
    samples that differ from each other and repeat exactly, and a stream that holds the same texts."""
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "temperature": 1.0,
           "seed": 5, "n": 3, "extra_body": NO_EOS}
    first = client.chat.completions.create(**ask)
    again = client.chat.completions.create(**ask)
    single = client.chat.completions.create(**{**ask, "n": 1})
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2] and len(set(texts)) > 1
    assert [c.message.content for c in again.choices] == texts and single.choices[0].message.content == texts[0]
    assert first.usage.completion_tokens == 18 and first.usage.prompt_tokens == single.usage.prompt_tokens
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    streamed = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
                for i in range(3)]
    assert streamed == texts and chunks[-1].usage.completion_tokens == 18
    finished = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(finished) == [0, 1, 2]


def test_several_choices_with_logprobs(client: openai.OpenAI):
    answer = client.completions.create(model=MODEL, prompt="abc", max_tokens=3, n=2, logprobs=1, temperature=1.0,
                                       seed=1, extra_body=NO_EOS)
    for choice in answer.choices:
        assert len(choice.logprobs.tokens) == 3 and "".join(choice.logprobs.tokens) == choice.text
        assert choice.logprobs.text_offset[0] == 0  # each choice's offsets start at its own text
