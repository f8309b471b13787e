"""A Gemini `generateContent` body (Google's Gemini API, as the `google-genai` SDK and REST clients send it)
as the chat request it stands for, a 400 naming the field for what it cannot be.

`contents`: user turns' text, images (`inlineData` as a data URL, `fileData` as the image's URL) and
`functionResponse` parts (each a `tool` message, first, as they answer the previous turn: matched to its call
by `id`, else by name, in order, since the SDK's automatic function calling sends none); model turns' text and
`functionCall` parts (one assistant message; a call with no `id` gets one of its turn and place, the same each
time the history is sent again; model contents in a row, as the SDK's chats keep a streamed answer's chunks,
are one message); thought parts sent back are left out, as the Messages API leaves thinking
blocks. `systemInstruction` is the system message; `generationConfig` maps field for field to the chat's
(`candidateCount` is `n`, `responseLogprobs`/`logprobs` are `logprobs`/`top_logprobs`, a JSON
`responseMimeType` with `responseSchema` (gateway/gemini_schema.py) or `responseJsonSchema` is a
`json_schema` `response_format`, `thinkingConfig` a `thinkingLevel`'s `reasoning_effort` or a budget's
`thinking` as the Messages API sends it); `tools`' `functionDeclarations` are functions and `toolConfig`'s
mode is the `tool_choice` (its `allowedFunctionNames` keep only those tools). `safetySettings` are accepted
and ignored (Pitstop's guardrails are its own); `cachedContent` and Google's server tools are a 400.
Google's REST takes each field in its proto name too (`system_instruction`): both are read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.server.errors import bad_request
from gateway.gemini_schema import camel, camel_keys, json_schema

# Pitstop's own fields, as a chat takes them (a session by the x-session-id header works too).
_PASSED = ("session_id", "priority", "pin_ttl_s", "cost_preference", "cache")
_TOP = ("contents", "systemInstruction", "generationConfig", "tools", "toolConfig", "safetySettings",
        "cachedContent", "model", "labels")
_CONFIG = {"temperature": "temperature", "topP": "top_p", "topK": "top_k", "maxOutputTokens": "max_tokens",
           "candidateCount": "n", "seed": "seed", "presencePenalty": "presence_penalty",
           "frequencyPenalty": "frequency_penalty"}
_CONFIG_READ = ("stopSequences", "responseLogprobs", "logprobs", "responseMimeType", "responseSchema",
                "responseJsonSchema", "thinkingConfig", "responseModalities")
_CONFIG_IGNORED = ("mediaResolution", "audioTimestamp", "enableEnhancedCivicAnswers")
_PART_IGNORED = ("thoughtSignature", "partMetadata", "mediaResolution", "videoMetadata")
_MODES = {"AUTO": "auto", "MODE_UNSPECIFIED": "auto", "VALIDATED": "auto", "ANY": "required", "NONE": "none"}
_STANDARD_BASE64 = str.maketrans("-_", "+/")
_LEVELS = {"MINIMAL": "minimal", "LOW": "low", "MEDIUM": "medium", "HIGH": "high"}


@dataclass(frozen=True)
class GeminiChat:
    chat: dict  # the chat request the body stands for
    include_thoughts: bool  # `thinkingConfig.includeThoughts`: the answer's thinking comes back as thought parts


def chat_request(raw: Any, model: str, stream: bool) -> GeminiChat:
    """The chat a generateContent body (for `model`, streamed or not) stands for."""
    if not isinstance(raw, dict):
        raise bad_request("the body must be a JSON object")
    raw = {key if key in _PASSED else camel(key): value for key, value in raw.items()}
    unknown = sorted(set(raw) - {*_TOP, *_PASSED})
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}", unknown[0], "unknown_field")
    if raw.get("cachedContent") is not None:
        raise bad_request("'cachedContent' is not supported: Pitstop keeps no cached contents (send the contents "
                          "themselves; deployments that cache prompts still do)", "cachedContent", "unsupported")
    chat: dict[str, Any] = {"model": model, **{name: raw[name] for name in _PASSED if raw.get(name) is not None}}
    messages = _system(raw.get("systemInstruction"))
    contents = raw.get("contents")
    if not isinstance(contents, list) or not contents:
        raise bad_request("'contents' must be a non-empty list", "contents", "invalid_type")
    pending: list[tuple[str, str]] = []  # the previous model turn's calls not yet answered: (id, name)
    for i, content in enumerate(contents):
        for message in _content(content, i, pending):
            if message["role"] == "assistant" and messages and messages[-1]["role"] == "assistant":
                _merge(messages[-1], message)  # a streamed answer's chunks, each a Content in the SDK's chat history
            else:
                messages.append(message)
    chat["messages"] = messages
    if not isinstance(raw.get("safetySettings", []), list):
        raise bad_request("'safetySettings' must be a list", "safetySettings", "invalid_type")
    include_thoughts = _generation_config(raw.get("generationConfig"), chat)
    if raw.get("tools") is not None:
        chat["tools"] = _tools(raw["tools"])
    if raw.get("toolConfig") is not None:
        _tool_config(raw["toolConfig"], chat)
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # the last chunk carries the usageMetadata
    return GeminiChat(chat, include_thoughts)


def _texts(parts: Any, where: str) -> str:
    if not isinstance(parts, list) or not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts):
        raise bad_request(f"'{where}.parts' must be a list of text parts", f"{where}.parts", "invalid_type")
    return "\n\n".join(p["text"] for p in parts)


def _system(system: Any) -> list[dict]:
    if system is None:
        return []
    text = system if isinstance(system, str) else _texts(
        camel_keys(system).get("parts") if isinstance(system, dict) else None, "systemInstruction")
    return [{"role": "system", "content": text}] if text else []


def _content(content: Any, index: int, pending: list[tuple[str, str]]) -> list[dict]:
    where = f"contents[{index}]"
    content = camel_keys(content)
    role = content.get("role", "user") if isinstance(content, dict) else None
    if role not in ("user", "model", "function"):  # "function": the older API's turn of function responses
        raise bad_request(f"'{where}' must be a Content with role 'user' or 'model'", f"{where}.role")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise bad_request(f"'{where}.parts' must be a non-empty list", f"{where}.parts", "invalid_type")
    parts = [camel_keys(part) for part in parts]
    if role == "model":
        return [_model_turn(parts, index, pending)]
    pending_calls = list(pending)  # a user turn answers the calls of the model turn before it, and no later one
    pending.clear()
    results, chat_parts = [], []
    for i, part in enumerate(parts):
        at = f"{where}.parts[{i}]"
        if not isinstance(part, dict):
            raise bad_request(f"'{at}' must be a Part object", at, "invalid_type")
        if "functionResponse" in part:
            response = camel_keys(part["functionResponse"])
            if not isinstance(response, dict) or not isinstance(response.get("name"), str) or not isinstance(
                    response.get("response", {}), dict | None) or not isinstance(response.get("parts", []), list):
                raise bad_request(f"'{at}.functionResponse' must have a string 'name' and object 'response'",
                                  f"{at}.functionResponse", "invalid_type")
            results.append({"role": "tool", "tool_call_id": _answered(response, pending_calls, at),
                            "content": json.dumps(response.get("response") or {})})
            chat_parts += [_media(camel_keys(p), f"{at}.functionResponse.parts[{j}]")  # a result's images
                           for j, p in enumerate(response.get("parts") or ())]
        elif part.get("thought") is True:
            continue
        elif isinstance(part.get("text"), str):
            chat_parts.append({"type": "text", "text": part["text"]})
        else:
            chat_parts.append(_media(part, at))
    if not chat_parts:
        return results
    if len(chat_parts) == 1 and chat_parts[0]["type"] == "text":
        return [*results, {"role": "user", "content": chat_parts[0]["text"]}]
    return [*results, {"role": "user", "content": chat_parts}]


def _merge(into: dict, message: dict) -> None:
    """Two model contents in a row as one assistant message: their text, then their calls."""
    if message["content"]:
        into["content"] = (into["content"] or "") + message["content"]
    if "tool_calls" in message:
        into["tool_calls"] = [*into.get("tool_calls", ()), *message["tool_calls"]]


def _answered(response: dict, pending: list[tuple[str, str]], where: str) -> str:
    """The id of the call a function response answers: its own `id`, else the first unanswered call of
    the previous model turn with its name."""
    asked = response.get("id")
    for i, (call_id, name) in enumerate(pending):
        if call_id == asked or (asked is None and name == response["name"]):
            del pending[i]
            return call_id
    if isinstance(asked, str) and asked:
        return asked  # a call of an earlier turn: its id is what links them
    raise bad_request(f"'{where}.functionResponse' ({response['name']!r}) answers no functionCall of the "
                      "previous model turn", f"{where}.functionResponse", "invalid_value")


def _model_turn(parts: list, index: int, pending: list[tuple[str, str]]) -> dict:
    texts, calls = [], []
    for i, part in enumerate(parts):
        at = f"contents[{index}].parts[{i}]"
        if not isinstance(part, dict):
            raise bad_request(f"'{at}' must be a Part object", at, "invalid_type")
        if part.get("thought") is True:  # the model's thinking, sent back: not the answer
            continue
        if "functionCall" in part:
            call = camel_keys(part["functionCall"])
            if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not isinstance(
                    call.get("args", {}), dict | None):
                raise bad_request(f"'{at}.functionCall' must have a string 'name' and object 'args'",
                                  f"{at}.functionCall", "invalid_type")
            call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else f"call_{index}_{i}"
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": call["name"], "arguments": json.dumps(call.get("args") or {})}})
            pending.append((call_id, call["name"]))
        elif isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise bad_request(f"'{at}' must be a text or functionCall part in a model turn", at, "unsupported")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _media(part: Any, where: str) -> dict:
    """An image part: inline bytes as a data URL, or a file's URI as its URL."""
    part = camel_keys(part)
    unknown = sorted(set(part) - {"inlineData", "fileData", *_PART_IGNORED}) if isinstance(part, dict) else []
    if not isinstance(part, dict) or unknown or not ("inlineData" in part or "fileData" in part):
        raise bad_request(f"'{where}' must be a text, inlineData, fileData, functionCall or functionResponse part",
                          where, "unsupported")
    if "inlineData" in part:
        blob = camel_keys(part["inlineData"])
        mime, data = (blob.get("mimeType"), blob.get("data")) if isinstance(blob, dict) else (None, None)
        if not isinstance(mime, str) or not isinstance(data, str):
            raise bad_request(f"'{where}.inlineData' must have a string 'mimeType' and 'data'", f"{where}.inlineData",
                              "invalid_type")
        # The SDK encodes bytes URL-safe (`-`, `_`), which Google decodes too: a data URL's base64 is the standard's.
        url = f"data:{mime};base64,{data.translate(_STANDARD_BASE64)}"
    else:
        file = camel_keys(part["fileData"])
        mime, url = (file.get("mimeType"), file.get("fileUri")) if isinstance(file, dict) else (None, None)
        if not isinstance(url, str):
            raise bad_request(f"'{where}.fileData' must have a string 'fileUri'", f"{where}.fileData", "invalid_type")
    if mime is not None and not (isinstance(mime, str) and mime.startswith("image/")):
        raise bad_request(f"'{where}' is {mime}: only images are supported", where, "unsupported")
    return {"type": "image_url", "image_url": {"url": url}}


