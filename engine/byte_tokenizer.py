"""ByteTokenizer: UTF-8 bytes as token ids, for engines without a real tokenizer (a simulated
runner served over HTTP). Same small interface as `engine.tokenizer.Tokenizer`: encode, decode,
eos_token_ids, vocab_size, apply_chat_template."""

from __future__ import annotations

import json
from typing import Any


class ByteTokenizer:
    """Token id = one byte of the UTF-8 text. No special tokens, so no EOS: the output ends at
    max_tokens or on a stop string."""

    vocab_size = 256
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        # Ids past the byte range can only come from a runner with a larger vocabulary: dropped.
        return bytes(t for t in token_ids if 0 <= t < 256).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                            add_generation_prompt: bool = True, **extra: Any) -> str:
        """A plain `<|role|>` transcript; tools go first as a JSON system block."""
        parts = []
        if tools:
            parts.append(f"<|tools|>\n{json.dumps(tools, sort_keys=True)}\n")
        for message in messages:
            content = message.get("content")
            if not isinstance(content, str):
                content = json.dumps(content, sort_keys=True) if content is not None else ""
            parts.append(f"<|{message.get('role', 'user')}|>\n{content}\n")
        if add_generation_prompt:
            parts.append("<|assistant|>\n")
        return "".join(parts)
