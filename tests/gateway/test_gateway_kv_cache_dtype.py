"""`litellm_params.kv_cache_dtype`: an engine in the gateway's process stores its KV as fp8 and reports
it; elsewhere the key is a configuration error, not a silent no-op."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from engine.tiny_model import make_tiny_model
from tests.gateway.harness import gateway_config, running_gateway


def test_a_local_engine_stores_its_kv_as_fp8(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    models = [{"model_name": name, "litellm_params": {"model": f"pitstop-local/{name}", "model_dir": str(model_dir),
                                                      "num_blocks": 32, "max_model_len": 256, **params}}
              for name, params in (("full", {}), ("fp8", {"kv_cache_dtype": "fp8"}))]
    with running_gateway(gateway_config(tmp_path, models)) as gateway, gateway.openai() as client:
        answers = {name: client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Where is the fox?"}], max_tokens=4, temperature=0)
            for name in ("full", "fp8")}
        assert gateway.state is not None
        runners = {d.model_name: d.backend.engine.engine.runner for d in gateway.state.pool.deployments}  # type: ignore[attr-defined]
        metrics = httpx.get(f"{gateway.url}/metrics").text
    assert all(answer.usage.completion_tokens == 4 for answer in answers.values())
    assert runners["fp8"].kv_cache.element_size() == 1 and runners["full"].kv_cache.element_size() == 4
    assert 'pitstop_engine_kv_capacity_tokens{deployment="fp8#0",kv_cache_dtype="fp8"} 512.0' in metrics
    assert 'pitstop_engine_kv_capacity_tokens{deployment="full#0",kv_cache_dtype="auto"} 512.0' in metrics


def test_kv_cache_dtype_is_for_engines_in_the_gateway_process(tmp_path: Path) -> None:
    from gateway.config import parse_settings

    remote = {"model_name": "remote", "litellm_params": {"model": "hosted_vllm/llama", "api_base": "http://x/v1",
                                                         "kv_cache_dtype": "fp8"}}
    with pytest.raises(ValueError, match="kv_cache_dtype is for engines in this process"):
        parse_settings(gateway_config(tmp_path, [remote]), base_dir=tmp_path)
    remote["litellm_params"] = {"model": "hosted_vllm/llama", "api_base": "http://x/v1", "calculate_kv_scales": True}
    with pytest.raises(ValueError, match="calculate_kv_scales is for engines in this process"):
        parse_settings(gateway_config(tmp_path, [remote]), base_dir=tmp_path)
    local = {"model_name": "local", "litellm_params": {"model": "pitstop-local/x", "model_dir": str(tmp_path),
                                                       "kv_cache_dtype": "int8"}}
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        parse_settings(gateway_config(tmp_path, [local]), base_dir=tmp_path)
