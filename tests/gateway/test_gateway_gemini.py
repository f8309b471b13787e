"""Google's Gemini API on the gateway over a real socket, driven by the `google-genai` SDK (its base_url the
gateway's) against the fake upstream processes: generate_content whole and streamed, count_tokens,
embed_content, models.list/get, function calling with the SDK's automatic calling off and on, structured
output, chats, inline images, thoughts, and what each sent upstream; its keys, limits and errors are in
test_gateway_gemini_errors.py."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pydantic
import pytest
from google import genai
from google.genai import types

from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.image_data import SMALL
from tests.gateway.upstream import UpstreamProcess, embedding_of


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, b = upstream_processes
    embedder = model_entry("emb", a.api_base, provider="hosted_vllm")
    embedder["model_info"]["mode"] = "embedding"
    models = [model_entry("up", a.api_base), model_entry("up-vllm", b.api_base, provider="hosted_vllm"), embedder]
    groups = [{"name": "grp", "models": ["up", "up-vllm"], "router": "tier-prior", "cost_preference": 0.0}]
    with running_gateway(gateway_config(tmp_path_factory.mktemp("gemini"), models, groups)) as gateway:
        yield gateway


def gemini(gw: Gateway, api_key: str = "none", api_version: str | None = None) -> genai.Client:
    return genai.Client(api_key=api_key, http_options=types.HttpOptions(
        base_url=gw.url, api_version=api_version, retry_options=types.HttpRetryOptions(attempts=1)))


def sent(upstream: UpstreamProcess) -> dict:
    return upstream.stats()["bodies"][-1]


def get_weather(city: str) -> str:
    """Weather in a city."""
    return f"sunny in {city}"


WEATHER = types.FunctionDeclaration(name="get_weather", description="Weather in a city", parameters=types.Schema(
    type=types.Type.OBJECT, properties={"city": types.Schema(type=types.Type.STRING)}, required=["city"]))


@pytest.mark.parametrize("model, api_version", [("up", None), ("up-vllm", "v1beta"), ("grp", "v1alpha")])
def test_generate_content_with_a_system_instruction_and_its_config(gw: Gateway, upstreams: tuple, model: str,
                                                                    api_version: str | None) -> None:
    config = types.GenerateContentConfig(
        system_instruction="answer briefly", temperature=0.5, top_p=0.9, top_k=40, max_output_tokens=50,
        stop_sequences=["END"], seed=7, presence_penalty=0.1, frequency_penalty=0.2,
        safety_settings=[types.SafetySetting(category=types.HarmCategory.HARM_CATEGORY_HARASSMENT,
                                             threshold=types.HarmBlockThreshold.BLOCK_NONE)])
    client = gemini(gw, api_version=api_version)  # held: a client closes its connections once collected
    response = client.models.generate_content(model=model, contents="one two three", config=config)
    text = response.text
    assert text is not None and text.startswith("from-") and len(text.split()) == 5
    candidate = response.candidates[0]  # type: ignore[index]
    assert candidate.finish_reason == types.FinishReason.STOP and candidate.index == 0
    assert candidate.content.role == "model"  # type: ignore[union-attr]
    usage = response.usage_metadata
    assert usage is not None and usage.candidates_token_count == 5 and usage.prompt_token_count == 5
    assert usage.total_token_count == 10
    served_by = upstreams[0] if text.startswith("from-a") else upstreams[1]
    body = sent(served_by)
    assert body["messages"] == [{"role": "system", "content": "answer briefly"},
                                {"role": "user", "content": "one two three"}]
    assert {k: body[k] for k in ("temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "presence_penalty",
                                 "frequency_penalty")} == {"temperature": 0.5, "top_p": 0.9, "top_k": 40,
                                                           "max_tokens": 50, "stop": ["END"], "seed": 7,
                                                           "presence_penalty": 0.1, "frequency_penalty": 0.2}
    assert "safetySettings" not in body and "safety_settings" not in body
    assert response.model_version == body["model"] and response.response_id
    row = gw.row("req-" + response.response_id)  # type: ignore[operator]
    assert (row["endpoint"], row["status"], row["completion"], row["model"]) == ("gemini", "ok", text, body["model"])


def test_a_streamed_answer_arrives_as_chunks(gw: Gateway, upstreams: tuple) -> None:
    client = gemini(gw)
    chunks = list(client.models.generate_content_stream(model="up", contents="[words:8] go"))
    texts = [c.text for c in chunks[:-1]]
    assert len(texts) == 8 and "".join(texts) == " ".join(["from-a", *(f"w{i}" for i in range(1, 8))])  # type: ignore[arg-type]
    last = chunks[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]
    assert last.usage_metadata.candidates_token_count == 8  # type: ignore[union-attr]
    assert all(c.candidates[0].finish_reason is None for c in chunks[:-1])  # type: ignore[index]
    body = sent(upstreams[0])
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    row = gw.row("req-" + last.response_id)  # type: ignore[operator]
    assert (row["endpoint"], row["status"], row["completion_tokens"]) == ("gemini", "ok", 8)


def test_without_alt_sse_the_stream_is_one_json_array(gw: Gateway, upstreams: tuple) -> None:
    with gw.http() as http:
        response = http.post("/v1beta/models/up:streamGenerateContent",
                             json={"contents": [{"parts": [{"text": "[words:3] go"}]}]})
    chunks = response.json()
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks[:-1]] == ["from-a", " w1", " w2"]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP" and chunks[-1]["usageMetadata"]["totalTokenCount"]


def test_count_tokens(gw: Gateway) -> None:
    client = gemini(gw)
    short = client.models.count_tokens(model="up", contents="hi")
    long = client.models.count_tokens(model="up", contents="hi " * 400)
    assert short.total_tokens is not None and 0 < short.total_tokens < 5
    assert long.total_tokens is not None and long.total_tokens > 300
    with gw.http() as http:  # a whole request (REST): its system instruction and tools count too
        whole = http.post("/v1beta/models/up:countTokens", json={"generateContentRequest": {
            "model": "models/up", "contents": [{"parts": [{"text": "hi"}]}],
            "systemInstruction": {"parts": [{"text": "be brief " * 100}]}}})
    assert whole.status_code == 200 and whole.json()["totalTokens"] > 100


def test_embed_content_is_served_by_the_embeddings_path(gw: Gateway, upstreams: tuple) -> None:
    client = gemini(gw)
    batch = client.models.embed_content(model="emb", contents=["one two", "three four five"],
                                        config=types.EmbedContentConfig(output_dimensionality=4))
    assert [e.values for e in batch.embeddings] == [embedding_of("one two", "a", 0),  # type: ignore[union-attr]
                                                    embedding_of("three four five", "a", 1)]
    assert sent(upstreams[0])["input"] == ["one two", "three four five"] and sent(upstreams[0])["dimensions"] == 4
    with gw.http() as http:  # embedContent, one content (REST)
        single = http.post("/v1beta/models/emb:embedContent", json={"content": {"parts": [{"text": "six"}]}})
    assert single.status_code == 200 and single.json() == {"embedding": {"values": embedding_of("six", "a", 0)}}
    row = gw.row(single.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["status"], row["model"]) == ("embedding", "ok", "emb")


def test_models_list_and_get_in_geminis_shape(gw: Gateway) -> None:
    client = gemini(gw)
    listed = {m.name: m for m in client.models.list(config=types.ListModelsConfig(page_size=2))}  # pages of 2
    assert set(listed) == {"models/grp", "models/up", "models/up-vllm", "models/emb"}
    assert listed["models/up"].supported_actions == ["generateContent", "streamGenerateContent", "countTokens"]
    assert listed["models/emb"].supported_actions == ["embedContent", "batchEmbedContents"]
    one = client.models.get(model="up-vllm")
    assert one.name == "models/up-vllm" and one.display_name == "up-vllm"
    with pytest.raises(genai.errors.ClientError) as missing:
        client.models.get(model="nope")
    assert missing.value.code == 404 and missing.value.status == "NOT_FOUND"
    with gw.openai() as openai_client:  # /v1/models is still OpenAI's for everyone else
        assert {m.id for m in openai_client.models.list()} >= {"up", "grp"}
        assert openai_client.models.retrieve("up").id == "up"


def test_function_calling_round_trip_without_automatic_calling(gw: Gateway, upstreams: tuple) -> None:
    client = gemini(gw)
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
            mode=types.FunctionCallingConfigMode.ANY, allowed_function_names=["get_weather"])))
    asked = types.Content(role="user", parts=[types.Part.from_text(text="weather in Oslo")])
    first = client.models.generate_content(model="up", contents=[asked], config=config)
    call = first.function_calls[0]  # type: ignore[index]
    assert (call.name, call.args) == ("get_weather", {"city": "weather in Oslo"}) and call.id
    body = sent(upstreams[0])
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    answered = types.Content(role="user", parts=[types.Part.from_function_response(
        name="get_weather", response={"result": "sunny"})])  # no id: matched by name, as the SDK sends it
    second = client.models.generate_content(
        model="up", contents=[asked, first.candidates[0].content, answered],  # type: ignore[index, list-item]
        config=types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])],
                                           tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
                                               mode=types.FunctionCallingConfigMode.NONE))))
    assert second.text is not None and second.text.startswith("from-a")
    assert sent(upstreams[0])["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "weather in Oslo"})}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"result": "sunny"})}]
    assert sent(upstreams[0])["tool_choice"] == "none"


def test_automatic_function_calling_runs_the_python_function(gw: Gateway, upstreams: tuple) -> None:
    """The SDK calls `get_weather` itself and sends its result back; the model answers after one result."""
    client = gemini(gw)
    response = client.models.generate_content(model="up", contents="[tools:1] Oslo",
                                              config=types.GenerateContentConfig(tools=[get_weather]))
    assert response.text is not None and response.text.startswith("from-a")
    history = response.automatic_function_calling_history
    assert [c.role for c in history] == ["user", "model", "user"]  # type: ignore[union-attr]
    result = history[2].parts[0].function_response  # type: ignore[index, union-attr]
    assert result.response == {"result": "sunny in [tools:1] Oslo"}  # type: ignore[union-attr]
    messages = sent(upstreams[0])["messages"]
    assert messages[2] == {"role": "tool", "tool_call_id": messages[1]["tool_calls"][0]["id"],
                           "content": json.dumps({"result": "sunny in [tools:1] Oslo"})}
    assert upstreams[0].stats()["requests"] == 2


class Forecast(pydantic.BaseModel):
    city: str
    degrees: int


def test_structured_output_with_a_schema(gw: Gateway, upstreams: tuple) -> None:
    client = gemini(gw)
    response = client.models.generate_content(
        model="up", contents='[answer:{"city":"Oslo","degrees":3}] forecast',
        config=types.GenerateContentConfig(response_mime_type="application/json", response_schema=Forecast))
    assert response.parsed == Forecast(city="Oslo", degrees=3)
    response_format = sent(upstreams[0])["response_format"]
    assert response_format["type"] == "json_schema"
    schema = response_format["json_schema"]["schema"]
    assert schema["properties"]["degrees"]["type"] == "integer" and set(schema["required"]) == {"city", "degrees"}
    with gw.http() as http:  # Gemini's own Schema (upper-case types, nullable) over REST
        http.post("/v1beta/models/up:generateContent", json={
            "contents": [{"parts": [{"text": "x"}]}], "generationConfig": {
                "responseMimeType": "application/json", "responseSchema": {
                    "type": "OBJECT", "properties": {"note": {"type": "STRING", "nullable": True}},
                    "propertyOrdering": ["note"]}}}).raise_for_status()
    assert sent(upstreams[0])["response_format"]["json_schema"]["schema"] == {
        "type": "object", "properties": {"note": {"type": ["string", "null"]}}}


def test_a_chat_keeps_its_history(gw: Gateway, upstreams: tuple) -> None:
    client = gemini(gw)
    chat = client.chats.create(model="up", config=types.GenerateContentConfig(system_instruction="be kind"))
    first = chat.send_message("[echo:1] hello there")
    streamed = "".join(c.text or "" for c in chat.send_message_stream("[echo:1] and again"))
    assert first.text == "hello there" and streamed == "and again"
    assert len(chat.get_history()) == 6  # the SDK keeps each chunk of the streamed answer as a model Content
    chat.send_message("[echo:1] last")  # those chunks sent back: one assistant message
    assert sent(upstreams[0])["messages"] == [
        {"role": "system", "content": "be kind"}, {"role": "user", "content": "[echo:1] hello there"},
        {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "[echo:1] and again"},
        {"role": "assistant", "content": "and again"}, {"role": "user", "content": "[echo:1] last"}]


def test_images_inline_and_by_uri(gw: Gateway, upstreams: tuple) -> None:
    png = SMALL.split(",", 1)[1]
    client = gemini(gw)
    client.models.generate_content(model="up", contents=[types.Content(role="user", parts=[
        types.Part.from_text(text="what is this"),
        types.Part(inline_data=types.Blob(mime_type="image/png", data=base64.b64decode(png))),
        types.Part.from_uri(file_uri="https://example.com/cat.jpg", mime_type="image/jpeg")])])
    assert sent(upstreams[0])["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": SMALL}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]


def test_thoughts_come_back_where_asked(gw: Gateway, upstreams: tuple) -> None:
    client = gemini(gw)
    asked = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=0))
    whole = client.models.generate_content(model="up", contents="[think:3] why", config=asked)
    parts = whole.candidates[0].content.parts  # type: ignore[index, union-attr]
    assert [(p.thought, p.text) for p in parts][0] == (True, "thought1 thought2 thought3")  # type: ignore[union-attr]
    assert parts[1].text.startswith("from-a") and whole.text == parts[1].text  # type: ignore[index, union-attr]
    assert sent(upstreams[0])["reasoning_effort"] == "none"
    streamed = [p for c in client.models.generate_content_stream(model="up", contents="[think:2] why", config=asked)
                for p in c.candidates[0].content.parts]  # type: ignore[index, union-attr]
    assert [p.text for p in streamed if p.thought] == ["thought1", " thought2"]
    plain = client.models.generate_content(model="up", contents="[think:3] why", config=types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(thinking_level=types.ThinkingLevel.LOW)))
    assert [p.thought for p in plain.candidates[0].content.parts] == [None]  # type: ignore[index, union-attr]
    assert sent(upstreams[0])["reasoning_effort"] == "low"


def test_a_session_header_makes_turns_one_session(gw: Gateway, upstreams: tuple) -> None:
    client = genai.Client(api_key="none", http_options=types.HttpOptions(
        base_url=gw.url, headers={"x-session-id": "gemini-agent-1"}))
    for turn in ("first", "second"):
        client.models.generate_content(model="up", contents=turn)
    with gw.http() as http:
        found = http.get("/v1/sessions/gemini-agent-1")
    assert found.status_code == 200 and found.json()["turns"] == 2
