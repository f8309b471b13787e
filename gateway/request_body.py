"""What the gateway reads from a request before forwarding it: checks the fields every backend
shares (a clear 400 here beats a provider's 500 later), takes out Pitstop's own fields, and
passes everything else through unchanged (tools, tool_choice, response_format, ...)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers

from engine.server.errors import bad_request
from engine.server.protocol import MAX_PIN_TTL_S, check_message_fields
from gateway.backends.base import Kind
from gateway.cache_control import CACHE_FIELD, CACHE_HEADER, CacheControl
from gateway.image_size import ImagePart, message_images
from gateway.image_tokens import DEFAULT_IMAGE_TOKENS, ImageTokens
from gateway.metadata import checked_metadata
from gateway.prompt_embeds import prompt_embeds_rows
from rankers.work import CHARS_PER_TOKEN

# Pitstop's fields: read here, never forwarded as they are.
GATEWAY_FIELDS = ("session_id", "priority", "pin_ttl_s", "cost_preference", CACHE_FIELD)
SESSION_HEADER = "x-session-id"
COST_PREFERENCE_HEADER = "x-pitstop-cost-preference"
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_NUMBER_RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "presence_penalty": (-2.0, 2.0),
                  "frequency_penalty": (-2.0, 2.0), "priority": (-1e9, 1e9), "pin_ttl_s": (0.0, MAX_PIN_TTL_S),
                  "cost_preference": (0.0, 1e6)}
_POSITIVE_INTS = ("max_tokens", "max_completion_tokens", "n")
_TYPES: dict[str, tuple[type, ...]] = {"tools": (list,), "response_format": (dict,), "metadata": (dict,),
                                       "user": (str,), "seed": (int,), "logit_bias": (dict,),
                                       "tool_choice": (str, dict), "stream_options": (dict,)}


@dataclass
class ProxyRequest:
    kind: Kind
    model: str
    body: dict  # what backends receive: the client's body without Pitstop's fields
    stream: bool
    include_usage: bool
    session_id: str | None
    priority: float | None  # as asked (None: not asked); the key decides what it gets (gateway/auth.py)
    pin_ttl_s: float | None
    cost_preference: float | None
    prompt_text: str  # what routers and rankers read: the last user turn (or the prompt)
    # The whole prompt's size, every message, each image at DEFAULT_IMAGE_TOKENS' worth (before routing): the
    # prefill the ranker's work score counts. `chars_on` counts the images as a deployment does.
    prompt_chars: int = 0
    cache: CacheControl = CacheControl()  # the request's say over the response cache (gateway/response_cache.py)
    store: bool = False  # a chat asks to be stored (gateway/stored_completions.py); Pitstop's to do, not forwarded
    images: tuple[ImagePart, ...] = ()  # a chat's image parts, sized (gateway/image_size.py)

    @property
    def messages(self) -> list[dict] | None:
        return self.body.get("messages")

    def chars_on(self, rules: Sequence[ImageTokens]) -> int:
        """`prompt_chars` with each image at what it counts for under `rules` (a model's deployments': the most of
        them, as a worst case), in characters; no rules: the default."""
        if not self.images or not rules:
            return self.prompt_chars
        text = self.prompt_chars - IMAGE_CHARS_PER_TOKEN * DEFAULT_IMAGE_TOKENS * len(self.images)
        return text + IMAGE_CHARS_PER_TOKEN * sum(max(rule.tokens(image) for rule in rules) for image in self.images)

    def measure_messages(self) -> None:
        """Its prompt's text, size and images read again from its messages (after the gateway changed them)."""
        self.prompt_text, self.prompt_chars = check_messages(self.body["messages"])
        self.images = message_images(self.body["messages"])


def _number(body: dict, name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_request(f"'{name}' must be a number", name, "invalid_type")
    low, high = _NUMBER_RANGES[name]
    if not low <= value <= high or (name == "top_p" and value == 0):
        raise bad_request(f"'{name}' must be between {low:g} and {high:g}", name, "invalid_value")
    return float(value)


def _check_types(body: dict, kind: Kind) -> None:
    for name, kinds in _TYPES.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise bad_request(f"'{name}' has the wrong type", name, "invalid_type")
    # A completion that echoes its prompt may generate nothing: scoring a text (lm-evaluation-harness).
    scoring = kind == "completion" and body.get("echo") is True and body.get("max_tokens") == 0
    for name in _POSITIVE_INTS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1) \
                and not (scoring and name == "max_tokens"):
            raise bad_request(f"'{name}' must be a positive integer", name, "invalid_value")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop)):
        raise bad_request("'stop' must be a string or a list of up to 4 strings", "stop", "invalid_type")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise bad_request("'stream' must be a boolean", "stream", "invalid_type")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


