"""What the response cache's tests share: a gateway config with the cache on, serving the fake
upstream as a chat model `up` and an embeddings model `embed`, a chat request's body, and prompts no
other test has sent (so a shared Redis holds no answer to them)."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.gateway.harness import gateway_config, model_entry
from tests.gateway.upstream import UpstreamProcess


def cached_config(tmp_path: Path, upstream: UpstreamProcess, suffix: str = "", **cache: object) -> dict:
    """Models `up` (chat) and `embed` (embeddings), with `suffix` after their names."""
    embed = model_entry(f"embed{suffix}", upstream.api_base, provider="hosted_vllm", transport="auto")
    embed["model_info"]["mode"] = "embedding"
    return gateway_config(tmp_path, [model_entry(f"up{suffix}", upstream.api_base), embed], cache=cache)


def chat(text: str, **fields: object) -> dict:
    return {"model": "up", "messages": [{"role": "user", "content": text}], **fields}


def fresh(words: str = "") -> str:
    """A prompt no other test (or earlier run, on a shared Redis) has sent."""
    return f"{uuid.uuid4().hex} {words}".strip()
