from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from engine.batch import StepShape
from engine.nnls import nnls
from engine.outputs import StepRecord
from engine.roofline import RooflineStepTime
from engine.step_time import LinearStepTime, fit_quality, load_profile, save_profile

TRUE = LinearStepTime(c0=2e-3, c_prefill_token=3e-5, c_prefill_seq=4e-4, c_attn=2e-10, c_decode_seq=6e-5,
                      c_kv_token=4e-8)


def random_shapes(n: int, seed: int = 0) -> list[StepShape]:
    """A server-like mix: mostly decode batches, some prefills, some mixed steps."""
    rng = np.random.default_rng(seed)
    shapes = []
    for _ in range(n):
        decode = int(rng.integers(0, 65)) if rng.random() < 0.8 else 0
        prefill_seqs = int(rng.integers(1, 5)) if rng.random() < 0.4 or not decode else 0
        chunks = [int(rng.integers(16, 1024)) for _ in range(prefill_seqs)]
        contexts = [c + int(rng.integers(0, 2048)) for c in chunks]
        decode_ctx = int(rng.integers(decode * 32, decode * 2048 + 1)) if decode else 0
        shapes.append(StepShape(sum(chunks), prefill_seqs, decode, decode_ctx + sum(contexts),
                                sum(c * x for c, x in zip(chunks, contexts, strict=True))))
    return shapes


def records_from(model: LinearStepTime, shapes: list[StepShape], noise: float = 0.0,
                 seed: int = 1) -> list[StepRecord]:
    rng = np.random.default_rng(seed)
    return [StepRecord(s, model.predict(s) * float(1 + noise * rng.standard_normal())) for s in shapes]


def test_fit_recovers_exact_coefficients():
    fitted = LinearStepTime.fit(records_from(TRUE, random_shapes(300)))
    np.testing.assert_allclose(fitted.coefficients, TRUE.coefficients, rtol=1e-6)
    quality = fit_quality(fitted, records_from(TRUE, random_shapes(50, seed=7)))
    assert quality.p90_rel_err < 1e-6 and quality.n_records == 50


def test_fit_with_noise_is_close_and_reports_error():
    records = records_from(TRUE, random_shapes(2000), noise=0.05)
    fitted = LinearStepTime.fit(records)
    # The big coefficients are well determined; the per-sequence ones less so.
    for name in ("c0", "c_prefill_token", "c_decode_seq", "c_kv_token"):
        assert getattr(fitted, name) == pytest.approx(getattr(TRUE, name), rel=0.1), name
    quality = fit_quality(fitted, records)
    assert 0.02 < quality.median_rel_err < 0.05  # ~0.674 sigma for 5% Gaussian noise
    assert quality.p90_rel_err < 0.1


def test_fit_keeps_coefficients_non_negative():
    truth = LinearStepTime(c0=5e-3, c_decode_seq=1e-4)  # nothing depends on prefill, attention or KV
    fitted = LinearStepTime.fit(records_from(truth, random_shapes(500), noise=0.1))
    assert all(c >= 0 for c in fitted.coefficients)
    assert fitted.c0 == pytest.approx(5e-3, rel=0.1)


def test_fit_small_steps_in_relative_terms():
    """Fitting on relative error: tiny decode steps are predicted as well as huge prefills."""
    shapes = random_shapes(400)
    records = records_from(TRUE, shapes, noise=0.02)
    fitted = LinearStepTime.fit(records)
    small = [r for r in records if r.shape.prefill_seqs == 0 and r.shape.decode_seqs <= 4]
    assert small
    assert fit_quality(fitted, small).median_rel_err < 0.04


def test_fit_rejects_empty():
    with pytest.raises(ValueError):
        LinearStepTime.fit([])


def _brute_force_nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    best, best_cost = np.zeros(a.shape[1]), float(np.sum(b**2))
    for k in range(1, a.shape[1] + 1):
        for subset in itertools.combinations(range(a.shape[1]), k):
            x_sub = np.linalg.lstsq(a[:, subset], b, rcond=None)[0]
            if (x_sub >= 0).all():
                x = np.zeros(a.shape[1])
                x[list(subset)] = x_sub
                cost = float(np.sum((a @ x - b) ** 2))
                if cost < best_cost:
                    best, best_cost = x, cost
    return best


@pytest.mark.parametrize("seed", range(8))
def test_nnls_matches_brute_force(seed: int):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((30, 5)) * rng.choice([1e-3, 1.0, 1e3], size=5)
    b = rng.standard_normal(30)
    x = nnls(a, b)
    assert (x >= 0).all()
    expected = _brute_force_nnls(a, b)
    assert np.sum((a @ x - b) ** 2) == pytest.approx(np.sum((a @ expected - b) ** 2), rel=1e-9)


def test_profile_round_trip(tmp_path):
    model = LinearStepTime(*TRUE.coefficients, model={"name": "m", "num_blocks": 100, "block_size": 16})
    quality = fit_quality(model, records_from(model, random_shapes(10)))
    written = save_profile(tmp_path / "p.json", model, source={"how": "test"}, fit=quality)
    on_disk = json.loads((tmp_path / "p.json").read_text())
    assert on_disk == written
    assert on_disk["kind"] == "linear" and on_disk["fit"]["n_records"] == 10
    assert on_disk["source"] == {"how": "test"} and on_disk["model"]["name"] == "m"
    loaded = load_profile(tmp_path / "p.json")
    assert loaded == model and loaded.model["num_blocks"] == 100

    roofline = RooflineStepTime.builtin("llama-3.1-70b", "H200", tensor_parallel=2)
    save_profile(tmp_path / "r.json", roofline)
    loaded = load_profile(tmp_path / "r.json")
    assert loaded == roofline
    shape = StepShape(300, 2, 40, 50_000, 90_000)
    assert loaded.predict(shape) == roofline.predict(shape)


def test_load_profile_rejects_unknown_kind(tmp_path):
    (tmp_path / "p.json").write_text('{"kind": "magic", "params": {}}')
    with pytest.raises(ValueError, match="magic"):
        load_profile(tmp_path / "p.json")
