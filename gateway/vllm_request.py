"""The bodies of vLLM's /classify and /score as the gateway takes them (gateway/vllm_endpoints.py): checked
as the engine checks them (engine/vllm_bodies.py), so a bad request is a 400 naming its field before it takes a
rate slot; then written as the request its deployment is sent, billed as embeddings are (input tokens, no
answer). Pitstop's own fields (`priority`, ...) are read and not sent on; vLLM's others (`truncate_prompt_tokens`,
`user`, ...) are sent as they came."""

from __future__ import annotations

from typing import Any

from engine.server.errors import bad_request
from engine.vllm_bodies import classify_inputs, score_pairs
from gateway.request_body import GATEWAY_FIELDS, ProxyRequest, asked_priority

CLASSIFY_PATHS = ("/classify", "/v1/classify")
SCORE_PATHS = ("/score", "/v1/score")
CHARS_PER_TOKEN_ID = 4  # a token-id input's share of the worst-case hold, as text of that many characters
_GATEWAY_ONLY = frozenset({"service_tier", *GATEWAY_FIELDS})


def _checked(raw: Any) -> tuple[str, dict]:
    if not isinstance(raw, dict):
        raise bad_request("the request body must be a JSON object")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string", "model", "invalid_type")
    truncate = raw.get("truncate_prompt_tokens")
    if truncate is not None and (not isinstance(truncate, int) or isinstance(truncate, bool)):
        raise bad_request("'truncate_prompt_tokens' must be an integer", "truncate_prompt_tokens", "invalid_type")
    return model, {k: v for k, v in raw.items() if k not in _GATEWAY_ONLY}


def _as_request(model: str, body: dict, raw: dict, texts: list[str], chars: int) -> ProxyRequest:
    return ProxyRequest(kind="embedding", model=model, body=body, stream=False, include_usage=False,
                        session_id=None, priority=asked_priority(raw), pin_ttl_s=None, cost_preference=None,
                        prompt_text=texts[0] if texts else "", prompt_chars=chars)


def classify_request(raw: Any) -> tuple[ProxyRequest, int]:
    """The call's request, and how many results its answer holds (one an input)."""
    model, body = _checked(raw)
    inputs = classify_inputs(raw.get("input"))
    texts = [x for x in inputs if isinstance(x, str)]
    chars = sum(map(len, texts)) + CHARS_PER_TOKEN_ID * sum(len(x) for x in inputs if isinstance(x, list))
    return _as_request(model, body, raw, texts, chars), len(inputs)


def score_request(raw: Any) -> tuple[ProxyRequest, int]:
    """The call's request, and how many scores its answer holds (one a pair); a scorer reads each pair whole,
    so the hold counts the one `text_1` once for each `text_2` it meets."""
    model, body = _checked(raw)
    pairs = score_pairs(raw)
    chars = sum(len(first) + len(second) for first, second in pairs)
    return _as_request(model, body, raw, [pairs[0][0]], chars), len(pairs)
