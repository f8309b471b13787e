"""Request bodies: read (size-capped, streamed), parsed and validated into SamplingParams + fields.

Field policy, the same for /v1/completions and /v1/chat/completions:
- used: model, prompt (a string or token ids, or a batch of either) | messages, max_tokens (chat: also
  max_completion_tokens), temperature, top_p,
  n (1-64, each choice its own sequence), stream, stream_options.include_usage, stop, seed,
  presence_penalty and frequency_penalty (-2..2), logit_bias (token id -> -100..100, at most 300);
  completions: echo (the prompt before the answer; with logprobs, the prompt tokens' too; with
  max_tokens 0, the prompt alone: scoring, as lm-evaluation-harness asks for loglikelihoods);
  chat: tools, tool_choice ("required" or a function by name force a call, held by a grammar and
  answered as tool_calls: engine/forced_tools.py; parallel_tool_calls false then allows one call);
  response_format (text, json_object, json_schema) or vLLM's structured_outputs (json, regex, choice,
  grammar, json_object): the answer held to a grammar (engine/structured_output.py);
  vLLM's extensions: top_k, min_p, repetition_penalty, min_tokens, ignore_eos, stop_token_ids;
  Pitstop's: session_id, priority, pin_ttl_s, and the scheduling hints rank_score, program_start and
  in_program (engine/hints.py).
- accepted and ignored, as they do not change the output: user, metadata, store, service_tier,
  parallel_tool_calls (but for a forced call), prompt_cache_key (the prefix cache needs no hint),
  safety_identifier.
- logprobs: chat `logprobs` (bool) with `top_logprobs` (0-20), completions `logprobs` (0-20): the
  sampled tokens' log-probabilities and their likeliest alternatives (engine/logprobs.py).
- accepted only at their no-op value, else 400 (we would silently not honour them):
  best_of (null/1), suffix (null/"").
tool_choice "none" renders the prompt without tools.
- anything else: 400 unknown field, so a typo is not silently dropped.
Chat messages keep role, content (a string, or text parts joined), name, tool_calls and
tool_call_id; other message keys are dropped. The "developer" role is rendered as "system".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from engine.forced_tools import ForcedTools, forced_tools
from engine.hints import NO_HINTS, SchedulingHints
from engine.sampling_params import MAX_TOP_LOGPROBS, InvalidRequestError, SamplingParams
from engine.server.errors import bad_request
from engine.structured_output import OutputConstraint, constraint_from_fields

# A pin holds KV blocks other requests could use; a day is past any tool call (and past this, a
# deadline overflows the engine thread's timed wait).
MAX_PIN_TTL_S = 86_400.0
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy completions API
MAX_CHOICES = 64  # `n`: more samples of one prompt than any best-of or RL rollout asks
MAX_SEQUENCES = 2048  # prompts x n in one request (a completion's batch): OpenAI's limit on a batch of prompts

MAX_LOGIT_BIAS_TOKENS = 300  # OpenAI's limit on logit_bias entries

_USED = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed",
         "presence_penalty", "frequency_penalty", "logit_bias", "top_k", "min_p", "repetition_penalty",
         "min_tokens", "response_format", "structured_outputs", "session_id", "priority", "pin_ttl_s",
         "ignore_eos", "stop_token_ids", "rank_score", "program_start", "in_program"}
_IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
            "safety_identifier"}
_NOOP_VALUES: dict[str, tuple[Any, ...]] = {"best_of": (None, 1), "suffix": (None, "")}
_COMPLETION_FIELDS = _USED | _IGNORED | {"prompt", "logprobs", "echo", "best_of", "suffix"}
_CHAT_FIELDS = _USED | _IGNORED | {"messages", "max_completion_tokens", "tools", "tool_choice", "logprobs",
                                   "top_logprobs"}
_ROLES = {"system", "developer", "user", "assistant", "tool"}
_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


@dataclass(frozen=True)
class GenerateRequest:
    """One validated completions or chat request (exactly one of `prompts` and `messages` is set)."""

    model: str
    params: SamplingParams
    max_tokens: int | None  # None: the rest of the context, known once the prompt is tokenized
    stream: bool
    include_usage: bool
    session_id: str | None
    priority: float
    pin_ttl_s: float | None
    hints: SchedulingHints = NO_HINTS
    prompts: list[str | list[int]] | None = None  # a completion's: one, or a batch (each its own choices)
    messages: list[dict] | None = None
    tools: list[dict] | None = None
    n: int = 1  # choices, each its own sequence
    echo: bool = False  # completions: the prompt comes back before the answer
    forced_tools: ForcedTools | None = None  # chat: tool_choice "required" or a function (engine/forced_tools.py)
    score_only: bool = False  # echo with max_tokens 0: the prompt (and its logprobs) alone, nothing generated

    @property
    def num_choices(self) -> int:
        """n per prompt; a batch's choices are indexed prompt by prompt, as OpenAI's."""
        return self.n * (len(self.prompts) if self.prompts is not None else 1)

    def resolved_params(self, num_prompt_tokens: int, max_model_len: int) -> SamplingParams:
        max_tokens = self.max_tokens or max(1, max_model_len - num_prompt_tokens)
        return replace(self.params, max_tokens=max_tokens)


def read_object(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}", unknown[0], "unknown_field")
    return body


# ---- typed fields ---------------------------------------------------------------------------------


def _field(body: dict, name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to Python, never a number to a client.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise bad_request(f"'{name}' must be {what}", name, "invalid_type")
    return value


def _string(body: dict, name: str) -> str | None:
    return _field(body, name, str, "a string")


def _bool(body: dict, name: str) -> bool:
    return bool(_field(body, name, bool, "a boolean"))


def _int(body: dict, name: str) -> int | None:
    return _field(body, name, int, "an integer")


def _number(body: dict, name: str) -> float | None:
    value = _field(body, name, (int, float), "a number")
    if value is not None and not math.isfinite(value):
        raise bad_request(f"'{name}' must be a finite number", name)
    return None if value is None else float(value)


def _int_list(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise bad_request(f"'{name}' must be a list of integers", name, "invalid_type")
    return value


def _ttl(body: dict, name: str) -> float | None:
    ttl_s = _number(body, name)
    if ttl_s is not None and not 0 <= ttl_s <= MAX_PIN_TTL_S:
        raise bad_request(f"'{name}' must be between 0 and {MAX_PIN_TTL_S:g} seconds", name, "invalid_value")
    return ttl_s


def read_ttl(body: Any) -> float:
    """`{"ttl_s": number in [0, MAX_PIN_TTL_S]}`, the body of the session pin endpoints."""
    body = read_object(body, {"ttl_s"})
    ttl_s = _ttl(body, "ttl_s")
    if ttl_s is None:
        raise bad_request("'ttl_s' is required", "ttl_s")
    return ttl_s


# ---- the two generation endpoints -----------------------------------------------------------------


def parse_completion(body: Any) -> GenerateRequest:
    body = read_object(body, _COMPLETION_FIELDS)
    prompts = _prompts(body.get("prompt"))
    n = _int(body, "n") or 1
    if len(prompts) * n > MAX_SEQUENCES:
        raise bad_request(f"{len(prompts)} prompts x {n} choices is more than the {MAX_SEQUENCES} sequences one "
                          "request may run", "prompt", "invalid_value")
    max_tokens = _int(body, "max_tokens")
    echo = _bool(body, "echo")
    score_only = echo and max_tokens == 0
    return _common(body, prompts=prompts, echo=echo, score_only=score_only,
                   max_tokens=1 if score_only else COMPLETIONS_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens)


def _prompts(prompt: Any) -> list[str | list[int]]:
    """OpenAI's four shapes: a string, a list of token ids, or a batch of either."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        return [_int_list(p, "prompt") for p in prompt]
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return [_int_list(prompt, "prompt")]
    raise bad_request("'prompt' must be a string, a list of token ids, or a list of either", "prompt", "invalid_type")


