"""Model names: one per model across data sources and deployments."""

from __future__ import annotations

# One name per model across sources, so a model's answers from every data set share one scale.
MODEL_ALIASES = {
    "gpt4_1106_preview": "gpt-4-1106-preview",
    "mixtral-8x7b-instruct-v0.1": "mixtral-8x7b-instruct",
    "mixtral-8x7b-chat": "mixtral-8x7b-instruct",
    "llama-2-70b-chat-hf": "llama-2-70b-chat",
    "mistral-7b-chat": "mistral-7b-instruct",
    "mistral-7b-instruct-v0.2": "mistral-7b-instruct",
}


def canonical_model(name: str) -> str:
    """Lower case, no organisation prefix, known aliases merged ("mistralai/Mixtral-8x7B-Instruct-v0.1"
    and "mistralai/mixtral-8x7b-chat" are one model)."""
    short = name.rsplit("/", 1)[-1].lower()
    return MODEL_ALIASES.get(short, short)
