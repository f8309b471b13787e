"""Training every family on tiny synthetic data, artifacts, registry fallback and hot reload."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from routers.artifact import artifact_fingerprint, load_router, read_manifest, save_router
from routers.base import Candidate, RoutingRequest
from routers.choice import choose
from routers.data.prices import fit_prices
from routers.evaluate import Predictions, evaluate_multi
from routers.families import FAMILIES, build_router
from routers.features.featurizer import FeatureSpec
from routers.features.static import StaticEncoder
from routers.registry import LEARNED_FAMILIES, make_router
from routers.tier_prior import TierPriorRouter

SPEC = FeatureSpec("static", ("head", "focus"), True, 12)
CANDIDATES = [Candidate("solver", 1e-7, 1e-7), Candidate("writer", 1e-7, 1e-7), Candidate("big", 1e-5, 1e-5)]


def _train(family: str, data, encoder_path: Path):
    return build_router(family, data.models, SPEC, StaticEncoder.load(encoder_path)).fit(data.split("train"))


def test_registry_names_match_the_families() -> None:
    assert set(LEARNED_FAMILIES) == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_and_predicts_probabilities(family: str, synthetic_data, tiny_encoder: Path) -> None:
    router = _train(family, synthetic_data, tiny_encoder)
    quality, tokens = router.estimate_batch(synthetic_data.split("test").prompts)
    assert quality.shape == tokens.shape == (len(synthetic_data.split("test")), 3)
    assert np.all((quality >= 0) & (quality <= 1))
    estimate = router.estimate(RoutingRequest("What is 3 plus 4?", 8), CANDIDATES)
    assert set(estimate.quality) == {"solver", "writer", "big"}


def test_pitstop_learns_which_cheap_model_fits_the_prompt(synthetic_data, tiny_encoder: Path) -> None:
    router = _train("pitstop", synthetic_data, tiny_encoder)
    test = synthetic_data.split("test")
    quality, _ = router.estimate_batch(test.prompts)
    is_math = test.tasks == "math"
    solver, writer = test.models.index("solver"), test.models.index("writer")
    assert quality[is_math, solver].mean() > 0.8 > quality[~is_math, solver].mean() + 0.5
    assert quality[~is_math, writer].mean() > 0.8


def test_pitstop_beats_the_zero_router_in_the_harness(synthetic_data, tiny_encoder: Path) -> None:
    train, test = synthetic_data.split("train"), synthetic_data.split("test")
    preds = []
    for family in ("pitstop", "zero"):
        q, t = _train(family, synthetic_data, tiny_encoder).estimate_batch(test.prompts)
        preds.append(Predictions(family, q, t))
    result = evaluate_multi(preds, test, fit_prices(train)[0], "zero")
    aiq = {name: r["aiq"] for name, r in result["routers"].items()}
    assert aiq["pitstop"] > aiq["zero"] + 0.05
    assert aiq["oracle"] >= aiq["pitstop"] - 1e-9


def test_artifact_round_trip_and_manifest(synthetic_data, tiny_encoder: Path, tmp_path: Path) -> None:
    router = _train("pitstop", synthetic_data, tiny_encoder)
    first = router.estimate(RoutingRequest("What is 3 plus 4?", 8), CANDIDATES)  # caches the reference cost
    assert router.estimate(RoutingRequest("Tell me a story.", 5), CANDIDATES).reference_cost_usd == first.reference_cost_usd
    path = tmp_path / "pitstop.joblib"
    manifest = save_router(router, path, {"dataset": "synthetic", "split": "train", "files": {}}, {"aiq": 0.5})
    loaded = load_router(path)
    assert loaded.version == manifest["version"] == read_manifest(path)["version"]
    assert read_manifest(path)["training_data"]["dataset"] == "synthetic"
    prompts = synthetic_data.split("test").prompts
    np.testing.assert_allclose(loaded.estimate_batch(prompts)[0], router.estimate_batch(prompts)[0])
    assert path.stat().st_size < 5_000_000  # no training rows inside
    assert "_reference_costs" in router.__dict__ and "_reference_costs" not in loaded.__dict__  # a cache, not saved
    assert loaded.estimate(RoutingRequest("What is 3 plus 4?", 8), CANDIDATES) == first


def test_hot_reload_sees_a_new_version(synthetic_data, tiny_encoder: Path, tmp_path: Path) -> None:
    path = tmp_path / "router.joblib"
    save_router(_train("logistic", synthetic_data, tiny_encoder), path, {"dataset": "synthetic"})
    first_print, first_version = artifact_fingerprint(path), make_router("logistic", str(path)).version
    save_router(_train("pitstop", synthetic_data, tiny_encoder), path, {"dataset": "synthetic"})
    assert artifact_fingerprint(path) != first_print
    reloaded = make_router("logistic", str(path))  # a mismatched family is used as trained, with a warning
    assert reloaded.version != first_version and reloaded.family == "pitstop"
    assert artifact_fingerprint(tmp_path / "absent.joblib") is None


def test_missing_or_broken_artifact_falls_back_to_the_tier_prior(tmp_path: Path, caplog) -> None:
    broken = tmp_path / "broken.joblib"
    broken.write_bytes(b"not a pickle")
    with caplog.at_level(logging.WARNING, logger="pitstop.routers"):
        assert isinstance(make_router("pitstop", None), TierPriorRouter)
        assert isinstance(make_router("pitstop", str(tmp_path / "missing.joblib")), TierPriorRouter)
        assert isinstance(make_router("pitstop", str(broken)), TierPriorRouter)
    assert sum("falling back to tier-prior" in r.message for r in caplog.records) == 3
    with pytest.raises(ValueError, match="unknown router"):
        make_router("no-such-router")


def test_unknown_candidate_gets_the_documented_prior(synthetic_data, tiny_encoder: Path) -> None:
    router = _train("pitstop", synthetic_data, tiny_encoder)
    newcomers = [*CANDIDATES, Candidate("new-strong", 2e-5, 2e-5, tier="strong"), Candidate("new-weak", 0, 0, "weak")]
    estimate = router.estimate(RoutingRequest("Write a short poem about the sea.", 9), newcomers)
    known = [estimate.quality[m] for m in ("solver", "writer", "big")]
    assert estimate.quality["new-strong"] == pytest.approx(max(known))
    assert estimate.quality["new-weak"] == pytest.approx(min(known))
    decision = choose(estimate, newcomers, 9, 0.5, router.name, router.version)
    assert decision.model in {c.model for c in newcomers}


def test_watcher_reloads_only_a_replaced_file(synthetic_data, tiny_encoder: Path, tmp_path: Path) -> None:
    from routers.artifact import ArtifactWatcher

    path = tmp_path / "watched.joblib"
    first = save_router(_train("zero", synthetic_data, tiny_encoder), path, {"dataset": "synthetic"})
    watcher = ArtifactWatcher(path)
    assert watcher.poll() is None  # unchanged
    second = save_router(_train("logistic", synthetic_data, tiny_encoder), path, {"dataset": "synthetic"})
    reloaded = watcher.poll()
    assert reloaded is not None and reloaded.version == second["version"] != first["version"]
    assert watcher.poll() is None


@pytest.mark.parametrize("command", [["train", "router"], ["eval", "router"]])
def test_router_jobs_name_an_unknown_data_set_instead_of_a_traceback(command: list[str], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    from gateway.cli import main  # noqa: PLC0415

    assert main([*command, "--data", "nowhere", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "unknown data set 'nowhere'" in error and "routerbench" in error and "Traceback" not in error
