from __future__ import annotations

import json
import random
import statistics

import numpy as np
import pytest

from engine.batch import StepShape
from engine.clock import VirtualClock
from engine.profile import ProfileSweep, profile_runner, run_profile
from engine.roofline import GPUSpec, ModelShape, RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.sim_runner import SimulatedRunner
from engine.simulate import Arrival, make_sim_engine, simulate
from engine.step_time import LinearStepTime, load_profile

TRUE = LinearStepTime(c0=3e-3, c_prefill_token=4e-5, c_prefill_seq=2e-4, c_attn=5e-10, c_decode_seq=8e-5,
                      c_kv_token=3e-8)
SMALL_SWEEP = ProfileSweep(prefill_lens=(16, 128, 512), decode_batch_sizes=(1, 4, 16, 32),
                           context_lens=(64, 512), decode_steps=4, mixed_prefill_lens=(128,), repeats=1)


class NoisyStepTime:
    """A 'GPU' whose step time is another model's, times seeded multiplicative noise."""

    def __init__(self, base, noise: float, seed: int = 0) -> None:
        self.base, self.noise, self.rng = base, noise, np.random.default_rng(seed)

    def predict(self, shape: StepShape) -> float:
        return self.base.predict(shape) * float(1 + self.noise * self.rng.standard_normal())

    def to_json(self) -> dict:
        return {}


class FakeTorchRunner(SimulatedRunner):
    """Stands in for TorchModelRunner (same constructor) with a known step time on a virtual clock."""

    def __init__(self, model_dir, num_blocks: int, block_size: int, device=None, dtype=None) -> None:
        super().__init__(TRUE, VirtualClock(), vocab_size=300, eos_token_ids=(2,))
        self.num_blocks, self.block_size, self.device = num_blocks, block_size, device


def profile_on_virtual_clock(step_time, sweep: ProfileSweep = SMALL_SWEEP, num_blocks: int = 2048):
    clock = VirtualClock()
    runner = SimulatedRunner(step_time, clock, vocab_size=1000)
    return profile_runner(runner, num_blocks, 16, vocab_size=1000, sweep=sweep, clock=clock)


def test_the_sweep_checks_drafts_and_prices_a_draft_row():
    """Decode batches that check 4 drafts a sequence every step: the fit tells a draft's own cost (its
    sampled row) from a prefill token's."""
    truth = LinearStepTime(*TRUE.coefficients[:-1], c_draft_token=6e-5)
    result = profile_on_virtual_clock(truth)
    np.testing.assert_allclose(result.model.coefficients, truth.coefficients, rtol=1e-5)
    drafted = [r.shape for r in result.records if r.shape.draft_tokens]
    assert {(s.decode_seqs, s.draft_tokens) for s in drafted if not s.prefill_seqs} >= {(1, 4), (4, 16), (16, 64)}


def test_profile_recovers_a_linear_gpu():
    result = profile_on_virtual_clock(TRUE)
    np.testing.assert_allclose(result.model.coefficients, TRUE.coefficients, rtol=1e-5)
    assert result.quality.p90_rel_err < 1e-6
    shapes = [r.shape for r in result.records]
    # The sweep covered what the fit needs: lone and batched prefills, decode batches, mixed steps.
    assert {s.decode_seqs for s in shapes if not s.prefill_seqs} >= {1, 4, 16, 32}
    assert {s.prefill_seqs for s in shapes if not s.decode_seqs} >= {1, 4}
    assert any(s.prefill_seqs and s.decode_seqs for s in shapes)
    assert result.model.model == {"num_blocks": 2048, "block_size": 16}


def test_sweep_skips_points_that_do_not_fit():
    result = profile_on_virtual_clock(TRUE, num_blocks=200)  # 3200 tokens: no 32 x 512 batch
    assert max(r.shape.kv_tokens for r in result.records) <= 3200
    assert result.quality.p90_rel_err < 1e-6


