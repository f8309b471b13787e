"""Request bodies: read (size-capped, streamed), parsed and validated into SamplingParams + fields.

Field policy, the same for /v1/completions and /v1/chat/completions:
- used: model, prompt (a string or token ids, or a batch of either) | messages, max_tokens (chat: also
  max_completion_tokens), temperature, top_p,
  n (1-64, each choice its own sequence), stream, stream_options.include_usage, stop, seed,
  presence_penalty and frequency_penalty (-2..2), logit_bias (token id -> -100..100, at most 300);
  completions: echo (the prompt before the answer; with logprobs, the prompt tokens' too; with
  max_tokens 0, the prompt alone: scoring, as lm-evaluation-harness asks for loglikelihoods);
  chat: tools, tool_choice ("required" or a function by name force a call, held by a grammar and
  answered as tool_calls: engine/forced_tools.py; parallel_tool_calls false then allows one call;
  allowed_tools narrows either mode to some of the tools, the prompt still offering all),
  custom tools (free-text input, held to their Lark or regex grammar when forced: engine/custom_tools.py);
  response_format (text, json_object, json_schema) or vLLM's structured_outputs (json, regex, choice,
  grammar, json_object): the answer held to a grammar (engine/structured_output.py);
  vLLM's extensions: top_k, min_p, repetition_penalty, min_tokens, allowed_token_ids and bad_words
  (engine/banned_tokens.py), ignore_eos, stop_token_ids,
  skip_special_tokens, include_stop_str_in_output, truncate_prompt_tokens (keep the prompt's last k
  tokens), stream_options.continuous_usage_stats, guided_json / guided_regex / guided_choice /
  guided_grammar (structured_outputs' older names), spaces_between_special_tokens (true only),
  thinking_token_budget (engine/thinking_budget.py), return_token_ids (engine/openai_token_ids.py),
  return_tokens_as_token_ids (engine/openai_logprobs.py), use_beam_search with length_penalty (n beams,
  engine/beam_generation.py);
  chat: chat_template_kwargs, add_generation_prompt, continue_final_message, and OpenAI's reasoning_effort
  (a thinking budget where the engine parses reasoning, else no effect);
  Pitstop's: session_id, priority, pin_ttl_s, and the scheduling hints rank_score, program_start and
  in_program (engine/hints.py).
- accepted and ignored, as they do not change the output: user, metadata, store, service_tier,
  parallel_tool_calls (but for a forced call and for calls parsed from the answer's text, which it
  limits to one), prompt_cache_key (the prefix cache needs no hint),
  safety_identifier.
- logprobs: chat `logprobs` (bool) with `top_logprobs` (0-20), completions `logprobs` (0-20): the
  sampled tokens' log-probabilities and their likeliest alternatives (engine/logprobs.py).
- accepted only at their no-op value, else 400 (we would silently not honour them):
  best_of (null/1), suffix (null/"").
tool_choice "none" renders the prompt without tools.
- anything else: 400 unknown field, so a typo is not silently dropped.
Chat messages keep role, content (a string, or text parts joined; with image_url parts, the parts:
engine/chat_images.py), name, tool_calls and
tool_call_id; other message keys are dropped. The "developer" role is rendered as "system".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from typing import Any

from engine.beam_search import BeamSearchParams
from engine.chat_images import content_parts
from engine.custom_tools import custom_tools, function_body
from engine.forced_tools import ForcedTools, allowed_tools, forced_tools
from engine.hints import NO_HINTS, SchedulingHints
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.server.beam_fields import beam_params
from engine.server.errors import bad_request
from engine.server.fields import boolean, field, int_list, integer, number, read_object, string
from engine.server.sampling_fields import GUIDED_FIELDS, logprobs_asked, sampling_params
from engine.thinking_budget import DEFAULT_EFFORT_BUDGETS

# A pin holds KV blocks other requests could use; a day is past any tool call (and past this, a
# deadline overflows the engine thread's timed wait).
MAX_PIN_TTL_S = 86_400.0
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy completions API
MAX_CHOICES = 64  # `n`: more samples of one prompt than any best-of or RL rollout asks
MAX_SEQUENCES = 2048  # prompts x n in one request (a completion's batch): OpenAI's limit on a batch of prompts


_USED = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed",
         "presence_penalty", "frequency_penalty", "logit_bias", "top_k", "min_p", "repetition_penalty",
         "min_tokens", "response_format", "structured_outputs", "session_id", "priority", "pin_ttl_s",
         "ignore_eos", "stop_token_ids", "rank_score", "program_start", "in_program", "skip_special_tokens",
         "spaces_between_special_tokens", "include_stop_str_in_output", "truncate_prompt_tokens",
         "thinking_token_budget", "allowed_token_ids", "bad_words", "return_token_ids",
         "return_tokens_as_token_ids", "use_beam_search", "length_penalty", *GUIDED_FIELDS}
_IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
            "safety_identifier"}
_NOOP_VALUES: dict[str, tuple[Any, ...]] = {"best_of": (None, 1), "suffix": (None, "")}
_COMPLETION_FIELDS = _USED | _IGNORED | {"prompt", "logprobs", "echo", "best_of", "suffix", "prompt_embeds"}
_CHAT_FIELDS = _USED | _IGNORED | {"messages", "max_completion_tokens", "tools", "tool_choice", "logprobs",
                                   "chat_template_kwargs", "add_generation_prompt", "continue_final_message",
                                   "top_logprobs", "reasoning_effort"}
_ROLES = {"system", "developer", "user", "assistant", "tool"}
_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


@dataclass(frozen=True)
class ChatTemplateOptions:
    """vLLM's chat fields: extra template variables (e.g. enable_thinking), whether the template adds the
    assistant's opening, and whether the last (assistant) message is continued instead of closed."""

    kwargs: dict[str, Any] = dataclass_field(default_factory=dict)
    add_generation_prompt: bool = True
    continue_final_message: bool = False


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
    # A completion's prompts sent as embeddings (base64, engine/prompt_embeds.py): choices before the prompts'.
    prompt_embeds: list[str] = dataclass_field(default_factory=list)
    messages: list[dict] | None = None
    tools: list[dict] | None = None
    n: int = 1  # choices, each its own sequence
    echo: bool = False  # completions: the prompt comes back before the answer
    forced_tools: ForcedTools | None = None  # chat: tool_choice "required" or a function (engine/forced_tools.py)
    score_only: bool = False  # echo with max_tokens 0: the prompt (and its logprobs) alone, nothing generated
    template: ChatTemplateOptions = dataclass_field(default_factory=ChatTemplateOptions)  # chat: how it renders
    truncate_prompt_tokens: int | None = None  # keep only the prompt's last this many tokens (vLLM's field)
    continuous_usage: bool = False  # stream_options.continuous_usage_stats: usage so far on every chunk
    parallel_tool_calls: bool = True  # false: at most one call (forced, or parsed from the answer's text)
    custom_tools: frozenset[str] = frozenset()  # chat: the tools whose calls go back as custom calls
    allowed_tools: frozenset[str] | None = None  # chat: tool_choice allowed_tools in "auto" mode (held_calls)
    reasoning_effort: str | None = None  # chat: a thinking budget where the engine parses reasoning
    return_token_ids: bool = False  # vLLM's: the prompt's and each choice's token ids in the response
    return_tokens_as_token_ids: bool = False  # vLLM's: logprobs' tokens written `token_id:N`
    beam: BeamSearchParams | None = None  # vLLM's use_beam_search: n is the width (engine/beam_generation.py)

    @property
    def num_choices(self) -> int:
        """n per prompt; a batch's choices are indexed prompt by prompt, as OpenAI's."""
        return self.n * (len(self.prompt_embeds) + len(self.prompts) if self.prompts is not None else 1)

    def resolved_params(self, num_prompt_tokens: int, max_model_len: int) -> SamplingParams:
        max_tokens = self.max_tokens or max(1, max_model_len - num_prompt_tokens)
        return replace(self.params, max_tokens=max_tokens)


