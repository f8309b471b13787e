"""`litellm_params.quantization`: an engine in the gateway's process serves W8A8 projections and says so;
a quantized checkpoint needs no key; elsewhere the key is a configuration error, not a silent no-op."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.quantize_checkpoint import quantize_checkpoint
from engine.tiny_model import make_tiny_model
from tests.gateway.harness import gateway_config, running_gateway


def test_local_engines_serve_quantized_projections(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    stored = quantize_checkpoint(model_dir, tmp_path / "tiny-fp8", "fp8")
    models = [{"model_name": name, "litellm_params": {"model": f"pitstop-local/{name}", "model_dir": str(folder),
                                                      "num_blocks": 32, "max_model_len": 256, **params}}
              for name, folder, params in (("full", model_dir, {}), ("int8", model_dir, {"quantization": "int8"}),
                                           ("fp8", stored, {}))]
    with running_gateway(gateway_config(tmp_path, models)) as gateway, gateway.openai() as client:
        answers = {name: client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Where is the fox?"}], max_tokens=4, temperature=0)
            for name in ("full", "int8", "fp8")}
        assert gateway.state is not None
        stats = {d.model_name: d.backend.engine.engine.stats() for d in gateway.state.pool.deployments}  # type: ignore[attr-defined]
    assert all(answer.usage.completion_tokens == 4 for answer in answers.values())
    assert {name: s.quantization for name, s in stats.items()} == {"full": None, "int8": "int8", "fp8": "fp8"}


def test_quantization_is_for_engines_in_the_gateway_process(tmp_path: Path) -> None:
    from gateway.config import parse_settings

    remote = {"model_name": "remote", "litellm_params": {"model": "hosted_vllm/llama", "api_base": "http://x/v1",
                                                         "quantization": "fp8"}}
    with pytest.raises(ValueError, match="quantization is for engines in this process"):
        parse_settings(gateway_config(tmp_path, [remote]), base_dir=tmp_path)
    local = {"model_name": "local", "litellm_params": {"model": "pitstop-local/x", "model_dir": str(tmp_path),
                                                       "quantization": "nf4"}}  # int4 is served: W4A16
    with pytest.raises(ValueError, match="quantization"):
        parse_settings(gateway_config(tmp_path, [local]), base_dir=tmp_path)
