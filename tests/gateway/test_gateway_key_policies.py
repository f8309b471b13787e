"""What an API key may ask for: the models and route groups it may use (a 403 `model_not_allowed`
otherwise, taking no rate slot; /v1/models lists only those) and its priority (the default, and the
most urgent its requests get); and a request's priority class on a ranked vLLM deployment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.ranking import PRIORITY_CLASS
from tests.gateway.harness import gateway_config, model_entry, run_cli, running_gateway, write_config
from tests.gateway.test_gateway_keys import MASTER, create_key
from tests.gateway.upstream import UpstreamProcess


def _config(tmp_path: Path, a: UpstreamProcess, b: UpstreamProcess) -> Path:
    models = [model_entry("up", a.api_base), model_entry("other", b.api_base),
              model_entry("vllm", a.api_base, provider="hosted_vllm", transport="auto")]
    raw = gateway_config(tmp_path, models, [{"name": "grp", "models": ["up"], "router": "tier-prior"}],
                         auth={"require_keys": True, "master_key": MASTER})
    return write_config(tmp_path / "pitstop.yaml", raw)


def chat(model: str, **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "x"}], **extra}


def test_keys_cli_records_models_and_priority_and_refuses_unknown_names(tmp_path: Path,
                                                                         upstreams: tuple) -> None:
    config = _config(tmp_path, *upstreams)
    create_key(config, "team-a", "--models", "grp,other", "--priority", "5")
    listed = run_cli("keys", "list", "--config", str(config))
    assert "team-a" in listed.stdout and "models=grp,other  priority=5.0" in listed.stdout
    typo = run_cli("keys", "create", "--config", str(config), "--name", "x", "--models", "grp,gpt4")
    assert typo.returncode == 2 and "'gpt4' is neither a model nor a route group" in typo.stderr
    for bad in ("nan", "1e10", "urgent"):
        refused = run_cli("keys", "create", "--config", str(config), "--name", "x", "--priority", bad)
        assert refused.returncode == 2 and "--priority" in refused.stderr, bad


def test_a_key_uses_only_its_models_and_lists_only_them(tmp_path: Path, upstreams: tuple) -> None:
    config = _config(tmp_path, *upstreams)
    _, secret = create_key(config, "team-a", "--models", "grp", "--rpm", "3")
    with running_gateway(yaml.safe_load(config.read_text())) as gw, \
            gw.http(headers={"authorization": f"Bearer {secret}"}) as http:
        refused = [http.post("/v1/chat/completions", json=chat(model)) for model in ("other", "up", "other")]
        embeddings = http.post("/v1/embeddings", json={"model": "other", "input": "x"})
        allowed = [http.post("/v1/chat/completions", json=chat("grp")) for _ in range(3)]  # the rpm's 3 slots
        listed = http.get("/v1/models").json()["data"]
        hidden = http.get("/v1/models/other")
        master = http.post("/v1/chat/completions", json=chat("other"), headers={"authorization": f"Bearer {MASTER}"})
    for response in [*refused, embeddings]:
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("permission_error", "model_not_allowed", "model")
        assert "may use: grp" in error["message"]
    assert [r.status_code for r in allowed] == [200, 200, 200]  # refused requests took no rate slot
    assert [m["id"] for m in listed] == ["grp"]
    assert hidden.status_code == 404 and "other" not in hidden.json()["error"]["message"].split("available:")[1]
    assert master.status_code == 200
    rows = {r["request_id"]: r for r in gw.rows()}
    assert {rows[r.headers["x-pitstop-request-id"]]["http_status"] for r in refused} == {403}


@pytest.mark.parametrize("key_priority, asked, sent", [
    (None, None, None),  # nothing asked, nothing sent
    (None, -3, -3),
    ("5", None, 5),  # the key's default
    ("5", 1, 5),  # never more urgent than the key's
    ("5", 9, 9),  # a request may choose to wait longer
    ("-2", None, -2),
])
def test_a_keys_priority_is_the_default_and_the_floor(tmp_path: Path, upstreams: tuple, key_priority: str | None,
                                                       asked: float | None, sent: float | None) -> None:
    config = _config(tmp_path, *upstreams)
    _, secret = create_key(config, "team", *(("--priority", key_priority) if key_priority else ()))
    body = chat("up", **({} if asked is None else {"priority": asked}))
    with running_gateway(yaml.safe_load(config.read_text())) as gw, \
            gw.http(headers={"authorization": f"Bearer {secret}"}) as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 200
    assert upstreams[0].stats()["bodies"][-1].get("priority") == sent


@pytest.mark.parametrize("key_priority, fields, sent", [
    (None, {"service_tier": "flex"}, 10),  # waits with the batches
    (None, {"service_tier": "priority"}, -1),
    (None, {"service_tier": "default"}, None),
    ("5", {"service_tier": "priority"}, 5),  # the key's floor still holds
    (None, {"service_tier": "flex", "priority": 2}, 2),  # an explicit priority wins
])
def test_openais_service_tier_is_a_priority(tmp_path: Path, upstreams: tuple, key_priority: str | None,
                                            fields: dict, sent: float | None) -> None:
    config = _config(tmp_path, *upstreams)
    _, secret = create_key(config, "team", *(("--priority", key_priority) if key_priority else ()))
    with running_gateway(yaml.safe_load(config.read_text())) as gw, \
            gw.http(headers={"authorization": f"Bearer {secret}"}) as http:
        assert http.post("/v1/chat/completions", json=chat("up", **fields)).status_code == 200
        refused = http.post("/v1/chat/completions", json=chat("up", service_tier="turbo"))
    body = upstreams[0].stats()["bodies"][-1]
    assert body.get("priority") == sent and body["service_tier"] == fields["service_tier"]  # forwarded as well
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "service_tier"


def test_on_a_ranked_vllm_deployment_priority_is_a_class_above_the_rank(tmp_path: Path, upstreams: tuple) -> None:
    """vLLM gets one integer: priority x 1e12 + the aged rank key. A less urgent request (priority 1)
    used to be sent as a bare 1, which sorts before every ranked request's ~1.8e10."""
    config = _config(tmp_path, *upstreams)
    with running_gateway(yaml.safe_load(config.read_text())) as gw, \
            gw.http(headers={"authorization": f"Bearer {MASTER}"}) as http:
        for asked in (None, 1, -1):
            assert http.post("/v1/chat/completions", json=chat("vllm", **(
                {} if asked is None else {"priority": asked}))).status_code == 200
    plain, later, sooner = (body["priority"] for body in upstreams[0].stats()["bodies"][-3:])
    assert sooner < 0 < plain < PRIORITY_CLASS < later
    assert later // PRIORITY_CLASS == 1 and sooner // PRIORITY_CLASS == -1
