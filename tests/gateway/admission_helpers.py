"""What the admission queue's tests and the ranking tests beside them share: four prompts the ranker
ranks apart (an essay, one word, steps, a sum), and a model entry for one more deployment of model `m`
with `model_info` fields of its own (`max_concurrency`, `max_queue`)."""

from __future__ import annotations

from tests.gateway.harness import model_entry

PROMPTS = [
    "Write a detailed, 2000-word essay on the history of the Roman empire, with sections and sources.",
    "Answer with one word: is water wet?",
    "Explain step by step how a bill becomes law, with examples.",
    "What is 2 + 2?",
]


def deployment_entry(upstream_url: str, provider: str, **info: object) -> dict:
    """One deployment of model `m` on `upstream_url` over the direct backend, with `info` in its model_info."""
    entry = model_entry("m", upstream_url, provider=provider, transport="direct")
    entry["model_info"].update(info)
    return entry