def _generation_config(config: Any, chat: dict) -> bool:
    """The chat's sampling and output fields from `generationConfig`; whether thoughts come back."""
    if config is None:
        return False
    if not isinstance(config, dict):
        raise bad_request("'generationConfig' must be an object", "generationConfig", "invalid_type")
    config = camel_keys(config)
    unknown = sorted(set(config) - {*_CONFIG, *_CONFIG_READ, *_CONFIG_IGNORED})
    if unknown:
        raise bad_request(f"unknown field 'generationConfig.{unknown[0]}'", f"generationConfig.{unknown[0]}",
                          "unknown_field")
    chat |= {name: config[key] for key, name in _CONFIG.items() if config.get(key) is not None}
    if (stops := config.get("stopSequences")) is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad_request("'generationConfig.stopSequences' must be a list of strings",
                              "generationConfig.stopSequences", "invalid_type")
        chat["stop"] = stops
    if config.get("responseLogprobs") is True:
        chat["logprobs"] = True
        chat["top_logprobs"] = config.get("logprobs") or 0
    modalities = config.get("responseModalities")
    if modalities is not None and (not isinstance(modalities, list) or set(modalities) - {"TEXT"}):
        raise bad_request("'generationConfig.responseModalities' may only be ['TEXT']",
                          "generationConfig.responseModalities", "unsupported")
    _response_format(config, chat)
    return _thinking(config.get("thinkingConfig"), chat)


