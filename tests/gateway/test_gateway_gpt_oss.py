"""gpt-oss in the gateway's process: an MXFP4 checkpoint served with its experts packed (the default) and, with
`dequantize_mxfp4: true` in `litellm_params`, dequantized at load, as `pitstop engine serve --dequantize-mxfp4`;
the same greedy answers either way over HTTP with the openai SDK. `engine profile --dequantize-mxfp4` times the
same runner."""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx
import pytest

from engine.cli import add_engine_commands
from engine.profile import run_profile
from tests.engine.gpt_oss_checkpoints import save_serving_gpt_oss
from tests.gateway.harness import gateway_config, running_gateway


def local(name: str, model_dir: Path, **params: object) -> dict:
    return {"model_name": name, "model_info": {}, "litellm_params": {
        "model": f"pitstop-local/{name}", "model_dir": str(model_dir), "num_blocks": 64, "max_model_len": 256,
        **params}}


def test_an_in_process_gpt_oss_keeps_mxfp4_packed_unless_told(tmp_path: Path) -> None:
    """Also its KV groups (sliding layers' KV apart), unless `disable_hybrid_kv_cache_manager`: the same answers."""
    model_dir = save_serving_gpt_oss(tmp_path / "gpt-oss", mxfp4=True)
    config = gateway_config(tmp_path, [local("packed", model_dir), local("bf16", model_dir, dequantize_mxfp4=True),
                                       local("whole", model_dir, disable_hybrid_kv_cache_manager=True)])
    with running_gateway(config) as gateway, gateway.openai() as client:
        engines = {d.model_name: d.backend.engine.engine for d in gateway.state.pool.deployments}
        answers = {name: client.chat.completions.create(
            model=name, max_tokens=8, temperature=0, extra_body={"ignore_eos": True, "pin_ttl_s": 60},
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            extra_headers={"x-session-id": f"agent-{name}"}) for name in engines}
        pins = {name: httpx.get(f"{gateway.url}/v1/sessions/agent-{name}", timeout=10).json()["engine"]
                for name in ("packed", "whole")}
        metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert engines["packed"].runner.mxfp4_experts and not engines["bf16"].runner.mxfp4_experts
    groups = {name: engine.block_manager.stats().kv_groups for name, engine in engines.items()}
    assert groups["packed"] > 1 and groups["whole"] == 1
    packed, bf16 = answers["packed"], answers["bf16"]
    assert packed.usage is not None and packed.usage.completion_tokens == 8
    assert packed.choices[0].message == bf16.choices[0].message  # packed experts compute what dequantized ones do
    assert answers["whole"].choices[0].message == packed.choices[0].message
    # The same turn pinned: the prefix it keeps cached is the same whatever the layout, its blocks are not
    # (a block of each group per 16 tokens), and the pinned-memory gauge counts tokens as capacity does.
    assert pins["packed"]["pinned_tokens"] == pins["whole"]["pinned_tokens"] == pins["whole"]["pinned_blocks"] * 16 > 0
    assert pins["packed"]["pinned_blocks"] > pins["whole"]["pinned_blocks"]
    gauge = {line.split('"')[1].split("#")[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
             if line.startswith("pitstop_kv_pinned_tokens{")}
    assert gauge.get("packed") == pins["packed"]["pinned_blocks"] * 16 // groups["packed"]


class _Built(Exception):
    pass


def test_engine_profile_times_the_runner_the_flag_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_engine_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["profile", "--model", "m", "--out", "p.json", "--dequantize-mxfp4"])
    assert args.dequantize_mxfp4
    built: list[dict] = []

    def runner(*_args: object, **kwargs: object) -> None:
        built.append(kwargs)
        raise _Built

    monkeypatch.setattr("engine.torch_runner.TorchModelRunner", runner)
    model_dir = save_serving_gpt_oss(tmp_path / "gpt-oss", mxfp4=True)
    for flag in (True, False):
        with pytest.raises(_Built):
            run_profile(model_dir, tmp_path / "p.json", device="cpu", dequantize_mxfp4=flag)
    assert [kwargs["dequantize_mxfp4"] for kwargs in built] == [True, False]
