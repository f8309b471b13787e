"""A local engine with `litellm_params.host_kv_gib`: a conversation's prefix the GPU evicted is loaded
back from host memory, and the gateway reports it as cached prompt tokens."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from engine.tiny_model import make_tiny_model
from gateway.session_pins import kv_view
from tests.gateway.harness import gateway_config, running_gateway

SYSTEM = "You are a careful assistant who answers questions about the quick brown fox and the lazy dog. " * 3
CROWD = "Entirely different words fill every block of the cache now, one after another. " * 12


def local(name: str, model_dir: Path, **params: object) -> dict:
    return {"model_name": name, "litellm_params": {"model": f"pitstop-local/{name}", "model_dir": str(model_dir),
                                                   "num_blocks": 28, "max_model_len": 448, **params}}


def test_an_evicted_conversation_prefix_comes_back_from_host_memory(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    models = [local("gpu-only", model_dir), local("tiered", model_dir, host_kv_gib=0.001)]
    cached = {}
    with running_gateway(gateway_config(tmp_path, models)) as gateway, gateway.openai() as client:
        for model in ("gpu-only", "tiered"):
            def ask(system: str, question: str, model: str = model) -> int:
                reply = client.chat.completions.create(
                    model=model, messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
                    max_tokens=4, temperature=0)
                return reply.usage.prompt_tokens_details.cached_tokens
            ask(SYSTEM, "Where is the fox?")
            ask(CROWD, "Go on.")  # fills the GPU cache: the first conversation's blocks are evicted
            cached[model] = ask(SYSTEM, "Where is the dog?")
        assert gateway.state is not None
        engines = {d.model_name: d.backend.engine.engine for d in gateway.state.pool.deployments}  # type: ignore[attr-defined]
        metrics = httpx.get(f"{gateway.url}/metrics").text
        # What the TTL policy reads: a lost context costs this deployment copies, not a re-prefill.
        views = {d.model_name: kv_view(d.backend) for d in gateway.state.pool.deployments}
    # The crowd evicts all but the conversation's first block (the tail of a freed prompt goes first).
    assert engines["gpu-only"].config.num_host_blocks == 0 and cached["gpu-only"] <= 16
    tiered = engines["tiered"].stats().blocks
    assert engines["tiered"].config.num_host_blocks > 0 and tiered.host_hit_tokens >= 64
    assert cached["tiered"] == cached["gpu-only"] + tiered.host_hit_tokens
    assert views["gpu-only"].host_capacity_tokens == 0  # type: ignore[union-attr]
    assert views["tiered"].host_capacity_tokens == engines["tiered"].config.num_host_blocks * 16  # type: ignore[union-attr]
    hits = [line for line in metrics.splitlines() if line.startswith("pitstop_engine_host_kv{")
            and 'counter="hit_tokens"' in line]
    assert len(hits) == 1 and float(hits[0].split()[-1]) == tiered.host_hit_tokens  # only the tiered deployment


def test_host_kv_gib_is_for_engines_in_the_gateway_process(tmp_path: Path) -> None:
    from gateway.config import parse_settings

    remote = {"model_name": "remote", "litellm_params": {"model": "hosted_vllm/llama", "api_base": "http://x/v1",
                                                         "host_kv_gib": 4}}
    with pytest.raises(ValueError, match="host_kv_gib is for engines in this process"):
        parse_settings(gateway_config(tmp_path, [remote]), base_dir=tmp_path)
