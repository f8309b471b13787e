"""Gemini's generateContent body as a chat, and a chat answer (whole or streamed) as a GenerateContentResponse,
without a server: the fields the SDK tests over a socket (test_gateway_gemini.py) cannot reach with the fake
upstream (several candidates, logprobs, cached and thinking tokens, streamed calls in pieces, REST's proto
field names)."""

from __future__ import annotations

import json

import pytest

from engine.server.errors import APIError
from gateway.gemini_answer import error_body, generate_content_response, usage_metadata
from gateway.gemini_request import chat_request
from gateway.gemini_stream import GeminiStream

CALL = {"functionCall": {"name": "lookup", "args": {"q": "a"}}}


def chat(body: dict, stream: bool = False) -> dict:
    return chat_request(body, "m", stream).chat


def test_generation_config_maps_field_for_field_in_either_spelling() -> None:
    asked = chat({"contents": [{"parts": [{"text": "x"}]}], "generation_config": {
        "candidate_count": 2, "response_logprobs": True, "logprobs": 3, "responseMimeType": "application/json",
        "response_json_schema": {"type": "object"}, "thinking_config": {"thinking_budget": 512},
        "media_resolution": "MEDIA_RESOLUTION_LOW"}, "session_id": "s1"}, stream=True)
    assert asked == {"model": "m", "session_id": "s1", "messages": [{"role": "user", "content": "x"}], "n": 2,
                     "logprobs": True, "top_logprobs": 3, "thinking": {"type": "enabled", "budget_tokens": 512},
                     "response_format": {"type": "json_schema", "json_schema": {
                         "name": "response", "schema": {"type": "object"}}},
                     "stream": True, "stream_options": {"include_usage": True}}
    assert chat({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {
        "responseMimeType": "application/json"}})["response_format"] == {"type": "json_object"}
    dynamic = chat({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {
        "thinkingConfig": {"thinkingBudget": -1}}})
    assert "thinking" not in dynamic and "reasoning_effort" not in dynamic


def test_calls_and_their_responses_are_matched_by_id_else_by_name_in_order() -> None:
    contents = [{"role": "user", "parts": [{"text": "go"}]},
                {"role": "model", "parts": [{"text": "thinking", "thought": True}, {"text": "let me see"}, CALL,
                                            {"functionCall": {"name": "lookup", "args": {"q": "b"}}},
                                            {"functionCall": {"id": "mine", "name": "fetch"}},
                                            {"functionCall": {"name": "weather"}}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "weather", "response": {"w": 0}}},  # answered out of order
                    {"functionResponse": {"id": "mine", "name": "fetch", "response": {"ok": 1}}},
                    {"functionResponse": {"name": "lookup", "response": {"r": "A"}}},
                    {"functionResponse": {"name": "lookup", "response": {"r": "B"},
                                          "parts": [{"inlineData": {"mimeType": "image/png", "data": "iV_-"}}]}}]}]
    messages = chat({"contents": contents})["messages"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["call_1_2", "call_1_3", "mine", "call_1_5"]
    assert messages[1]["content"] == "let me see"  # the thought part is left out
    assert [(m["tool_call_id"], json.loads(m["content"])) for m in messages[2:6]] == [
        ("call_1_5", {"w": 0}), ("mine", {"ok": 1}), ("call_1_2", {"r": "A"}), ("call_1_3", {"r": "B"})]
    assert messages[6] == {"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64,iV/+"}}]}  # URL-safe base64 as the standard's


