"""The inputs of vLLM's /classify and /score bodies, checked without torch: the engine's endpoints
(engine/classify_api.py, engine/cross_encoder_api.py) and the gateway's (gateway/vllm_endpoints.py) read them
here, so a body the engine would refuse is refused by the gateway before it takes a rate slot."""

from __future__ import annotations

from engine.openai_embeddings import MAX_INPUTS
from engine.rerank_body import MAX_DOCUMENTS
from engine.server.errors import bad_request


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def classify_inputs(raw: object) -> list[str | list[int]]:
    """/classify's `input`: a string, token ids, or a non-empty list of either."""
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(_is_token(t) for t in raw)):
        inputs: list = [raw]
    elif isinstance(raw, list) and raw and all(
            isinstance(x, str) or (isinstance(x, list) and all(_is_token(t) for t in x)) for x in raw):
        inputs = raw
    else:
        raise bad_request("'input' must be a string, a list of token ids, or a non-empty list of either", "input",
                          "invalid_type")
    if len(inputs) > MAX_INPUTS:
        raise bad_request(f"'input' may hold at most {MAX_INPUTS} inputs (got {len(inputs)})", "input",
                          "invalid_value")
    if any(len(x) == 0 for x in inputs):
        raise bad_request("an input must not be empty", "input", "invalid_value")
    return inputs


def _texts(body: dict, name: str) -> list[str]:
    value = body.get(name)
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise bad_request(f"'{name}' must be a non-empty string or a non-empty list of them", name, "invalid_type")
    if len(texts) > MAX_DOCUMENTS:  # the rerank's limit on documents, so a score takes no more pairs
        raise bad_request(f"'{name}' holds {len(texts)} texts; at most {MAX_DOCUMENTS} a request", name,
                          "invalid_value")
    return texts


def score_pairs(body: dict) -> list[tuple[str, str]]:
    """/score's `text_1` and `text_2` paired one to one (1:1, N:N) or the one `text_1` with each `text_2` (1:N)."""
    firsts, seconds = _texts(body, "text_1"), _texts(body, "text_2")
    if len(firsts) > 1 and len(firsts) != len(seconds):
        raise bad_request(f"'text_1' holds {len(firsts)} texts and 'text_2' {len(seconds)}: pair them 1:1, 1:N or "
                          "N:N", "text_1", "invalid_value")
    return list(zip(firsts * len(seconds) if len(firsts) == 1 else firsts, seconds, strict=True))
