"""A local engine with `litellm_params.disk_kv_path` and `disk_kv_gib`: its disk KV tier outlives the gateway,
so a conversation served before a restart is answered from disk after it, reported as cached prompt tokens."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from engine.tiny_model import make_tiny_model
from gateway.session_pins import kv_view
from tests.gateway.harness import gateway_config, running_gateway

SYSTEM = "You are a careful assistant who answers questions about the quick brown fox and the lazy dog. " * 3


def test_a_conversation_from_before_a_gateway_restart_comes_back_from_disk(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    params = {"model": "pitstop-local/tiny", "model_dir": str(model_dir), "num_blocks": 28, "max_model_len": 448,
              "disk_kv_path": str(tmp_path / "kv"), "disk_kv_gib": 0.001}
    config = gateway_config(tmp_path, [{"model_name": "tiny", "litellm_params": params}])
    answers, cached = [], []
    for _ in range(2):  # the first gateway's shutdown closes its engine: what it cached is written to disk
        with running_gateway(config) as gateway, gateway.openai() as client:
            reply = client.chat.completions.create(
                model="tiny", messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Fox?"}],
                max_tokens=4, temperature=0)
            answers.append(reply.choices[0].message.content)
            cached.append(reply.usage.prompt_tokens_details.cached_tokens)
            assert gateway.state is not None
            engine = gateway.state.pool.deployments[0].backend.engine.engine  # type: ignore[attr-defined]
            disk = engine.stats().blocks
            view = kv_view(gateway.state.pool.deployments[0].backend)  # what the TTL policy prices
            metrics = httpx.get(gateway.url + "/metrics").text
    assert engine.config.num_disk_blocks > 0 and (tmp_path / "kv" / "kv-rank0.index").exists()
    assert cached[0] == 0 and cached[1] >= 48 and disk.disk_hit_tokens == cached[1]
    assert answers[1] == answers[0]
    assert view is not None and view.disk_capacity_tokens == engine.config.num_disk_blocks * 16
    gauge = {line.split('counter="')[1].split('"')[0]: float(line.split()[-1]) for line in metrics.splitlines()
             if line.startswith("pitstop_engine_disk_kv{")}
    assert gauge["hit_tokens"] == cached[1] and gauge["restored_blocks"] > 0 and gauge["total_blocks"] > 0


def test_disk_kv_needs_a_path_and_a_size_and_an_engine_in_the_gateway(tmp_path: Path) -> None:
    from gateway.config import parse_settings

    local = {"model": "pitstop-local/tiny", "model_dir": str(tmp_path), "disk_kv_path": "kv"}
    with pytest.raises(ValueError, match="needs both disk_kv_path and disk_kv_gib"):
        parse_settings(gateway_config(tmp_path, [{"model_name": "a", "litellm_params": local}]), base_dir=tmp_path)
    remote = {"model": "hosted_vllm/llama", "api_base": "http://x/v1", "disk_kv_path": "kv", "disk_kv_gib": 1}
    with pytest.raises(ValueError, match="disk_kv_path is for engines in this process"):
        parse_settings(gateway_config(tmp_path, [{"model_name": "r", "litellm_params": remote}]), base_dir=tmp_path)
