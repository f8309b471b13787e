"""A model whose sliding layers sit beside full-attention ones (Gemma 3: 52 of 62 layers slide over 1,024
tokens) keeps every block, but a step is priced on what each layer reads: the roofline's step equals weights
plus the full layers' KV at the context plus the sliding layers' at the window, the simulated engine's decode
steps are that much faster than the same shape without sliding layers, and Mistral (every layer slides),
Llama (none) and profiles written before price exactly as before."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pytest

from engine.batch import ScheduledBatch, StepShape
from engine.cli import roofline_command
from engine.config import EngineConfig
from engine.hybrid_attention import HybridAttention
from engine.llm_engine import LLMEngine
from engine.roofline import MODELS, ModelShape, RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.simulate import make_sim_engine
from engine.step_time import load_profile, model_from_json
from engine.tiny_model import make_tiny_model
from engine.torch_runner import TorchModelRunner

GEMMA = "gemma-3-27b"
WINDOW, LAYERS, FULL = 1024, 62, 10  # google/gemma-3-27b-it: every sixth layer reads the whole context


def _running(computed: int, new: int, request_id: str = "a") -> Sequence:
    """A sequence `computed` tokens in, with `new` more to compute this step."""
    seq = Sequence(request_id, list(range(computed + new)), SamplingParams(max_tokens=4), 0.0)
    seq.num_computed_tokens = computed
    return seq


def _shape(hybrid: HybridAttention | None, *steps: tuple[int, int]) -> StepShape:
    batch = ScheduledBatch(hybrid_attention=hybrid)
    for i, (computed, new) in enumerate(steps):
        batch.add(_running(computed, new, str(i)), new)
    return batch.shape


def _hand_decode_s(model: RooflineStepTime, context: int) -> float:
    """One sequence's decode step, memory-bound: the weights, each layer's KV read, the new token's written."""
    m = model.model
    bytes_per_s = model.gpu.hbm_bytes_per_s * model.memory_efficiency
    weights = (m.shared_layer_params + m.lm_head_params) * m.weight_bytes
    layer_kv = 2 * m.num_kv_heads * m.head_dim * m.kv_bytes  # one token's K and V in one layer
    kv_read = layer_kv * (FULL * context + (LAYERS - FULL) * min(context, WINDOW))
    return model.overhead_s + (weights + kv_read + LAYERS * layer_kv) / bytes_per_s


def test_gemma_3_knows_its_sliding_layers() -> None:
    shape = MODELS[GEMMA]
    assert (shape.sliding_window, shape.num_full_layers, shape.num_layers) == (WINDOW, FULL, LAYERS)
    assert shape.hybrid_attention == HybridAttention(WINDOW, 52 / 62)
    # Every layer sliding (Mistral) or none (Llama, Phi): no hybrid pricing, Mistral's window as before.
    assert MODELS["mistral-7b-v0.1"].hybrid_attention is None and MODELS["mistral-7b-v0.1"].sliding_window == 4096
    assert all(MODELS[name].hybrid_attention is None for name in ("llama-3.1-8b", "phi-4-mini", "mixtral-8x7b"))


@pytest.mark.parametrize("context", [300, WINDOW, 4096, 32768])
def test_the_roofline_prices_each_layers_reads(context: int) -> None:
    model = RooflineStepTime.builtin(GEMMA)
    shape = _shape(MODELS[GEMMA].hybrid_attention, (context - 1, 1))
    compute_s, memory_s = model.breakdown(shape)
    assert memory_s > compute_s
    assert model.predict(shape) == pytest.approx(_hand_decode_s(model, context), rel=1e-12)


def test_a_prefill_chunk_attends_as_each_layer_does() -> None:
    hybrid = MODELS[GEMMA].hybrid_attention
    chunk, computed = 512, 3000  # a chunk's sliding layers read the window and the chunk's own keys
    shape = _shape(hybrid, (computed, chunk))
    context, sliding = computed + chunk, WINDOW + chunk - 1
    assert shape.prefill_attention == pytest.approx(chunk * (FULL * context + 52 * sliding) / LAYERS, rel=1e-12)
    assert shape.kv_tokens == pytest.approx((FULL * context + 52 * sliding) / LAYERS, rel=1e-12)
    assert _shape(hybrid, (100, 200)) == StepShape(200, 1, 0, 300, 200 * 300)  # within the window: all of it


def test_long_contexts_cost_less_by_the_sliding_layers_share() -> None:
    model = RooflineStepTime.builtin(GEMMA)
    for context, batch in ((4096, 1), (4096, 32), (32768, 1), (32768, 32)):
        before = model.predict(StepShape(0, 0, batch, batch * context, 0))  # every layer read it all
        after = model.predict(_shape(MODELS[GEMMA].hybrid_attention, *[(context - 1, 1)] * batch))
        read = (FULL * context + 52 * WINDOW) / LAYERS  # 6,144 of 32,768 tokens: 5.3x fewer
        assert before - after == pytest.approx(model._s_per_kv_token * batch * (context - read), rel=1e-9)
    at_32k = _shape(MODELS[GEMMA].hybrid_attention, (32767, 1))
    assert 32768 / at_32k.kv_tokens == pytest.approx(5.33, abs=0.01)


# The engine's simulated time for a 9,000-token and a 597-token request decoding 40 tokens each, recorded
# before hybrid pricing existed: Mistral's and Llama's must not move.
RECORDED_SIM_S = {"llama-3.1-8b": 0.5632621503760323, "mistral-7b-v0.1": 0.5305337707501738}