def _ttl(body: dict, name: str) -> float | None:
    ttl_s = number(body, name)
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
    embeds = _prompt_embeds(body)
    # With prompt embeddings, the prompt may be left out or empty (vLLM's: embeddings and prompts both, choices
    # of the embeddings first).
    prompts = [] if embeds and body.get("prompt") in (None, "", []) else _prompts(body.get("prompt"))
    n = integer(body, "n") or 1
    if (len(prompts) + len(embeds)) * n > MAX_SEQUENCES:
        raise bad_request(f"{len(prompts) + len(embeds)} prompts x {n} choices is more than the {MAX_SEQUENCES} "
                          "sequences one request may run", "prompt", "invalid_value")
    max_tokens = integer(body, "max_tokens")
    echo = boolean(body, "echo")
    if echo and embeds:  # no text to echo, and the placeholders have no log-probabilities of their own
        raise bad_request("'echo' (and prompt logprobs) cannot be used with 'prompt_embeds'", "echo", "unsupported")
    score_only = echo and max_tokens == 0
    return _common(body, prompts=prompts, prompt_embeds=embeds, echo=echo, score_only=score_only,
                   max_tokens=1 if score_only else COMPLETIONS_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens)


def _prompt_embeds(body: dict) -> list[str]:
    """`prompt_embeds`: one base64 string or a non-empty list of them (decoded by engine/prompt_embeds.py)."""
    value = body.get("prompt_embeds")
    if value is None:
        return []
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return value
    raise bad_request("'prompt_embeds' must be a base64 string of a torch.save'd tensor, or a non-empty list of "
                      "them", "prompt_embeds", "invalid_type")