# An image's tokens as characters of the prompt's size, as routing.estimate_tokens counts text.
IMAGE_CHARS_PER_TOKEN = 4


def image_parts(content: Any) -> int:
    """How many image parts (chat's image_url, the Responses API's input_image) a message's content holds."""
    if not isinstance(content, list):
        return 0
    return sum(1 for p in content if isinstance(p, dict) and p.get("type") in ("image_url", "input_image"))


def check_messages(messages: Any) -> tuple[str, int]:
    """The last user turn (its text only: what routers read) and the characters of all messages' text, each
    image counted as DEFAULT_IMAGE_TOKENS tokens' worth (gateway/image_tokens.py)."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages", "invalid_type")
    last_user, chars = "", 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"'messages[{i}]' must be an object", f"messages[{i}]", "invalid_type")
        if message.get("role") not in _ROLES:
            raise bad_request(f"'messages[{i}].role' must be one of {sorted(_ROLES)}", f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(f"'messages[{i}].content' must be a string or a list of parts",
                              f"messages[{i}].content", "invalid_type")
        check_message_fields(message, f"messages[{i}]")
        text = _text(content)
        chars += len(text) + IMAGE_CHARS_PER_TOKEN * DEFAULT_IMAGE_TOKENS * image_parts(content)
        if message["role"] == "user":
            last_user = text
    return last_user, chars


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int and t >= 0 for t in value)


def _check_prompt(prompt: Any, embeds: Any = None) -> tuple[str, int]:
    """OpenAI's prompt shapes: a string, token ids, or a batch of either (vLLM and OpenAI answer each
    prompt as its own choice; Pitstop's engine takes one). A batch is routed and ranked by its first
    prompt, and counted whole. vLLM's `prompt_embeds` (with it the prompt may be left out or empty) count
    a token a row, read from their tensors' headers (gateway/prompt_embeds.py)."""
    if embeds is not None:
        rows = round(prompt_embeds_rows(embeds) * CHARS_PER_TOKEN)
        if prompt in (None, "", []):
            return "", rows
        text, chars = _check_prompt(prompt)
        return text, chars + rows
    if isinstance(prompt, str):
        return prompt, len(prompt)
    if _token_ids(prompt):
        return "", round(len(prompt) * CHARS_PER_TOKEN)
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt[0], sum(map(len, prompt))
    if isinstance(prompt, list) and prompt and all(_token_ids(p) for p in prompt):
        return "", round(sum(map(len, prompt)) * CHARS_PER_TOKEN)
    raise bad_request("'prompt' must be a string, a list of token ids, or a non-empty list of either", "prompt",
                      "invalid_type")