def test_tools_and_the_function_calling_modes() -> None:
    declared = {"functionDeclarations": [
        {"name": "a", "parameters": {"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}}}},
        {"name": "b", "parametersJsonSchema": {"type": "object", "additionalProperties": False}},
        {"name": "c"}]}
    body = {"contents": [{"parts": [{"text": "x"}]}], "tools": [declared]}
    tools = chat(body)["tools"]
    assert [t["function"]["parameters"] for t in tools] == [
        {"type": "object", "properties": {"n": {"type": "integer"}}},
        {"type": "object", "additionalProperties": False}, {"type": "object", "properties": {}}]
    two = chat({**body, "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["a", "c"]}}})
    assert two["tool_choice"] == "required" and [t["function"]["name"] for t in two["tools"]] == ["a", "c"]
    validated = chat({**body, "toolConfig": {"functionCallingConfig": {"mode": "VALIDATED"}}})
    assert validated["tool_choice"] == "auto" and len(validated["tools"]) == 3
    with pytest.raises(APIError, match="the tools do not declare"):
        chat({**body, "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["z"]}}})


def test_a_whole_answer_with_two_candidates_logprobs_and_token_details() -> None:
    answer = {"model": "served", "choices": [
        {"index": 0, "finish_reason": "length", "message": {"content": "hi", "reasoning_content": "hmm"},
         "logprobs": {"content": [{"token": "hi", "logprob": -0.5, "top_logprobs": [
             {"token": "hi", "logprob": -0.5}, {"token": "yo", "logprob": -1.5}]}]}},
        {"index": 1, "finish_reason": "tool_calls", "message": {"content": None, "tool_calls": [
            {"id": "c1", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 4},
                  "completion_tokens_details": {"reasoning_tokens": 3}}}
    response = generate_content_response("req-abc", answer, "asked", thoughts=False)
    first, second = response["candidates"]
    assert first["content"]["parts"] == [{"text": "hi"}] and first["finishReason"] == "MAX_TOKENS"
    assert first["logprobsResult"] == {"chosenCandidates": [{"token": "hi", "logProbability": -0.5}], "topCandidates": [
        {"candidates": [{"token": "hi", "logProbability": -0.5}, {"token": "yo", "logProbability": -1.5}]}]}
    assert first["avgLogprobs"] == -0.5
    assert second == {"content": {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"x": 1},
                                                                               "id": "c1"}}]},
                      "finishReason": "STOP", "index": 1}
    assert response["usageMetadata"] == {"promptTokenCount": 10, "candidatesTokenCount": 4, "totalTokenCount": 17,
                                         "cachedContentTokenCount": 4, "thoughtsTokenCount": 3}
    assert (response["modelVersion"], response["responseId"]) == ("served", "abc")
    assert usage_metadata(None) == {"promptTokenCount": 0, "candidatesTokenCount": 0, "totalTokenCount": 0}


def test_a_stream_sends_text_as_it_comes_and_calls_whole_at_the_end() -> None:
    stream = GeminiStream("req-1", "m", thoughts=False, sse=True)
    chunks = [{"choices": [{"index": 0, "delta": {"content": "He"}}, {"index": 1, "delta": {"tool_calls": [
                  {"index": 0, "id": "c9", "function": {"name": "f", "arguments": "{\"a\""}}]}}]},
              {"choices": [{"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 2}"}}]}},
                           {"index": 0, "delta": {"reasoning_content": "hidden"}, "finish_reason": "stop"}]},
              {"choices": [{"index": 1, "delta": {}, "finish_reason": "tool_calls"}]}]
    events = [event for chunk in chunks for event in stream.chunk(chunk)]
    events.append(stream.final_event(stream.final({"prompt_tokens": 2, "completion_tokens": 3})))
    bodies = [json.loads(event.removeprefix(b"data: ")) for event in events]
    assert all(event.startswith(b"data: ") and event.endswith(b"\r\n\r\n") for event in events)
    assert [b["candidates"] for b in bodies[:-1]] == [[{"content": {"role": "model", "parts": [{"text": "He"}]},
                                                        "index": 0}]]
    assert bodies[-1]["candidates"] == [
        {"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP", "index": 0},
        {"content": {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 2}, "id": "c9"}}]},
         "finishReason": "STOP", "index": 1}]
    assert bodies[-1]["usageMetadata"]["totalTokenCount"] == 5 and bodies[-1]["responseId"] == "1"


def test_a_json_array_stream_is_closed_even_by_an_error() -> None:
    stream = GeminiStream("req-1", "m", thoughts=True, sse=False)
    sent = b"".join(stream.chunk({"choices": [{"delta": {"reasoning_content": "r", "content": "t"}}]}))
    sent += stream.failed(APIError(502, "upstream went away"))
    first, error = json.loads(sent)
    assert first["candidates"][0]["content"]["parts"] == [{"text": "r", "thought": True}, {"text": "t"}]
    assert error == error_body(APIError(502, "upstream went away"))
    assert error["error"]["status"] == "UNAVAILABLE"