def _prompts(prompt: Any) -> list[str | list[int]]:
    """OpenAI's four shapes: a string, a list of token ids, or a batch of either."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        return [int_list(p, "prompt") for p in prompt]
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return [int_list(prompt, "prompt")]
    raise bad_request("'prompt' must be a string, a list of token ids, or a list of either", "prompt", "invalid_type")


def parse_chat(body: Any) -> GenerateRequest:
    body = read_object(body, _CHAT_FIELDS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    custom = custom_tools(body.get("tools"))
    body = function_body(body, custom)  # templates render custom tools (and their calls) as functions
    tools = _tools(body)
    tool_choice = body.get("tool_choice")
    try:
        forced = forced_tools(tool_choice, tools, body.get("parallel_tool_calls"), custom)
        allowed = allowed_tools(tool_choice, tools)
    except InvalidRequestError as exc:
        raise bad_request(str(exc), exc.param) from None
    max_tokens = integer(body, "max_completion_tokens")
    return _common(body, messages=[_message(m, i) for i, m in enumerate(body["messages"])],
                   tools=None if tool_choice == "none" else tools, forced_tools=forced, template=_template(body),
                   custom_tools=frozenset(custom),
                   allowed_tools=frozenset(allowed[1]) if allowed is not None and allowed[0] == "auto" else None,
                   parallel_tool_calls=body.get("parallel_tool_calls") is not False,
                   reasoning_effort=_reasoning_effort(body),
                   max_tokens=integer(body, "max_tokens") if max_tokens is None else max_tokens)


def _reasoning_effort(body: dict) -> str | None:
    effort = string(body, "reasoning_effort")
    if effort is not None and effort not in DEFAULT_EFFORT_BUDGETS:
        raise bad_request(f"'reasoning_effort' must be one of {', '.join(DEFAULT_EFFORT_BUDGETS)}", "reasoning_effort",
                          "invalid_value")
    return effort


def _common(body: dict, **fields: Any) -> GenerateRequest:
    model = string(body, "model")
    if not model:
        raise bad_request("'model' is required", "model")
    for name, allowed in _NOOP_VALUES.items():
        if name in body and body[name] not in allowed:
            raise bad_request(f"'{name}' is not supported (allowed: {allowed})", name, "unsupported")
    n = integer(body, "n")
    if n is not None and not 1 <= n <= MAX_CHOICES:
        raise bad_request(f"'n' must be between 1 and {MAX_CHOICES}", "n", "invalid_value")
    stream = boolean(body, "stream")
    options = field(body, "stream_options", dict, "an object") or {}
    if options and not stream:
        raise bad_request("'stream_options' is only allowed with stream=true", "stream_options")
    read_object(options, {"include_usage", "continuous_usage_stats"})
    include_usage = boolean(options, "include_usage")
    truncate = integer(body, "truncate_prompt_tokens")
    if truncate is not None and truncate < 1:
        raise bad_request("'truncate_prompt_tokens' must be at least 1", "truncate_prompt_tokens", "invalid_value")
    session_id = string(body, "session_id")
    if session_id is not None and not 0 < len(session_id) <= 256:
        raise bad_request("'session_id' must be 1 to 256 characters", "session_id")
    pin_ttl_s = _ttl(body, "pin_ttl_s")
    if pin_ttl_s is not None and session_id is None:
        raise bad_request("'pin_ttl_s' needs a 'session_id' to pin under", "pin_ttl_s")
    max_tokens = fields.pop("max_tokens")
    if max_tokens is not None and max_tokens < 1:
        raise bad_request("'max_tokens' must be at least 1 (0 only with echo: the prompt scored, nothing "
                          "generated)", "max_tokens")
    min_tokens = integer(body, "min_tokens")
    if min_tokens is not None and max_tokens is not None and min_tokens > max_tokens:
        raise bad_request("'min_tokens' must not exceed 'max_tokens'", "min_tokens", "invalid_value")
    logprobs = logprobs_asked(body, chat="messages" in fields)
    try:
        forced = fields.get("forced_tools")
        params = sampling_params(body, max_tokens or 1, logprobs,
                                  prompt_logprobs=logprobs if fields.get("echo") else None,
                                  forced=forced.constraint(fields["tools"]) if forced else None)
    except InvalidRequestError as exc:
        raise bad_request(str(exc), exc.param) from None
    return GenerateRequest(model=model, params=params, max_tokens=max_tokens, stream=stream,
                           include_usage=include_usage, session_id=session_id, n=n or 1,
                           priority=number(body, "priority") or 0.0, pin_ttl_s=pin_ttl_s,
                           hints=SchedulingHints(number(body, "rank_score"), number(body, "program_start"),
                                                 boolean(body, "in_program")),
                           truncate_prompt_tokens=truncate, continuous_usage=boolean(options, "continuous_usage_stats"),
                           return_token_ids=boolean(body, "return_token_ids"),
                           return_tokens_as_token_ids=boolean(body, "return_tokens_as_token_ids"),
                           beam=beam_params(body, n), **fields)


_TEMPLATE_VARIABLES = {"messages", "tools", "add_generation_prompt", "bos_token", "eos_token", "pad_token",
                       "unk_token"}


def _template(body: dict) -> ChatTemplateOptions:
    kwargs = field(body, "chat_template_kwargs", dict, "an object") or {}
    taken = sorted(set(kwargs) & _TEMPLATE_VARIABLES)
    if taken:
        raise bad_request(f"'chat_template_kwargs' cannot set {taken[0]!r}: the request's own fields do",
                          "chat_template_kwargs", "invalid_value")
    add = field(body, "add_generation_prompt", bool, "a boolean")
    continue_final = boolean(body, "continue_final_message")
    if continue_final and add:
        raise bad_request("'continue_final_message' continues the last message: 'add_generation_prompt' must be "
                          "false", "continue_final_message", "invalid_value")
    messages = body["messages"]
    if continue_final and not (isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant"
                               and isinstance(messages[-1].get("content"), str) and messages[-1]["content"].strip()):
        raise bad_request("'continue_final_message' needs a last assistant message with text to continue",
                          "continue_final_message", "invalid_value")
    return ChatTemplateOptions(kwargs, add_generation_prompt=not continue_final if add is None else add,
                               continue_final_message=continue_final)


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
        if isinstance(call, dict) and call.get("type") == "custom":  # engine/custom_tools.py
            custom = call.get("custom")
            if not isinstance(custom, dict) or not isinstance(custom.get("name"), str) \
                    or not isinstance(custom.get("input"), str):
                raise bad_request(f"'{where}' must be {{\"id\", \"type\": \"custom\", \"custom\": {{\"name\", "
                                  "\"input\"}}", where, "invalid_type")
            continue
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
            raise bad_request(f"'{where}.type' must be \"function\" or \"custom\"", f"{where}.type", "invalid_value")


def _message(message: Any, index: int) -> dict:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad_request(f"'{param}' must be an object", param, "invalid_type")
    role = message.get("role")
    if role not in _ROLES:
        raise bad_request(f"'{param}.role' must be one of {sorted(_ROLES)}", f"{param}.role")
    content = message.get("content")
    if isinstance(content, list):  # text parts joined; with images, text and image parts (engine/chat_images.py)
        content = content_parts(content, f"{param}.content")
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
