"""`litellm_params.lora_modules`: an in-process engine's LoRA adapters are models of the gateway, served
by that one engine; a route group may choose among them and the base model."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from engine.tiny_lora import make_tiny_lora
from engine.tiny_model import make_tiny_model
from tests.gateway.harness import gateway_config, running_gateway


def test_lora_modules_are_models_served_by_the_base_engine(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    make_tiny_lora(model_dir, tmp_path / "adapters" / "sql", rank=4, seed=1, std=0.2)
    base = {"model_name": "base", "litellm_params": {"model": "pitstop-local/base", "model_dir": str(model_dir),
                                                     "num_blocks": 64, "max_model_len": 256,
                                                     "lora_modules": {"sql": str(tmp_path / "adapters" / "sql")}},
            "model_info": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7, "tier": "weak"}}
    config = gateway_config(tmp_path, [base], route_groups=[{"name": "auto", "models": ["base", "sql"]}])
    ask = {"messages": [{"role": "user", "content": "Write a query for the fox."}], "max_tokens": 6, "temperature": 0}
    with running_gateway(config) as gateway, gateway.openai() as client:
        listed = {m.id for m in client.models.list().data}
        answers = {name: client.chat.completions.create(model=name, **ask) for name in ("base", "sql")}
        assert gateway.state is not None
        deployments = {d.model_name: d for d in gateway.state.pool.deployments}
        engine = deployments["base"].backend.engine  # type: ignore[attr-defined]
        shared = deployments["sql"].backend.engine is engine  # type: ignore[attr-defined]
        infos = {m.model_name: m.model_info for m in gateway.state.settings.model_list}
    assert {"base", "sql", "auto"} <= listed
    assert answers["sql"].model == "sql" and answers["base"].model == "base"
    assert answers["sql"].choices[0].message.content != answers["base"].choices[0].message.content
    assert shared and engine.lora_names == ["sql"]
    assert infos["sql"] == infos["base"]  # the adapter is priced as its base model


def test_lora_modules_that_cannot_be_served_are_config_errors(tmp_path: Path) -> None:
    from gateway.config import parse_settings

    def settings(params: dict, name: str = "base") -> object:
        entry = {"model_name": name, "litellm_params": params}
        return parse_settings(gateway_config(tmp_path, [entry]), base_dir=tmp_path)

    with pytest.raises(ValueError, match="lora_modules is for engines in this process"):
        settings({"model": "hosted_vllm/llama", "api_base": "http://x/v1", "lora_modules": {"a": "a"}})
    with pytest.raises(ValueError, match="'base' is already a model_name"):
        settings({"model": "pitstop-local/base", "model_dir": str(tmp_path), "lora_modules": {"base": "a"}})


def test_an_adapter_of_an_engine_server_is_a_model_entry_naming_it(tmp_path: Path) -> None:
    from tests.engine.serving import engine_server
    from tests.gateway.harness import model_entry

    model_dir = make_tiny_model(tmp_path / "tiny")
    adapter = make_tiny_lora(model_dir, tmp_path / "sql", rank=4, seed=1, std=0.2)
    ask = {"messages": [{"role": "user", "content": "Write a query."}], "max_tokens": 6, "temperature": 0}
    with engine_server(model_dir, lora_modules={"sql": str(adapter)}) as url:
        direct = httpx.post(f"{url}/v1/chat/completions", json={"model": "sql", **ask}).json()
        config = gateway_config(tmp_path, [model_entry("tiny", f"{url}/v1"), model_entry("sql", f"{url}/v1")])
        with running_gateway(config) as gateway, gateway.openai() as client:
            answers = {name: client.chat.completions.create(model=name, **ask) for name in ("tiny", "sql")}
    assert answers["sql"].choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert answers["sql"].choices[0].message.content != answers["tiny"].choices[0].message.content