def parse_chat(body: Any) -> GenerateRequest:
    body = read_object(body, _CHAT_FIELDS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    tools = _tools(body)
    tool_choice = body.get("tool_choice")
    try:
        forced = forced_tools(tool_choice, tools, body.get("parallel_tool_calls"))
    except InvalidRequestError as exc:
        raise bad_request(str(exc), exc.param) from None
    max_tokens = _int(body, "max_completion_tokens")
    return _common(body, messages=[_message(m, i) for i, m in enumerate(messages)],
                   tools=None if tool_choice == "none" else tools, forced_tools=forced,
                   max_tokens=_int(body, "max_tokens") if max_tokens is None else max_tokens)


def _common(body: dict, **fields: Any) -> GenerateRequest:
    model = _string(body, "model")
    if not model:
        raise bad_request("'model' is required", "model")
    for name, allowed in _NOOP_VALUES.items():
        if name in body and body[name] not in allowed:
            raise bad_request(f"'{name}' is not supported (allowed: {allowed})", name, "unsupported")
    n = _int(body, "n")
    if n is not None and not 1 <= n <= MAX_CHOICES:
        raise bad_request(f"'n' must be between 1 and {MAX_CHOICES}", "n", "invalid_value")
    stream = _bool(body, "stream")
    options = _field(body, "stream_options", dict, "an object") or {}
    if options and not stream:
        raise bad_request("'stream_options' is only allowed with stream=true", "stream_options")
    read_object(options, {"include_usage"})
    include_usage = _bool(options, "include_usage")
    session_id = _string(body, "session_id")
    if session_id is not None and not 0 < len(session_id) <= 256:
        raise bad_request("'session_id' must be 1 to 256 characters", "session_id")
    pin_ttl_s = _ttl(body, "pin_ttl_s")
    if pin_ttl_s is not None and session_id is None:
        raise bad_request("'pin_ttl_s' needs a 'session_id' to pin under", "pin_ttl_s")
    max_tokens = fields.pop("max_tokens")
    if max_tokens is not None and max_tokens < 1:
        raise bad_request("'max_tokens' must be at least 1 (0 only with echo: the prompt scored, nothing "
                          "generated)", "max_tokens")
    min_tokens = _int(body, "min_tokens")
    if min_tokens is not None and max_tokens is not None and min_tokens > max_tokens:
        raise bad_request("'min_tokens' must not exceed 'max_tokens'", "min_tokens", "invalid_value")
    logprobs = _logprobs(body, chat="messages" in fields)
    try:
        forced = fields.get("forced_tools")
        params = _sampling_params(body, max_tokens or 1, logprobs,
                                  prompt_logprobs=logprobs if fields.get("echo") else None,
                                  forced=forced.constraint(fields["tools"]) if forced else None)
    except InvalidRequestError as exc:
        raise bad_request(str(exc), exc.param) from None
    return GenerateRequest(model=model, params=params, max_tokens=max_tokens, stream=stream,
                           include_usage=include_usage, session_id=session_id, n=n or 1,
                           priority=_number(body, "priority") or 0.0, pin_ttl_s=pin_ttl_s,
                           hints=SchedulingHints(_number(body, "rank_score"), _number(body, "program_start"),
                                                 _bool(body, "in_program")),
                           **fields)


def _logprobs(body: dict, chat: bool) -> int | None:
    """How many alternatives to each sampled token's log-probability the request wants; None: none."""
    if not chat:  # completions: `logprobs` is that number
        value = _int(body, "logprobs")
        if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
            raise bad_request(f"'logprobs' must be between 0 and {MAX_TOP_LOGPROBS}", "logprobs", "invalid_value")
        return value
    top = _int(body, "top_logprobs")
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise bad_request(f"'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}", "top_logprobs", "invalid_value")
    if not _bool(body, "logprobs"):
        if top:
            raise bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        return None
    return top or 0


def _sampling_params(body: dict, max_tokens: int, logprobs: int | None = None,
                     prompt_logprobs: int | None = None, forced: OutputConstraint | None = None) -> SamplingParams:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise bad_request("'stop' must be a string or a list of strings", "stop", "invalid_type")
    temperature, top_p = _number(body, "temperature"), _number(body, "top_p")
    stop_token_ids = body.get("stop_token_ids")
    return SamplingParams(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        max_tokens=max_tokens,
        stop=tuple(stop or ()),
        stop_token_ids=tuple(_int_list(stop_token_ids, "stop_token_ids") if stop_token_ids is not None else ()),
        ignore_eos=_bool(body, "ignore_eos"),
        seed=_int(body, "seed"),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        presence_penalty=_number(body, "presence_penalty") or 0.0,
        frequency_penalty=_number(body, "frequency_penalty") or 0.0,
        repetition_penalty=_or(_number(body, "repetition_penalty"), 1.0),
        logit_bias=_logit_bias(body),
        top_k=_int(body, "top_k") or 0,
        min_p=_number(body, "min_p") or 0.0,
        min_tokens=_int(body, "min_tokens") or 0,
        constraint=_constraint(body, forced),
    )


def _constraint(body: dict, forced: OutputConstraint | None) -> OutputConstraint | None:
    asked = constraint_from_fields(body.get("response_format"), body.get("structured_outputs"))
    if forced is not None and asked is not None:
        raise InvalidRequestError("a forced tool call is its own structure: 'tool_choice' cannot be combined with "
                                  f"'{asked.param}'", "tool_choice")
    return forced or asked


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _logit_bias(body: dict) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias}: keys are token ids written as strings (JSON has no other keys)."""
    bias = _field(body, "logit_bias", dict, "an object mapping token ids to biases")
    if not bias:
        return ()
    if len(bias) > MAX_LOGIT_BIAS_TOKENS:
        raise bad_request(f"'logit_bias' may hold at most {MAX_LOGIT_BIAS_TOKENS} tokens", "logit_bias")
    pairs = []
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit()):
            raise bad_request(f"'logit_bias' keys must be token ids, not {key[:32]!r}", "logit_bias", "invalid_value")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad_request(f"'logit_bias[{key}]' must be a number", "logit_bias", "invalid_type")
        pairs.append((int(key), float(value)))
    return tuple(pairs)


def check_message_fields(message: dict, param: str) -> None:
    """`name`, `tool_call_id` and an assistant's `tool_calls` in OpenAI's shape, else a 400 naming the
    part: a chat template handed anything else fails with a message nobody can act on."""
    for key in ("name", "tool_call_id"):
        if message.get(key) is not None and not isinstance(message[key], str):
            raise bad_request(f"'{param}.{key}' must be a string", f"{param}.{key}", "invalid_type")
    calls = message.get("tool_calls")
    if calls is None:
        return
    if not isinstance(calls, list):
        raise bad_request(f"'{param}.tool_calls' must be a list", f"{param}.tool_calls", "invalid_type")
    for i, call in enumerate(calls):
        where = f"{param}.tool_calls[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise bad_request(f"'{where}' must be {{\"id\", \"type\": \"function\", \"function\": "
                              "{\"name\", \"arguments\"}}", where, "invalid_type")
        for key in ("name", "arguments"):
            if not isinstance(function.get(key), str):
                raise bad_request(f"'{where}.function.{key}' must be a string (arguments: JSON text)",
                                  f"{where}.function.{key}", "invalid_type")
        if call.get("id") is not None and not isinstance(call["id"], str):
            raise bad_request(f"'{where}.id' must be a string", f"{where}.id", "invalid_type")
        if call.get("type", "function") != "function":
            raise bad_request(f"'{where}.type' must be \"function\"", f"{where}.type", "invalid_value")


def _message(message: Any, index: int) -> dict:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad_request(f"'{param}' must be an object", param, "invalid_type")
    role = message.get("role")
    if role not in _ROLES:
        raise bad_request(f"'{param}.role' must be one of {sorted(_ROLES)}", f"{param}.role")
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text ones, joined
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise bad_request("only text content parts are supported", f"{param}.content", "unsupported")
        content = "\n".join(p["text"] for p in content)
    elif content is None and role != "assistant":
        raise bad_request(f"'{param}.content' is required", f"{param}.content")
    elif content is not None and not isinstance(content, str):
        raise bad_request(f"'{param}.content' must be a string or a list of parts", f"{param}.content",
                          "invalid_type")
    check_message_fields(message, param)
    # Many chat templates predate the "developer" role; it means what "system" meant.
    out = {k: message[k] for k in _MESSAGE_KEYS if message.get(k) is not None}
    out.update(role="system" if role == "developer" else role, content=content)
    return out


def _tools(body: dict) -> list[dict] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools):
        raise bad_request("'tools' must be a list of {\"type\": \"function\", \"function\": {\"name\", ...}}",
                          "tools", "invalid_type")
    return tools or None
