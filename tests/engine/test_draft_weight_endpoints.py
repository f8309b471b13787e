"""POST /update_weights_from_disk with `draft_model_path` over HTTP (engine/server/weight_endpoints.py), on a
real socket: the admin calls with httpx, completions with the openai SDK. After the update the server answers
and drafts (the spec-decode counters of /metrics) as a fresh server on the new target and draft folders; the
answer says what the draft did and its acceptance rate over the round that ended; a bad `draft_model_path` is a
400 naming it, a draft of another shape a 400 with the target's old weights served still."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from engine.build import build_engine
from engine.config import SpeculativeConfig
from engine.server.app import create_app
from tests.engine.serving import sdk, serve_in_thread
from tests.engine.test_draft_weight_updates import target_and_draft_folders

PROMPT = "The draft follows the target"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return target_and_draft_folders(tmp_path_factory.mktemp("draft-http"))


def app_on(target: Path, draft: Path, **options: bool) -> Starlette:
    spec = SpeculativeConfig(model=str(draft), num_speculative_tokens=4, acceptance_method="coupled")
    return create_app(build_engine(target, num_blocks=64, device="cpu", speculative=spec), "tiny", **options)


def counter(url: str, name: str) -> float:
    lines = [line for line in httpx.get(f"{url}/metrics").text.splitlines()
             if line.startswith(f"pitstop_engine_spec_decode_{name}_total")]
    return float(lines[0].split()[-1])


def completion(url: str) -> tuple[str, tuple[float, float]]:
    """A greedy completion's text, and the draft tokens checked and accepted for it."""
    before = counter(url, "draft_tokens"), counter(url, "accepted_tokens")
    text = sdk(url).completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0,
                                       extra_body={"ignore_eos": True}).choices[0].text
    return text, (counter(url, "draft_tokens") - before[0], counter(url, "accepted_tokens") - before[1])


def post(url: str, body: object) -> httpx.Response:
    return httpx.post(f"{url}/update_weights_from_disk", json=body, timeout=120)


@pytest.fixture(scope="module")
def fresh_b(models: dict[str, Path]) -> tuple[str, tuple[float, float]]:
    with serve_in_thread(app_on(models["b"], models["draft_b"])) as url:
        return completion(url)


def test_the_draft_updated_over_http_drafts_as_a_fresh_server(models: dict[str, Path],
                                                              fresh_b: tuple[str, tuple[float, float]]) -> None:
    with serve_in_thread(app_on(models["a"], models["draft_a"], allow_weight_updates=True)) as url:
        on_a = completion(url)
        assert on_a[0] != fresh_b[0] and on_a[1][0] > 0
        response = post(url, {"model_path": str(models["b"]), "draft_model_path": str(models["draft_b"])})
        assert response.status_code == 200, response.text
        draft = response.json()["draft"]
        assert draft["updated"] is True and draft["model_path"] == str(models["draft_b"])
        assert draft["acceptance_rate_before"] == pytest.approx(on_a[1][1] / on_a[1][0])
        assert completion(url) == fresh_b
        kept = post(url, {"model_path": str(models["a"])}).json()["draft"]
        assert kept["updated"] is False and "kept its weights" in kept["message"]


def test_bad_draft_paths_are_400s_and_the_target_stays(models: dict[str, Path]) -> None:
    with serve_in_thread(app_on(models["a"], models["draft_a"], allow_weight_updates=True)) as url:
        on_a = completion(url)
        good = {"model_path": str(models["b"])}
        for value in (5, "", ["x"]):
            response = post(url, {**good, "draft_model_path": value})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == "draft_model_path"
        other = post(url, {**good, "draft_model_path": str(models["draft_b2"])})
        assert other.status_code == 400 and other.json()["error"]["param"] == "draft_model_path"
        assert "num_layers" in other.json()["error"]["message"]
        assert completion(url) == on_a  # nothing changed: not the target, not the draft