def parse_proxy_request(raw: Any, kind: Kind, headers: Headers) -> ProxyRequest:
    if not isinstance(raw, dict):
        raise bad_request("the body must be a JSON object")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a string", "model")
    _check_types(raw, kind)
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _number(raw, name)
    prompt_text, prompt_chars = (check_messages(raw.get("messages")) if kind == "chat"
                                 else _check_prompt(raw.get("prompt"), raw.get("prompt_embeds")))
    stream = bool(raw.get("stream"))
    options = raw.get("stream_options") or {}
    if options and not stream:
        raise bad_request("'stream_options' is only allowed with stream=true", "stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_request("'stream_options.include_usage' must be a boolean", "stream_options.include_usage")
    session_id = headers.get(SESSION_HEADER) or raw.get("session_id")
    metadata = raw.get("metadata")
    if session_id is None and isinstance(metadata, dict) and isinstance(metadata.get("session_id"), str):
        session_id = metadata["session_id"]
    cache_key = raw.get("prompt_cache_key")
    if session_id is None and isinstance(cache_key, str) and 0 < len(cache_key) <= 256:
        # OpenAI's per-conversation cache hint (Codex and other agents send one): the same affinity.
        session_id = cache_key
    if session_id is not None and (not isinstance(session_id, str) or not 0 < len(session_id) <= 256):
        raise bad_request("the session id must be a string of 1 to 256 characters", "session_id")
    cost_preference = _number(raw, "cost_preference")
    if (header := headers.get(COST_PREFERENCE_HEADER)) is not None:
        low, high = _NUMBER_RANGES["cost_preference"]
        try:
            cost_preference = float(header)
        except ValueError:
            cost_preference = math.nan
        if not low <= cost_preference <= high:  # NaN fails this too
            raise bad_request(f"header {COST_PREFERENCE_HEADER} must be a number from {low:g} to {high:g}",
                              COST_PREFERENCE_HEADER)
    pin_ttl_s = _number(raw, "pin_ttl_s")
    store = raw.get("store")
    if store is not None and not isinstance(store, bool):
        raise bad_request("'store' must be a boolean", "store", "invalid_type")
    if store and kind == "chat":
        checked_metadata(metadata)  # what a stored completion is found by
    held_back = GATEWAY_FIELDS + ("store",) if kind == "chat" else GATEWAY_FIELDS
    body = {k: v for k, v in raw.items() if k not in held_back}
    return ProxyRequest(kind=kind, model=model, body=body, stream=stream, include_usage=include_usage,
                        session_id=session_id, priority=asked_priority(raw), pin_ttl_s=pin_ttl_s,
                        cost_preference=cost_preference, prompt_text=prompt_text, prompt_chars=prompt_chars,
                        cache=CacheControl.of(raw.get(CACHE_FIELD), headers.get(CACHE_HEADER)),
                        store=bool(store) and kind == "chat",
                        images=message_images(raw.get("messages")) if kind == "chat" else ())


# OpenAI's `service_tier` as the scheduler's priority (lower goes first): "flex" waits with the batches
# (gateway/batches.py), "priority" goes before default requests; a key's own priority still caps it.
SERVICE_TIER_PRIORITY: dict[str, float | None] = {"auto": None, "default": None, "scale": None, "flex": 10.0,
                                                  "priority": -1.0}


def asked_priority(raw: dict) -> float | None:
    """The priority a request asks for: its `priority`, else what its `service_tier` stands for."""
    priority, tier = _number(raw, "priority"), raw.get("service_tier")
    if tier is not None and tier not in SERVICE_TIER_PRIORITY:
        raise bad_request(f"'service_tier' must be one of {', '.join(SERVICE_TIER_PRIORITY)}", "service_tier",
                          "invalid_value")
    return SERVICE_TIER_PRIORITY.get(tier) if priority is None and tier is not None else priority


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on one request's inputs
_ENCODING_FORMATS = ("float", "base64")


def _check_embedding_input(value: Any) -> tuple[str, int]:
    """OpenAI's four shapes of `input`: a string, strings, token ids, lists of token ids (none empty).
    Returns the text (strings joined, for the row) and its size in characters (4 a token id)."""
    if isinstance(value, str) and value:
        return value, len(value)
    if _token_ids(value):
        return "", round(len(value) * CHARS_PER_TOKEN)
    if isinstance(value, list) and 0 < len(value) <= MAX_EMBEDDING_INPUTS:
        if all(isinstance(item, str) and item for item in value):
            return "\n".join(value), sum(map(len, value))
        if all(_token_ids(item) for item in value):
            return "", round(sum(map(len, value)) * CHARS_PER_TOKEN)
    if isinstance(value, list) and len(value) > MAX_EMBEDDING_INPUTS:
        raise bad_request(f"'input' holds {len(value)} items; at most {MAX_EMBEDDING_INPUTS} a request", "input",
                          "invalid_value")
    raise bad_request("'input' must be a non-empty string, a list of non-empty strings, a list of token ids, or a "
                      "list of non-empty lists of token ids", "input", "invalid_type")


def parse_embeddings_request(raw: Any, headers: Headers | dict[str, str] | None = None) -> ProxyRequest:
    """POST /v1/embeddings: the model, the input, and the fields OpenAI checks; `priority` orders the
    deployment's admission queue. Anything else passes through (e.g. vLLM's `truncate_prompt_tokens`)."""
    if not isinstance(raw, dict):
        raise bad_request("the body must be a JSON object")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a string", "model")
    prompt_text, prompt_chars = _check_embedding_input(raw.get("input"))
    encoding = raw.get("encoding_format")
    if encoding is not None and encoding not in _ENCODING_FORMATS:
        raise bad_request(f"'encoding_format' must be one of {list(_ENCODING_FORMATS)}", "encoding_format",
                          "invalid_value")
    dimensions = raw.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        raise bad_request("'dimensions' must be a positive integer", "dimensions", "invalid_value")
    if raw.get("user") is not None and not isinstance(raw["user"], str):
        raise bad_request("'user' has the wrong type", "user", "invalid_type")
    body = {k: v for k, v in raw.items() if k not in GATEWAY_FIELDS}
    return ProxyRequest(kind="embedding", model=model, body=body, stream=False, include_usage=False,
                        session_id=None, priority=asked_priority(raw), pin_ttl_s=None,
                        cost_preference=None, prompt_text=prompt_text, prompt_chars=prompt_chars,
                        cache=CacheControl.of(raw.get(CACHE_FIELD), (headers or {}).get(CACHE_HEADER)))
