"""`litellm_params.tensor_parallel_size`: an engine in the gateway's process sharded over worker
processes, which stop with the gateway; elsewhere the key is a configuration error."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.tiny_model import make_tiny_model
from tests.gateway.harness import gateway_config, running_gateway


def test_a_local_engine_sharded_over_two_ranks(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    models = [{"model_name": "tiny", "litellm_params": {"model": "pitstop-local/tiny", "model_dir": str(model_dir),
                                                        "num_blocks": 32, "max_model_len": 256,
                                                        "tensor_parallel_size": 2}}]
    with running_gateway(gateway_config(tmp_path, models)) as gateway, gateway.openai() as client:
        answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=4, temperature=0)
        assert gateway.state is not None
        (deployment,) = gateway.state.pool.deployments
        engine = deployment.backend.engine  # type: ignore[attr-defined]
        workers = engine.engine.runner.workers
        assert engine.engine.stats().tensor_parallel_size == 2 and workers.processes[0].is_alive()
    assert answer.usage.completion_tokens == 4
    assert not any(process.is_alive() for process in workers.processes)


def test_tensor_parallel_size_is_for_engines_in_the_gateway_process(tmp_path: Path) -> None:
    from gateway.config import parse_settings

    remote = {"model_name": "remote", "litellm_params": {"model": "hosted_vllm/llama", "api_base": "http://x/v1",
                                                         "tensor_parallel_size": 4}}
    with pytest.raises(ValueError, match="tensor_parallel_size is for engines in this process"):
        parse_settings(gateway_config(tmp_path, [remote]), base_dir=tmp_path)
