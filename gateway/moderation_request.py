"""POST /v1/moderations' body, as OpenAI takes it: `input`, a string, a list of strings, or a list of
multimodal parts (`{"type": "text", "text"}`, `{"type": "image_url", "image_url": {"url"}}`: one content to
classify, one result), and `model` (OpenAI's default: `omni-moderation-latest`). Checked here, so a bad
request is a 400 naming its field before it takes a rate slot; then written as the request the moderation
model is sent, billed as embeddings are (its input tokens, no answer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.server.errors import bad_request
from gateway.request_body import GATEWAY_FIELDS, ProxyRequest, asked_priority

# The endpoint's paths (OpenAI's, and LiteLLM's proxy's without /v1); a batch's lines may name either.
PATHS = ("/v1/moderations", "/moderations")
DEFAULT_MODEL = "omni-moderation-latest"  # OpenAI's, where a request names none
MAX_INPUTS = 2048  # as an embeddings request's: one call's worth
_OWN_FIELDS = frozenset({"model", "input", "service_tier", *GATEWAY_FIELDS})


@dataclass(frozen=True)
class ModerationRequest:
    model: str
    input: str | list  # as sent on
    texts: list[str]  # every text it holds (a part's too): what its tokens are estimated from
    results: int  # how many results the answer holds: one an input string, one for a list of parts
    priority: float | None
    extra: dict[str, Any]  # other fields, sent on as they came

    def as_request(self) -> ProxyRequest:
        """The call's body, in a request billed as embeddings are (gateway/budget_holds.py, outcomes.py)."""
        body = {**self.extra, "model": self.model, "input": self.input}
        return ProxyRequest(kind="embedding", model=self.model, body=body, stream=False, include_usage=False,
                            session_id=None, priority=self.priority, pin_ttl_s=None, cost_preference=None,
                            prompt_text="", prompt_chars=sum(map(len, self.texts)))


def _part(value: Any, i: int) -> str | None:
    """A multimodal part's text (None for an image), or a 400 naming it."""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text" and isinstance(value.get("text"), str) and value["text"]:
        return value["text"]
    image = value.get("image_url") if kind == "image_url" else None
    if isinstance(image, dict) and isinstance(image.get("url"), str) and image["url"]:
        return None
    raise bad_request(f"'input[{i}]' must be a non-empty string, or a part {{\"type\": \"text\", \"text\"}} or "
                      "{\"type\": \"image_url\", \"image_url\": {\"url\"}} (one kind throughout the list)",
                      f"input[{i}]", "invalid_type")


def parse_moderation_request(raw: Any) -> ModerationRequest:
    if not isinstance(raw, dict):
        raise bad_request("the body must be a JSON object")
    model = raw.get("model")
    model = DEFAULT_MODEL if model is None else model
    if not isinstance(model, str) or not model:
        raise bad_request("'model' must be a non-empty string (omitted: omni-moderation-latest)", "model",
                          "invalid_type")
    value = raw.get("input")
    if isinstance(value, str):
        if not value:
            raise bad_request("'input' must not be empty", "input", "invalid_value")
        texts, results = [value], 1
    elif isinstance(value, list) and value:
        if len(value) > MAX_INPUTS:
            raise bad_request(f"'input' holds {len(value)} items; at most {MAX_INPUTS} a request", "input",
                              "invalid_value")
        if isinstance(value[0], str):  # strings, each classified apart
            for i, item in enumerate(value):
                if not isinstance(item, str) or not item:
                    raise bad_request(f"'input[{i}]' must be a non-empty string, as the list's first item is",
                                      f"input[{i}]", "invalid_type")
            texts, results = list(value), len(value)
        else:  # one content of parts, classified whole
            texts = [text for i, part in enumerate(value) if (text := _part(part, i)) is not None]
            results = 1
    else:
        raise bad_request("'input' is required: a string, a list of strings, or a list of text and image_url parts",
                          "input", "invalid_type")
    return ModerationRequest(model, value, texts, results, asked_priority(raw),
                             {k: v for k, v in raw.items() if k not in _OWN_FIELDS})
