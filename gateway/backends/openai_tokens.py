"""OpenAI's models counted as OpenAI counts them: litellm's `token_counter`, with the model's own tiktoken
encoding (o200k_base for gpt-4o and later) and OpenAI's framing of messages and tools. The encodings ship
inside the litellm package, so nothing is fetched. For other providers' models litellm would guess with
one of them, or fetch a tokenizer from the internet: those are not counted here."""

from __future__ import annotations

import asyncio
import functools

OPENAI_PROVIDERS = frozenset({"openai", "azure"})


@functools.cache
def listed_window(model: str) -> int | None:
    """The most prompt tokens `model` takes (`max_input_tokens`), as litellm's price map lists it; None for a
    model it does not list."""
    from gateway.backends.litellm_backend import _litellm

    try:
        window = _litellm().get_model_info(model).get("max_input_tokens")
    except Exception:
        return None
    return window if isinstance(window, int) and window > 0 else None


@functools.cache
def counts_as_openai(model: str) -> bool:
    """Whether `model` (a litellm model string, `openai/gpt-4o`) is one of OpenAI's, as litellm's price map
    knows it."""
    from gateway.backends.litellm_backend import _litellm

    try:
        return _litellm().get_model_info(model).get("litellm_provider") in OPENAI_PROVIDERS
    except Exception:  # a model its price map does not know: no tokenizer known either
        return False


async def openai_prompt_tokens(model: str, body: dict) -> int:
    """The prompt tokens of the chat `body` on OpenAI's `model` (tools left out where `tool_choice` is "none")."""
    from gateway.backends.litellm_backend import _litellm

    tools = body.get("tools") if body.get("tool_choice") != "none" else None
    return await asyncio.to_thread(_litellm().token_counter, model=model, messages=body.get("messages"),
                                   tools=tools or None)