def _simulated_s(model: RooflineStepTime, **config: object) -> float:
    engine = make_sim_engine(model, max_model_len=65536, **config)
    for request_id, prompt in (("a", list(range(1, 9001))), ("b", list(range(3, 600)))):
        engine.add_request(request_id, prompt, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    return engine.clock.now()


@pytest.mark.parametrize("name", RECORDED_SIM_S)
def test_mistral_and_llama_simulate_as_before(name: str) -> None:
    engine = make_sim_engine(RooflineStepTime.builtin(name), max_model_len=65536)
    assert engine.config.hybrid_attention is None and engine.runner.hybrid_attention is None
    assert _simulated_s(RooflineStepTime.builtin(name)) == pytest.approx(RECORDED_SIM_S[name], rel=1e-12)


def _decode_s(model: RooflineStepTime, prompt: int, tokens: int, record_steps: bool) -> tuple[float, LLMEngine]:
    """Simulated seconds one request of `prompt` tokens spends decoding `tokens` tokens after its first."""
    engine = make_sim_engine(model, max_model_len=65536, record_steps=record_steps)
    seq = engine.add_request("long", list(range(1, prompt + 1)),
                             SamplingParams(temperature=0, max_tokens=tokens + 1, ignore_eos=True))
    while not seq.output_token_ids:
        engine.step()
    start = engine.clock.now()
    while engine.has_unfinished():
        engine.step()
    return engine.clock.now() - start, engine


@pytest.mark.parametrize("record_steps", [True, False])  # step by step, and fused decode steps
def test_a_simulated_long_context_decodes_faster_by_the_rooflines_factor(record_steps: bool) -> None:
    hybrid = RooflineStepTime.builtin(GEMMA)
    no_sliding = replace(hybrid, model=replace(hybrid.model, sliding_window=0, num_full_layers=0))
    prompt, tokens = 30000, 24
    fast, engine = _decode_s(hybrid, prompt, tokens, record_steps)
    slow, _ = _decode_s(no_sliding, prompt, tokens, record_steps)
    assert engine.config.hybrid_attention == MODELS[GEMMA].hybrid_attention
    assert engine.config.attention_window is None  # the full layers need every block: none released
    contexts = range(prompt + 1, prompt + 1 + tokens)
    assert fast == pytest.approx(sum(_hand_decode_s(hybrid, c) for c in contexts), rel=1e-9)
    assert slow == pytest.approx(sum(no_sliding.predict(StepShape(0, 0, 1, c, 0)) for c in contexts), rel=1e-9)
    assert slow / fast == pytest.approx(hybrid.predict(StepShape(0, 0, 1, prompt + 12, 0))
                                        / _hand_decode_s(hybrid, prompt + 12), rel=1e-3)
    if record_steps:
        assert engine.step_log is not None and engine.step_log[-1].shape.kv_tokens < prompt / 5


def test_roofline_profiles_keep_their_layers_and_old_ones_load_as_before(tmp_path: Path) -> None:
    args = argparse.Namespace(builtin=GEMMA, gpu="H100-SXM", tensor_parallel=1, quantization=None,
                              kv_cache_dtype="auto", out=tmp_path / "gemma.json", model=None)
    assert roofline_command(args) == 0
    loaded = load_profile(tmp_path / "gemma.json")
    assert isinstance(loaded, RooflineStepTime) and loaded.model.hybrid_attention == MODELS[GEMMA].hybrid_attention
    assert make_sim_engine(loaded, max_model_len=65536).config.hybrid_attention == loaded.model.hybrid_attention
    # A profile written before: no num_full_layers; Gemma 3's had no window, Mistral's slid in every layer.
    for name, window in ((GEMMA, 0), ("mistral-7b-v0.1", 4096)):
        old = RooflineStepTime.builtin(name).to_json()
        old["model"] = {k: v for k, v in old["model"].items() if k != "num_full_layers"} | {"sliding_window": window}
        model = model_from_json(old)
        assert model.model.hybrid_attention is None and model.model.sliding_window == window
        engine = make_sim_engine(model, max_model_len=65536)
        assert engine.config.hybrid_attention is None and engine.config.attention_window == (window or None)


def test_a_from_hf_config_shape_counts_the_layers_that_slide() -> None:
    text = {"model_type": "gemma3_text", "num_hidden_layers": 12, "hidden_size": 256, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 512, "vocab_size": 1000,
            "sliding_window": 512}
    assert ModelShape.from_hf_config(text).hybrid_attention == HybridAttention(512, 10 / 12)
    listed = {**text, "model_type": "qwen3", "use_sliding_window": True,
              "layer_types": ["sliding_attention"] * 9 + ["full_attention"] * 3}
    assert ModelShape.from_hf_config(listed).num_full_layers == 3
    mistral = {**text, "model_type": "mistral"}
    assert ModelShape.from_hf_config(mistral).hybrid_attention is None
    assert ModelShape.from_hf_config(mistral).sliding_window == 512


def test_the_torch_runner_prices_a_tiny_gemma_3s_steps_per_layer(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "gemma3", layers=2, hidden=64, family="gemma3")  # layer 0 slides over 16
    runner = TorchModelRunner(model_dir, num_blocks=16, block_size=8, device="cpu")
    assert runner.hybrid_attention == HybridAttention(16, 0.5) and runner.attention_window is None
    engine = LLMEngine(EngineConfig(block_size=8, num_blocks=16, max_model_len=128), runner, record_steps=True)
    assert engine.config.hybrid_attention == HybridAttention(16, 0.5)
    engine.add_request("a", list(range(1, 41)), SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    assert engine.step_log is not None
    # The last decode reads 42 keys in its full layer and 16 in its sliding one.
    assert engine.step_log[-1].shape.kv_tokens == (42 + 16) / 2