def _response_format(config: dict, chat: dict) -> None:
    mime = config.get("responseMimeType")
    schema = config.get("responseJsonSchema")
    if schema is None and config.get("responseSchema") is not None:
        schema = json_schema(config["responseSchema"], "generationConfig.responseSchema")
    if mime in (None, "text/plain") and schema is None:
        return
    if mime != "application/json":
        raise bad_request("'generationConfig.responseMimeType' must be text/plain or application/json (a schema "
                          "needs application/json)", "generationConfig.responseMimeType", "unsupported")
    if schema is None:
        chat["response_format"] = {"type": "json_object"}
    elif not isinstance(schema, dict):
        raise bad_request("'generationConfig.responseJsonSchema' must be an object",
                          "generationConfig.responseJsonSchema", "invalid_type")
    else:
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}


def _thinking(thinking: Any, chat: dict) -> bool:
    """`thinkingLevel` as OpenAI's `reasoning_effort`; a `thinkingBudget` as the Messages API's `thinking`
    (sent on to Anthropic-bound deployments only: gateway/anthropic_fields.py), 0 as no reasoning, -1
    (dynamic) as the model's default."""
    if thinking is None:
        return False
    thinking = camel_keys(thinking)
    if not isinstance(thinking, dict) or set(thinking) - {"includeThoughts", "thinkingBudget", "thinkingLevel"}:
        raise bad_request("'generationConfig.thinkingConfig' takes includeThoughts, thinkingBudget and "
                          "thinkingLevel", "generationConfig.thinkingConfig", "invalid_value")
    level, budget = thinking.get("thinkingLevel"), thinking.get("thinkingBudget")
    if level is not None and level != "THINKING_LEVEL_UNSPECIFIED":
        if level not in _LEVELS:
            raise bad_request(f"'generationConfig.thinkingConfig.thinkingLevel' must be one of {', '.join(_LEVELS)}",
                              "generationConfig.thinkingConfig.thinkingLevel", "invalid_value")
        chat["reasoning_effort"] = _LEVELS[level]
    if budget is not None:
        if type(budget) is not int or budget < -1:
            raise bad_request("'generationConfig.thinkingConfig.thinkingBudget' must be -1, 0 or a positive integer",
                              "generationConfig.thinkingConfig.thinkingBudget", "invalid_value")
        if budget == 0:
            chat["reasoning_effort"] = "none"
        elif budget > 0:
            chat["thinking"] = {"type": "enabled", "budget_tokens": budget}
    return thinking.get("includeThoughts") is True


