"""A request's prompts as token ids: a completion's prompts (one, or a batch) encoded, a chat rendered
through the model's template and encoded. Large work (past 32 KB of text, or a chat of more than 64
messages) runs on a worker thread, so one huge prompt does not stall every stream on the event loop."""

from __future__ import annotations

import asyncio

from engine.async_engine import AsyncEngine
from engine.chat_images import template_messages
from engine.openai_images import widened_chat_text
from engine.server.errors import bad_request
from engine.server.protocol import GenerateRequest

_INLINE_TOKENIZE_CHARS = 32 << 10
_INLINE_MESSAGES = 64


async def tokenize(engine: AsyncEngine, parsed: GenerateRequest) -> list[list[int]]:
    """Each prompt's token ids: a chat is one prompt, a completion one per prompt of its batch."""
    if parsed.messages is None:
        return await _encode_prompts(engine, parsed.prompts or [])
    if engine.tokenizer is None:
        raise bad_request("this engine has no tokenizer to render chat messages", "messages")
    if _small_chat(parsed):
        text = _render_chat(engine, parsed)
        return [engine.encode(text) if len(text) <= _INLINE_TOKENIZE_CHARS else
                await asyncio.to_thread(engine.encode, text)]
    # Rendering a chat template is Python (jinja): 100,000 messages took 1.7 s of the event loop.
    return [await asyncio.to_thread(lambda: engine.encode(_render_chat(engine, parsed)))]


async def _encode_prompts(engine: AsyncEngine, prompts: list[str | list[int]]) -> list[list[int]]:
    def encode() -> list[list[int]]:
        return [engine.encode(p) if isinstance(p, str) else p for p in prompts]

    if sum(len(p) for p in prompts if isinstance(p, str)) <= _INLINE_TOKENIZE_CHARS:
        return encode()
    return await asyncio.to_thread(encode)


def _small_chat(parsed: GenerateRequest) -> bool:
    """Cheap to render and tokenize on the event loop; counted without walking a long list."""
    assert parsed.messages is not None
    if len(parsed.messages) > _INLINE_MESSAGES or len(parsed.tools or ()) > _INLINE_MESSAGES:
        return False
    return sum(_text_chars(message.get("content")) for message in parsed.messages) <= _INLINE_TOKENIZE_CHARS


def _text_chars(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # text parts
        return sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
    return 0


def _render_chat(engine: AsyncEngine, parsed: GenerateRequest) -> str:
    assert engine.tokenizer is not None and parsed.messages is not None
    options = parsed.template
    # OpenAI's reasoning_effort is a template variable too (gpt-oss's template writes it into the system message).
    effort = {"reasoning_effort": parsed.reasoning_effort} if parsed.reasoning_effort is not None else {}
    try:
        text = engine.tokenizer.apply_chat_template(template_messages(parsed.messages), tools=parsed.tools,
                                                    add_generation_prompt=options.add_generation_prompt,
                                                    **{**effort, **options.kwargs})
    except Exception as exc:  # template errors (raise_exception, missing template) come from the input
        raise bad_request(f"could not render the chat template: {exc}", "messages") from None
    text = widened_chat_text(engine, parsed.messages, text)
    return _continued(text, parsed.messages[-1]["content"]) if options.continue_final_message else text


def _continued(text: str, final: str) -> str:
    """The rendering cut right after the last message's text, so the model continues it (as
    transformers' continue_final_message: whatever the template closes the message with goes)."""
    at = text.rfind(final.strip())
    if at < 0:
        raise bad_request("the chat template does not render the last message's text as it is, so it cannot be "
                          "continued", "continue_final_message")
    return text[:at + len(final.strip())]
