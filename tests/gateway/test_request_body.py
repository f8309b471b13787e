"""What the parser hands the ranker: the last user turn to read, and the whole prompt's size to count
as prefill work (rankers/work.py)."""

from __future__ import annotations

from starlette.datastructures import Headers

from gateway.image_tokens import DEFAULT_IMAGE_TOKENS
from gateway.request_body import parse_proxy_request


def test_the_prompt_size_counts_every_message_and_token_prompts():
    chat = parse_proxy_request({"model": "m", "messages": [
        {"role": "system", "content": "abc"},
        {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "again"}]}, "chat", Headers({}))
    assert chat.prompt_text == "again" and chat.prompt_chars == 3 + 5 + 5 + 4 * DEFAULT_IMAGE_TOKENS  # an image's worth
    tokens = parse_proxy_request({"model": "m", "prompt": [1, 2, 3]}, "completion", Headers({}))
    assert tokens.prompt_text == "" and tokens.prompt_chars == 12  # 4 characters a token
    text = parse_proxy_request({"model": "m", "prompt": ["twelve chars"]}, "completion", Headers({}))
    assert text.prompt_text == "twelve chars" and text.prompt_chars == 12
    batch = parse_proxy_request({"model": "m", "prompt": ["first", "second"]}, "completion", Headers({}))
    assert batch.prompt_text == "first" and batch.prompt_chars == 11  # routed by the first, counted whole
    ids = parse_proxy_request({"model": "m", "prompt": [[1, 2], [3]]}, "completion", Headers({}))
    assert ids.prompt_text == "" and ids.prompt_chars == 12
