"""The gateway's estimate of a chat's prompt tokens, for the APIs that ask before sending: Anthropic's
`POST /v1/messages/count_tokens` and OpenAI's `POST /v1/responses/input_tokens`. Most upstreams offer no
tokenizer to ask, so it counts as routing does: about four characters a token, over the text of the
messages, their tool calls' arguments and the tools' definitions."""

from __future__ import annotations

import json

from gateway.routing import estimate_tokens


def chat_input_tokens(chat: dict) -> int:
    texts = [json.dumps(chat.get("tools", ""))]
    for message in chat["messages"]:
        content = message.get("content")
        texts += [content] if isinstance(content, str) else [p.get("text", "") for p in content or ()]
        texts += [call["function"]["arguments"] for call in message.get("tool_calls", ())]
    return estimate_tokens("".join(texts))
