"""Route groups on a trained router over real HTTP: the decision follows the prompt, the outcome row
records router name, version and scores, a replaced artifact is picked up without a restart, and a
missing artifact is trained in the background from an outcome export."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from routers.artifact import read_manifest, save_router
from routers.data.table import long_table, to_wide
from routers.families import build_router
from routers.features.featurizer import FeatureSpec
from routers.features.static import StaticEncoder
from tests.gateway.harness import (
    Gateway,
    gateway_config,
    model_entry,
    running_gateway,
    wait_until,
    write_config,
)
from tests.routers.conftest import random_encoder, synthetic_rows

SPEC = FeatureSpec("static", ("head", "focus"), True, 12)
MATH_PROMPT = "What is 17 plus 25?"
CHAT_PROMPT = "Write a short poem about the winter."


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("encoder") / "tiny.npz"
    random_encoder().save(path)
    return path


def _rows(swap: bool) -> list[dict]:
    """The synthetic set (solver right on math, writer on chat); `swap` trades the two models' names."""
    rows = synthetic_rows()
    if swap:
        names = {"solver": "writer", "writer": "solver"}
        rows = [{**r, "model": names.get(r["model"], r["model"])} for r in rows]
    return rows


def _train(path: Path, encoder_path: Path, swap: bool = False) -> str:
    data = to_wide(long_table(_rows(swap)), name="synthetic")
    router = build_router("pitstop", data.models, SPEC, StaticEncoder.load(encoder_path))
    return save_router(router.fit(data), path, {"dataset": "synthetic", "swapped": swap})["version"]


def _group(artifact: Path, **extra: object) -> dict:
    # A high cost preference: the costly "big" model never wins, so the cheap specialists must be told apart.
    return {"name": "auto", "models": ["solver", "writer", "big"], "router": "pitstop",
            "router_artifact": str(artifact), "cost_preference": 5.0, "reload_interval_s": 0.2, **extra}


def _models(api_base: str) -> list[dict]:
    return [model_entry("solver", api_base, price_in=1e-7, price_out=1e-7),
            model_entry("writer", api_base, price_in=1e-7, price_out=1e-7),
            model_entry("big", api_base, tier="strong", price_in=1e-5, price_out=1e-5)]


def _ask(gw: Gateway, prompt: str) -> tuple[str, str]:
    with gw.openai() as client:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": prompt}], max_tokens=4)
    return raw.headers["x-pitstop-model"], raw.headers["x-pitstop-request-id"]


@pytest.fixture
def learned_gateway(tmp_path: Path, upstreams, encoder_path: Path) -> Iterator[tuple[Gateway, Path, str]]:
    artifact = tmp_path / "auto.joblib"
    version = _train(artifact, encoder_path)
    raw = gateway_config(tmp_path, _models(upstreams[0].api_base), [_group(artifact)])
    with running_gateway(raw) as gw:
        yield gw, artifact, version


def test_trained_router_picks_the_specialist_and_logs_its_decision(learned_gateway) -> None:
    gw, _, version = learned_gateway
    math_model, math_id = _ask(gw, MATH_PROMPT)
    chat_model, chat_id = _ask(gw, CHAT_PROMPT)
    assert (math_model, chat_model) == ("solver", "writer")
    row = gw.row(math_id)
    assert row["router_name"] == "pitstop" and row["router_version"] == version
    assert set(row["router_scores"]) == {"solver", "writer", "big"}
    assert max(row["router_scores"], key=row["router_scores"].get) == "solver"
    assert row["route_group"] == "auto" and row["model"] == "solver"
    assert gw.row(chat_id)["router_version"] == version


def test_a_replaced_artifact_is_used_without_a_restart(learned_gateway, encoder_path: Path) -> None:
    gw, artifact, version = learned_gateway
    assert _ask(gw, MATH_PROMPT)[0] == "solver"
    new_version = _train(artifact, encoder_path, swap=True)  # atomic replace, as `pitstop train router` does
    assert new_version != version
    wait_until(lambda: _ask(gw, MATH_PROMPT)[0] == "writer", timeout=20, what="the swapped router")
    model, request_id = _ask(gw, CHAT_PROMPT)
    assert model == "solver"
    assert gw.row(request_id)["router_version"] == new_version


def test_a_broken_replacement_keeps_the_current_router(learned_gateway) -> None:
    gw, artifact, version = learned_gateway
    artifact.write_bytes(b"half a file")
    wait_until(lambda: _ask(gw, CHAT_PROMPT)[0] == "writer", what="a routed request")  # still served, same router
    assert gw.row(_ask(gw, MATH_PROMPT)[1])["router_version"] == version


def test_missing_artifact_is_trained_in_the_background(tmp_path: Path, upstreams, encoder_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    export = tmp_path / "outcomes.jsonl"
    with export.open("w") as f:
        for i, r in enumerate(synthetic_rows()):
            f.write(json.dumps({"request_id": f"{r['prompt_id']}-{i}", "prompt": r["prompt"], "model": r["model"],
                                "quality": r["quality"], "cost_usd": r["cost_usd"], "completion_tokens": 30,
                                "route_group": "auto", "status": "ok"}) + "\n")
    monkeypatch.setenv("PITSTOP_STATIC_ENCODER", str(encoder_path))  # the trainer child inherits it
    artifact = tmp_path / "trained" / "auto.joblib"
    raw = gateway_config(tmp_path, _models(upstreams[0].api_base), [_group(artifact, train_data=f"outcomes:{export}")])
    with running_gateway(raw) as gw:
        model, request_id = _ask(gw, MATH_PROMPT)  # served at once, by the tier prior
        assert gw.row(request_id)["router_name"] == "tier-prior"
        wait_until(artifact.exists, timeout=240, what="the background training job")
        version = read_manifest(artifact)["version"]
        wait_until(lambda: gw.row(_ask(gw, MATH_PROMPT)[1])["router_version"] == version, timeout=20,
                   what="the trained router")
        assert _ask(gw, CHAT_PROMPT)[0] == "writer"


def test_a_reload_pointing_the_group_at_another_artifact_routes_and_watches_by_it(
        tmp_path: Path, upstreams, encoder_path: Path) -> None:
    first, other = tmp_path / "auto.joblib", tmp_path / "other.joblib"
    _train(first, encoder_path)
    _train(other, encoder_path, swap=True)
    path = tmp_path / "pitstop.yaml"
    auth = {"master_key": "sk-m"}
    models = _models(upstreams[0].api_base)
    with running_gateway(gateway_config(tmp_path, models, [_group(first)], auth=auth), config_path=path) as gw:
        assert _ask(gw, MATH_PROMPT)[0] == "solver"
        write_config(path, gateway_config(tmp_path, models, [_group(other)], auth=auth))
        with gw.http() as http:
            report = http.post("/config/reload", headers={"Authorization": "Bearer sk-m"}).json()
        assert report["route_groups_changed"] == ["auto"]
        assert _ask(gw, MATH_PROMPT)[0] == "writer"  # the other artifact's router, at once
        _train(other, encoder_path)  # replaced: the reloaded group's file is the one watched now
        wait_until(lambda: _ask(gw, MATH_PROMPT)[0] == "solver", timeout=20, what="the watched artifact")