def workload(n: int, rate: float, seed: int = 0) -> list[Arrival]:
    rng, t, out = random.Random(seed), 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        prompt = [i + 1] + [9] * (rng.randint(50, 800) - 1)
        out.append(Arrival(t, prompt, SamplingParams(max_tokens=rng.randint(10, 200))))
    return out


def test_fitted_profile_replays_per_request_latency():
    """Fidelity: profile a noisy, non-linear 'GPU' (a roofline, max of compute and memory), replay a
    workload on the fitted linear model, and compare per-request latency with the 'GPU' itself."""
    gpu = GPUSpec("toy", 8 << 30, 0.3e12, 30e12)
    shape = ModelShape("toy-1b", 16, 2048, 16, 4, 5632, 32000)
    truth = RooflineStepTime(shape, gpu, overhead_s=1e-3)
    fitted = profile_on_virtual_clock(NoisyStepTime(truth, 0.03)).model

    def latencies(step_time) -> list[float]:
        engine = make_sim_engine(step_time, num_blocks=2048, max_num_seqs=32, max_num_batched_tokens=1024)
        return [r.latency for r in simulate(engine, workload(150, 6.0))]

    real, replayed = latencies(NoisyStepTime(truth, 0.03, seed=1)), latencies(fitted)
    errors = [abs(a - b) / a for a, b in zip(replayed, real, strict=True)]
    assert statistics.median(errors) < 0.03
    assert statistics.fmean(replayed) == pytest.approx(statistics.fmean(real), rel=0.03)


def test_run_profile_writes_a_loadable_profile(tmp_path):
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 192, "num_attention_heads": 4,
              "num_hidden_layers": 2, "num_key_value_heads": 2, "vocab_size": 300}
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "config.json").write_text(json.dumps(config))
    out = tmp_path / "PROFILE.json"
    result = run_profile(tmp_path / "toy", out, sweep=SMALL_SWEEP, runner_factory=FakeTorchRunner)
    profile = json.loads(out.read_text())
    assert profile["kind"] == "linear"
    assert profile["model"]["name"] == "toy" and profile["model"]["num_layers"] == 2
    assert profile["model"]["num_blocks"] == SMALL_SWEEP.blocks_needed(16)
    assert profile["source"]["runner"] == "FakeTorchRunner"
    assert profile["fit"]["n_records"] == len(result.records) > 50
    loaded = load_profile(out)
    np.testing.assert_allclose(loaded.coefficients, TRUE.coefficients, rtol=1e-5)
    engine = make_sim_engine(out)  # KV size and vocabulary come from the profile
    assert engine.config.num_blocks == SMALL_SWEEP.blocks_needed(16) and engine.runner.vocab_size == 300


def test_run_profile_on_the_torch_runner(tmp_path):
    """End to end on the real runner with a tiny random model (CPU): the records are real wall times."""
    pytest.importorskip("engine.torch_runner")
    from engine.tiny_model import make_tiny_model

    model_dir = make_tiny_model(tmp_path / "tiny", layers=1, hidden=32, heads=2, kv_heads=1, vocab_size=384)
    sweep = ProfileSweep(prefill_lens=(16, 64), decode_batch_sizes=(1, 4), context_lens=(32,), decode_steps=2,
                         mixed_prefill_lens=(16,), repeats=2)
    result = run_profile(model_dir, tmp_path / "PROFILE.json", sweep=sweep, device="cpu")
    # CPU timings of a tiny model are noisy (other processes); only sanity is checked here.
    assert all(c >= 0 for c in result.model.coefficients)
    assert result.model.predict(StepShape(0, 0, 1, 40, 0)) > 0
    assert all(r.duration_s > 0 for r in result.records)
    profile = json.loads((tmp_path / "PROFILE.json").read_text())
    assert profile["model"]["vocab_size"] == 384 and profile["model"]["weight_bytes"] == 4  # fp32 on CPU
    assert profile["source"]["runner"] == "TorchModelRunner" and profile["fit"]["n_records"] > 10
