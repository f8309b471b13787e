"""The gateway over a real socket, driven by the openai SDK against a real upstream process: litellm's
path (`hosted_vllm/...`) and the direct HTTP backend (`pitstop-engine/...`), whole, streamed, async,
with tools; plus /v1/models, /v1/completions, /metrics, /healthz and /readyz."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.ranking import PRIORITY_CLASS
from tests.gateway.harness import PRICE_IN, PRICE_OUT, Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess

MODELS = ["up-litellm", "up-direct"]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, _ = upstream_processes
    models = [model_entry("up-litellm", a.api_base, provider="hosted_vllm", tier="strong"),
              model_entry("up-direct", a.api_base, tier="weak", price_out=1e-7)]
    groups = [{"name": "grp", "models": MODELS, "router": "tier-prior", "cost_preference": 0.0}]
    with running_gateway(gateway_config(tmp_path_factory.mktemp("sdk"), models, groups)) as gateway:
        yield gateway


def user(text: str = "hello there") -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("model", MODELS)
def test_sync_chat_answers_with_usage_and_headers(gw: Gateway, upstreams: tuple, model: str) -> None:
    with gw.openai() as client:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=user("one two three"))
    completion = raw.parse()
    assert completion.choices[0].message.content == "from-a w1 w2 w3 w4"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 5)
    assert raw.headers["x-pitstop-model"] == model
    assert raw.headers["x-pitstop-request-id"].startswith("req-")
    row = gw.row(raw.headers["x-pitstop-request-id"])
    assert (row["model"], row["status"], row["http_status"], row["stream"]) == (model, "ok", 200, False)
    assert row["route_group"] is None and row["router_name"] is None


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.anyio
async def test_async_chat_concurrent(gw: Gateway, upstreams: tuple, model: str) -> None:
    async with gw.async_openai() as client:
        answers = await asyncio.gather(*(client.chat.completions.create(
            model=model, messages=user(f"question {i}")) for i in range(8)))
    assert all(a.choices[0].message.content.startswith("from-a") for a in answers)
    assert all(a.usage is not None and a.usage.total_tokens == 7 for a in answers)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("include_usage", [False, True])
def test_streaming(gw: Gateway, upstreams: tuple, model: str, include_usage: bool) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    with gw.openai() as client:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=user("stream [words:6]"),
                                                              stream=True, **options)
        assert raw.headers["x-pitstop-model"] == model
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "from-a w1 w2 w3 w4 w5"
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
        assert (usage_chunks[0].usage.prompt_tokens, usage_chunks[0].usage.completion_tokens) == (2, 6)
    else:
        assert usage_chunks == []
    row = gw.row(raw.headers["x-pitstop-request-id"])
    # The gateway always asks the upstream for usage, so the row has tokens either way.
    assert (row["stream"], row["status"], row["prompt_tokens"], row["completion_tokens"]) == (True, "ok", 2, 6)
    assert row["ttft_s"] is not None and 0 < row["ttft_s"] <= row["latency_s"]
    assert row["completion"] == text and row["finish_reason"] == "stop"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_tools_pass_through(gw: Gateway, upstreams: tuple, model: str, stream: bool) -> None:
    a, _ = upstreams
    with gw.openai() as client:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=user("weather in Paris?"), tools=TOOLS, tool_choice="auto", stream=stream)
        if stream:
            chunks = list(raw.parse())
            calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
            name = next(c.function.name for c in calls if c.function and c.function.name)
            arguments = "".join(c.function.arguments or "" for c in calls if c.function)
            finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
        else:
            choice = raw.parse().choices[0]
            assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
            name, arguments = choice.message.tool_calls[0].function.name, choice.message.tool_calls[0].function.arguments
            finish = choice.finish_reason
    assert (name, json.loads(arguments), finish) == ("get_weather", {"q": "weather in Paris?"}, "tool_calls")
    sent = a.stats()["bodies"][-1]
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tools"][0]["function"]["parameters"]["properties"] == {"city": {"type": "string"}}
    row = gw.row(raw.headers["x-pitstop-request-id"])
    assert row["tool_calls"] == ["get_weather"] and row["finish_reason"] == "tool_calls"


def test_route_group_uses_its_router(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        raw = client.chat.completions.with_raw_response.create(model="grp", messages=user())
    chosen = raw.headers["x-pitstop-model"]
    assert chosen == "up-litellm"  # tier-prior, no cost preference: the strong model wins
    assert raw.headers["x-pitstop-route-group"] == "grp"
    row = gw.row(raw.headers["x-pitstop-request-id"])
    assert (row["route_group"], row["requested_model"], row["model"]) == ("grp", "grp", chosen)
    assert (row["router_name"], row["router_version"]) == ("tier-prior", "1")
    assert set(row["router_scores"]) == set(MODELS)
    assert row["router_scores"]["up-litellm"] > row["router_scores"]["up-direct"]


def test_cost_preference_header_moves_the_choice(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        raw = client.chat.completions.with_raw_response.create(
            model="grp", messages=user(), extra_headers={"x-pitstop-cost-preference": "100"})
    assert raw.headers["x-pitstop-model"] == "up-direct"  # far cheaper, and cost now dominates
    assert gw.row(raw.headers["x-pitstop-request-id"])["cost_preference"] == 100.0


@pytest.mark.parametrize("value", ["cheap", "nan", "inf", "-1", "1e400", "2000000"])
def test_a_bad_cost_preference_header_is_a_400_naming_the_header(gw: Gateway, value: str) -> None:
    with gw.http() as http:
        response = http.post("/v1/chat/completions", headers={"x-pitstop-cost-preference": value},
                             json={"model": "grp", "messages": user()})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "x-pitstop-cost-preference" and "from 0 to 1e+06" in error["message"]


def test_session_id_reaches_the_row_and_the_pitstop_engine(gw: Gateway, upstreams: tuple) -> None:
    a, _ = upstreams
    with gw.openai() as client:
        raw = client.chat.completions.with_raw_response.create(
            model="up-direct", messages=user(), extra_headers={"x-session-id": "agent-42"})
    assert gw.row(raw.headers["x-pitstop-request-id"])["session_id"] == "agent-42"
    sent = a.stats()["bodies"][-1]
    assert sent["session_id"] == "agent-42" and sent["model"] == "up-direct"


def test_openais_prompt_cache_key_is_the_session_where_none_is_given(gw: Gateway, upstreams: tuple) -> None:
    a, _ = upstreams
    with gw.openai() as client:
        chat = client.chat.completions.with_raw_response.create(model="up-direct", messages=user(),
                                                                prompt_cache_key="conv-7")
        named = client.chat.completions.with_raw_response.create(model="up-direct", messages=user(),
                                                                 prompt_cache_key="conv-7",
                                                                 extra_headers={"x-session-id": "agent-1"})
        responses = client.responses.with_raw_response.create(model="up-direct", input="hi", prompt_cache_key="conv-8")
    sessions = [gw.row(r.headers["x-pitstop-request-id"])["session_id"] for r in (chat, named, responses)]
    assert sessions == ["conv-7", "agent-1", "conv-8"]
    bodies = a.stats()["bodies"][-3:]
    assert [b["session_id"] for b in bodies] == ["conv-7", "agent-1", "conv-8"]
    assert all(b["prompt_cache_key"] in ("conv-7", "conv-8") for b in bodies)  # still forwarded


def test_cost_and_tokens_in_the_row(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        raw = client.chat.completions.with_raw_response.create(model="up-litellm",
                                                              messages=user("a b c d [words:7]"))
    row = gw.row(raw.headers["x-pitstop-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (5, 7)
    assert row["cost_usd"] == pytest.approx(5 * PRICE_IN + 7 * PRICE_OUT)
    assert row["deployment"] == "up-litellm#0" and row["latency_s"] > 0 and row["ttft_s"] is None


def test_models_lists_route_groups_and_models(gw: Gateway) -> None:
    with gw.openai() as client:
        models = client.models.list()
        ids = [m.id for m in models.data]
        assert ids == ["grp", *MODELS]
        group = models.data[0].model_dump()
        assert group["pitstop"] == {"route_group": True, "models": MODELS, "router": "tier-prior",
                                    "router_version": group["pitstop"]["router_version"], "cost_preference": 0.0,
                                    "exploration": {"epsilon": 0.0, "among": None}, "calibration": None,
                                    "verify": None}
    with gw.http() as http:
        response = http.get("/v1/models")
    assert response.status_code == 200 and response.json()["object"] == "list"


def test_models_retrieve_answers_each_listed_name_and_a_404_otherwise(gw: Gateway) -> None:
    with gw.openai() as client:
        listed = {m.id: m.model_dump() for m in client.models.list().data}
        assert {name: client.models.retrieve(name).model_dump() for name in listed} == listed
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve("nope")
    error = missing.value.body
    assert isinstance(error, dict) and (error["code"], error["param"]) == ("model_not_found", "model")
    assert "grp" in error["message"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_completions(gw: Gateway, upstreams: tuple, model: str, stream: bool) -> None:
    with gw.openai() as client:
        raw = client.completions.with_raw_response.create(model=model, prompt="say something", max_tokens=8,
                                                         stream=stream)
        if stream:
            text = "".join(c.choices[0].text for c in raw.parse() if c.choices)
        else:
            answer = raw.parse()
            text = answer.choices[0].text
            assert answer.usage is not None and answer.usage.completion_tokens == 5
    assert text == "from-a w1 w2 w3 w4"
    assert raw.headers["x-pitstop-model"] == model
    row = gw.row(raw.headers["x-pitstop-request-id"])
    assert (row["status"], row["prompt"], row["completion_tokens"], row["stream"]) == ("ok", "say something", 5,
                                                                                        stream)


@pytest.mark.parametrize("prompt", [["first prompt", "second one"], [[1, 2, 3], [4, 5]]])
def test_a_batch_of_prompts_reaches_the_upstream_whole(gw: Gateway, upstreams: tuple, prompt: list) -> None:
    """vLLM and OpenAI answer each prompt of a batch (eval harnesses send them); the gateway used to refuse."""
    with gw.openai() as client:
        raw = client.completions.with_raw_response.create(model="up-direct", prompt=prompt, max_tokens=4)
    assert raw.parse().choices[0].text.startswith("from-a")
    assert upstreams[0].stats()["bodies"][-1]["prompt"] == prompt
    assert gw.row(raw.headers["x-pitstop-request-id"])["prompt"] == prompt


def test_metrics_per_model_and_route_group(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        client.chat.completions.create(model="grp", messages=user())
        for chunk in client.chat.completions.create(model="up-direct", messages=user(), stream=True):
            assert chunk.id
    with gw.http() as http:
        response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)

    def sample(metric: str, **labels: str) -> float:
        matches = [v for k, v in samples.items()
                   if k.startswith(metric + "{") and all(f'{n}="{v}"' in k for n, v in labels.items())]
        assert matches, f"no sample {metric} {labels}"
        return sum(matches)

    assert sample("pitstop_requests_total", route_group="grp", model="up-litellm", status="ok") >= 1
    assert sample("pitstop_requests_total", route_group="", model="up-direct", status="ok") >= 1
    assert sample("pitstop_request_latency_seconds_count", route_group="grp", model="up-litellm") >= 1
    assert sample("pitstop_time_to_first_token_seconds_count", route_group="", model="up-direct") >= 1
    assert sample("pitstop_tokens_total", route_group="grp", model="up-litellm", kind="completion") >= 5
    assert sample("pitstop_tokens_total", route_group="", model="up-direct", kind="prompt") >= 2
    assert sample("pitstop_cost_usd_total", route_group="grp", model="up-litellm") > 0
    assert sample("pitstop_outcome_rows", state="written") >= 1
    assert sample("pitstop_writer_rows", table="outcomes", state="written") >= 1
    for table in ("feedback", "responses", "conversation_items"):
        assert sample("pitstop_writer_rows", table=table, state="dropped") == 0
    assert sample("pitstop_route_group_cost_preference", route_group="grp") == 0.0  # its config's: not calibrated
    assert "pitstop_route_group_calibration_achieved{" not in response.text
    assert "pitstop_outstanding_requests" in response.text


def test_health_and_readiness(gw: Gateway) -> None:
    with gw.http() as http:
        health = http.get("/healthz")
        ready = http.get("/readyz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True and body["models"] == {"up-litellm": True, "up-direct": True}
    assert body["outcome_log"]["last_error"] is None
    assert set(body["writers"]) == {"outcomes", "feedback", "responses", "conversation_items", "chat_completions"}
    assert all(w["last_error"] is None and w["dropped"] == 0 for w in body["writers"].values())


def test_readiness_fails_when_a_direct_upstream_is_gone(tmp_path: Path) -> None:
    dead = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    with running_gateway(gateway_config(tmp_path, [model_entry("gone", dead)])) as gateway, gateway.http() as http:
        response = http.get("/readyz")
        assert response.status_code == 503 and response.json()["models"] == {"gone": False}
        failed = http.post("/v1/chat/completions", json={"model": "gone", "messages": user()})
    assert failed.status_code == 502 and failed.json()["error"]["type"] == "server_error"
    assert failed.headers["x-pitstop-model"] == "gone"


def sse_chunks(text: str) -> list[dict]:
    events = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]", "a finished stream ends with [DONE]"
    return [json.loads(e) for e in events[:-1]]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("path", ["chat/completions", "completions"])
@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_chunks_keep_openais_shape(gw: Gateway, upstreams: tuple, model: str, path: str,
                                         include_usage: bool) -> None:
    """One chunk carries finish_reason; the usage chunk (asked for only) comes last with `choices: []`;
    completion chunks carry `text` strings. Both backends must agree on this."""
    body = {"model": model, "stream": True, **({"stream_options": {"include_usage": True}} if include_usage else {})}
    body |= {"messages": user()} if path == "chat/completions" else {"prompt": "say"}
    with gw.http() as http:
        response = http.post("/v1/" + path, json=body)
    assert response.status_code == 200
    chunks = sse_chunks(response.text)
    finishing = [i for i, c in enumerate(chunks) if any(ch.get("finish_reason") for ch in c["choices"])]
    assert len(finishing) == 1
    after = chunks[finishing[0] + 1:]
    if include_usage:
        assert len(after) == 1 and after[0]["choices"] == [] and after[0]["usage"]["completion_tokens"] == 5
    else:
        assert after == [] and all(c.get("usage") is None for c in chunks)
    if path == "completions":
        assert all(isinstance(ch["text"], str) for c in chunks for ch in c["choices"])


def test_vllm_entries_go_direct_by_default_and_pass_priority(upstream_processes: tuple, upstreams: tuple,
                                                              tmp_path: Path) -> None:
    """`hosted_vllm/` with an api_base speaks OpenAI's wire format: the `auto` transport skips litellm and
    sends the request's priority as the class of vLLM's integer `priority` (above the aged rank key)."""
    a, _ = upstream_processes
    entry = model_entry("vllm", a.api_base, provider="hosted_vllm", transport="auto")
    with running_gateway(gateway_config(tmp_path, [entry])) as gateway, gateway.openai() as client:
        from gateway.backends.openai_http import OpenAIHTTPBackend

        assert isinstance(gateway.state.pool.by_model["vllm"][0].backend, OpenAIHTTPBackend)
        answer = client.chat.completions.create(model="vllm", messages=user("one two"),
                                                extra_body={"priority": 3})
    assert answer.choices[0].message.content.startswith("from-a")
    body = a.stats()["bodies"][-1]
    assert body["model"] == "vllm" and body["priority"] // PRIORITY_CLASS == 3 and "session_id" not in body