def _tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise bad_request("'tools' must be a list", "tools", "invalid_type")
    functions = []
    for i, tool in enumerate(tools):
        tool = camel_keys(tool)
        if not isinstance(tool, dict) or set(tool) != {"functionDeclarations"} or not isinstance(
                tool["functionDeclarations"], list):
            kind = next(iter(tool), "?") if isinstance(tool, dict) and tool else "?"
            raise bad_request(f"'tools[{i}]' must hold functionDeclarations only ({kind!r}: Google's server tools "
                              "are not supported)", f"tools[{i}]", "unsupported")
        for j, declared in enumerate(tool["functionDeclarations"]):
            functions.append(_function(camel_keys(declared), f"tools[{i}].functionDeclarations[{j}]"))
    return functions


def _function(declared: Any, where: str) -> dict:
    if not isinstance(declared, dict) or not isinstance(declared.get("name"), str) or not declared["name"]:
        raise bad_request(f"'{where}' must have a string 'name'", where, "invalid_type")
    function: dict[str, Any] = {"name": declared["name"]}
    if isinstance(declared.get("description"), str):
        function["description"] = declared["description"]
    if declared.get("parametersJsonSchema") is not None:
        function["parameters"] = declared["parametersJsonSchema"]
    elif declared.get("parameters") is not None:
        function["parameters"] = json_schema(declared["parameters"], f"{where}.parameters")
    else:
        function["parameters"] = {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _tool_config(config: Any, chat: dict) -> None:
    config = camel_keys(config)
    if not isinstance(config, dict):
        raise bad_request("'toolConfig' must be an object", "toolConfig", "invalid_type")
    calling = camel_keys(config.get("functionCallingConfig"))  # a retrievalConfig is Google's server tools'
    if calling is None:
        return
    mode = calling.get("mode", "AUTO") if isinstance(calling, dict) else None
    if mode not in _MODES:
        raise bad_request(f"'toolConfig.functionCallingConfig.mode' must be one of {', '.join(_MODES)}",
                          "toolConfig.functionCallingConfig.mode", "invalid_value")
    chat["tool_choice"] = _MODES[mode]
    allowed = calling.get("allowedFunctionNames")
    if allowed is None:
        return
    if not isinstance(allowed, list) or not all(isinstance(name, str) for name in allowed):
        raise bad_request("'toolConfig.functionCallingConfig.allowedFunctionNames' must be a list of names",
                          "toolConfig.functionCallingConfig.allowedFunctionNames", "invalid_type")
    kept = [tool for tool in chat.get("tools", ()) if tool["function"]["name"] in allowed]
    if len(kept) != len(set(allowed)):
        raise bad_request("'toolConfig.functionCallingConfig.allowedFunctionNames' names a function the tools do "
                          "not declare", "toolConfig.functionCallingConfig.allowedFunctionNames", "invalid_value")
    chat["tools"] = kept
    if mode == "ANY" and len(kept) == 1:  # that one function, as OpenAI forces a call by name
        chat["tool_choice"] = {"type": "function", "function": {"name": kept[0]["function"]["name"]}}
