"""The gateway's forwarded POST /update_weights_from_disk with `draft_model_path` (gateway/weight_admin.py), over
real sockets: an engine in the gateway's process and a served one, both speculating with a draft model, take
the new target and draft in one call and answer as the new target does; the answer lists each engine's draft
updated; a bad `draft_model_path` is a 400 naming it before any engine is touched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.build import build_engine
from engine.config import SpeculativeConfig
from engine.server.app import create_app
from engine.tiny_model import make_tiny_model, make_truncated_model
from tests.engine.serving import serve_in_thread
from tests.gateway.harness import gateway_config, model_entry, running_gateway
from tests.gateway.test_gateway_weight_updates import MASTER, each_engine, fresh_answer, update


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gateway-draft-weights")
    a, b = make_tiny_model(root / "a", seed=0), make_tiny_model(root / "b", seed=1)
    return {"a": a, "b": b, "draft_a": make_truncated_model(a, root / "draft_a", 1),
            "draft_b": make_truncated_model(b, root / "draft_b", 1)}


def spec(draft: Path) -> SpeculativeConfig:
    return SpeculativeConfig(model=str(draft), num_speculative_tokens=3, acceptance_method="coupled")


@pytest.fixture()
def engine_url(models: dict[str, Path]) -> Iterator[str]:
    engine = build_engine(models["a"], num_blocks=64, device="cpu", speculative=spec(models["draft_a"]))
    with serve_in_thread(create_app(engine, "m", allow_weight_updates=True)) as url:
        yield url


def local(models: dict[str, Path]) -> dict:
    return {"model_name": "m", "litellm_params": {
        "model": "pitstop-local/m", "model_dir": str(models["a"]), "num_blocks": 64,
        "speculative_config": {"model": str(models["draft_a"]), "num_speculative_tokens": 3,
                               "acceptance_method": "coupled"}}}


def test_every_engine_takes_the_new_target_and_draft(models: dict[str, Path], engine_url: str,
                                                     tmp_path: Path) -> None:
    on_b = fresh_answer(models["b"])
    entries = [local(models), local(models), model_entry("m", engine_url + "/v1")]
    with running_gateway(gateway_config(tmp_path, entries, auth={"master_key": MASTER})) as gateway:
        assert gateway.state is not None
        for value in (5, ""):
            bad = update(gateway, {"model": "m", "model_path": str(models["b"]), "draft_model_path": value})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "draft_model_path"
        assert each_engine(gateway, engine_url) != [on_b] * 3  # nothing was touched
        response = update(gateway, {"model": "m", "model_path": str(models["b"]),
                                    "draft_model_path": str(models["draft_b"])})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["draft_model_path"] == str(models["draft_b"]) and len(answer["engines"]) == 3
        for engine in answer["engines"]:
            assert engine["success"] and engine["draft"]["updated"] is True, engine
            assert engine["draft"]["model_path"] == str(models["draft_b"])
        for deployment in gateway.state.pool.by_model["m"][:2]:
            drafter = deployment.backend.engine.engine.scheduler.drafter  # type: ignore[attr-defined]
            assert drafter.runner.model_dir == models["draft_b"]
        assert each_engine(gateway, engine_url) == [on_b] * 3
        kept = update(gateway, {"model": "m", "model_path": str(models["a"])}).json()
        assert all(engine["draft"]["updated"] is False for engine in kept["engines"])
    assert httpx.get(f"{engine_url}/healthz").status_code == 200
