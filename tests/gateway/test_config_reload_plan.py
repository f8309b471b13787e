"""What a reload keeps, builds and retires (gateway/config_reload.py plan_reload), and a reload of engines in
the gateway's process, whose LoRA adapters ride on their base's engine: a changed base replaces its
adapters too, built off the event loop while the old engine still answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.tiny_lora import make_tiny_lora
from engine.tiny_model import make_tiny_model
from gateway.config import Settings, parse_settings
from gateway.config_reload import ReloadRefused, plan_reload, restart_sections
from gateway.deployment_build import new_deployment
from gateway.deployments import Deployment, DeploymentPool
from tests.gateway.harness import gateway_config, model_entry, running_gateway, wait_until, write_config

A, B = "http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"


def settings(tmp_path: Path, models: list[dict], **sections: object) -> Settings:
    return parse_settings(gateway_config(tmp_path, models, **sections))


def built(config: Settings) -> list[Deployment]:
    pool = DeploymentPool()
    return [new_deployment(pool, entry, None, config) for entry in config.model_list]  # type: ignore[arg-type]


def test_alike_entries_keep_alike_deployments_in_order_and_the_rest_are_built_or_retired(tmp_path: Path) -> None:
    old = settings(tmp_path, [model_entry("m", A), model_entry("m", A), model_entry("m", B), model_entry("x", B)])
    current = built(old)
    new = settings(tmp_path, [model_entry("m", B), model_entry("m", A), model_entry("m", A), model_entry("m", A)])
    plan = plan_reload(old, new, current)
    assert plan.kept == [current[2], current[0], current[1], None]
    assert [e.litellm_params.api_base for e in plan.added] == [A]
    assert plan.retired == [current[3]]


def test_a_changed_entry_is_a_new_deployment(tmp_path: Path) -> None:
    old = settings(tmp_path, [model_entry("m", A, rpm=10)])
    new = settings(tmp_path, [model_entry("m", A, rpm=20)])
    current = built(old)
    plan = plan_reload(old, new, current)
    assert plan.kept == [None] and plan.retired == current


def test_sections_outside_the_model_list_and_policies_need_a_restart(tmp_path: Path) -> None:
    base = [model_entry("m", A)]
    wildcard = {"model_name": "openai/*", "litellm_params": {"model": "openai/*", "api_key": "sk-x"}}
    old = settings(tmp_path, [*base, wildcard])
    assert restart_sections(old, settings(tmp_path, [model_entry("n", B), wildcard])) == []
    changed = settings(tmp_path, [*base, {**wildcard, "litellm_params": {"model": "openai/*", "api_key": "sk-y"}}],
                       hedging={"enabled": True}, server={"port": 9999, "num_retries": 0})
    # hedging, server.num_retries and wildcards reload (gateway/policy_reload.py, wildcard_reload.py);
    # server.port does not
    assert restart_sections(old, changed) == ["server.port"]
    with pytest.raises(ReloadRefused, match="these sections changed: server.port"):
        plan_reload(old, changed, built(old))


def local_base(model_dir: Path, adapters: dict[str, Path]) -> dict:
    return {"model_name": "base",
            "litellm_params": {"model": "pitstop-local/base", "model_dir": str(model_dir), "num_blocks": 64,
                               "max_model_len": 256, "lora_modules": {k: str(v) for k, v in adapters.items()}},
            "model_info": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}}


def test_a_changed_engine_in_process_is_rebuilt_with_its_adapters(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    sql = make_tiny_lora(model_dir, tmp_path / "adapters" / "sql", rank=4, seed=1, std=0.2)
    chat = make_tiny_lora(model_dir, tmp_path / "adapters" / "chat", rank=4, seed=2, std=0.2)
    path = tmp_path / "pitstop.yaml"
    auth = {"master_key": "sk-m"}
    ask = {"messages": [{"role": "user", "content": "Write a query for the fox."}], "max_tokens": 6, "temperature": 0}
    with running_gateway(gateway_config(tmp_path, [local_base(model_dir, {"sql": sql})], auth=auth),
                         config_path=path) as gateway, gateway.openai(api_key="sk-m") as client:
        state = gateway.state
        assert state is not None
        before = {name: client.chat.completions.create(model=name, **ask).choices[0].message.content
                  for name in ("base", "sql")}
        old_engine = state.pool.by_model["base"][0].backend.engine  # type: ignore[attr-defined]
        write_config(path, gateway_config(tmp_path, [local_base(model_dir, {"sql": sql, "chat": chat})], auth=auth))
        with gateway.http() as http:
            report = http.post("/config/reload", headers={"Authorization": "Bearer sk-m"}, timeout=120).json()
        assert sorted(report["added"]) == ["base#1", "chat#0", "sql#1"]
        assert sorted(report["retired"]) == ["base#0", "sql#0"] and report["models_added"] == ["chat"]
        engines = {name: state.pool.by_model[name][0].backend.engine for name in ("base", "sql", "chat")}  # type: ignore[attr-defined]
        assert engines["base"] is engines["sql"] is engines["chat"] is not old_engine
        after = {name: client.chat.completions.create(model=name, **ask).choices[0].message.content
                 for name in ("base", "sql", "chat")}
        assert {name: after[name] for name in before} == before  # same weights, same greedy answers
        assert after["chat"] != after["base"]
        wait_until(lambda: not state.reloader.retired, what="the old engine closed")


class SharedEngineBackend:
    """A LoRA adapter's backend or its base's: closing either stops the one engine they share."""

    def __init__(self, engine: object, closed: list[object]) -> None:
        self.engine, self.closed = engine, closed

    async def close(self) -> None:
        self.closed.append(self.engine)


def test_an_engine_shared_by_retired_deployments_is_closed_once_by_the_last_to_finish(tmp_path: Path) -> None:
    import asyncio

    from gateway.config_reload import ConfigReloader

    engine, closed = object(), []
    base, adapter = (Deployment(name, name, SharedEngineBackend(engine, closed), None, "pitstop-local/x")  # type: ignore[arg-type]
                     for name in ("base#0", "sql#0"))
    reloader = ConfigReloader(None)
    reloader.retired = {base, adapter}
    asyncio.run(reloader._close(adapter))  # idle first, while base still finishes a request
    assert closed == []
    asyncio.run(reloader._close(base))
    assert closed == [engine]
