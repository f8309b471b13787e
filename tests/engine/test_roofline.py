from __future__ import annotations

import pytest

from engine.batch import StepShape
from engine.roofline import GPUS, MODELS, ModelShape, RooflineStepTime, kv_capacity_blocks

LLAMA_31_8B_CONFIG = {  # the fields of meta-llama/Llama-3.1-8B-Instruct's config.json that matter
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}


def decode(batch: int, context: int) -> StepShape:
    return StepShape(0, 0, batch, batch * context, 0)


def prefill(tokens: int) -> StepShape:
    return StepShape(tokens, 1, 0, tokens, tokens * tokens)


def test_model_shapes():
    assert MODELS["llama-3.1-8b"].num_params == pytest.approx(8.03e9, rel=0.01)
    assert MODELS["llama-3.1-70b"].num_params == pytest.approx(70.6e9, rel=0.01)
    assert MODELS["llama-3.1-8b"].kv_bytes_per_token == 128 * 1024  # 2 x 32 layers x 8 heads x 128 x 2 B
    from_hf = ModelShape.from_hf_config(LLAMA_31_8B_CONFIG, name="llama-3.1-8b")
    assert from_hf == MODELS["llama-3.1-8b"]


def test_8b_decode_batch_one_on_h100_streams_the_weights():
    model = RooflineStepTime.builtin("llama-3.1-8b", "H100-SXM")
    t = model.predict(decode(1, 1000))
    # ~16 GB of bf16 weights at 3.35 TB/s x ~0.75: 6-7 ms a token, as vLLM measures on an H100.
    assert 5.5e-3 < t < 7.5e-3
    compute, memory = model.breakdown(decode(1, 1000))
    assert memory > 10 * compute  # memory-bound


def test_bigger_model_and_slower_gpu_take_longer():
    h100_8b = RooflineStepTime.builtin("llama-3.1-8b", "H100-SXM")
    shape = decode(8, 2000)
    assert RooflineStepTime.builtin("llama-3.1-70b", "H100-SXM").predict(shape) > 7 * h100_8b.predict(shape)
    assert RooflineStepTime.builtin("llama-3.1-8b", "A100-80G").predict(shape) > h100_8b.predict(shape)
    assert RooflineStepTime.builtin("llama-3.1-8b", "H200").predict(shape) < h100_8b.predict(shape)
    # Tensor parallelism splits the work; fp8 weights halve the weight traffic.
    tp4 = RooflineStepTime.builtin("llama-3.1-70b", "H100-SXM", tensor_parallel=4)
    tp1 = RooflineStepTime.builtin("llama-3.1-70b", "H100-SXM")
    assert tp4.predict(shape) == pytest.approx((tp1.predict(shape) - tp1.overhead_s) / 4 + tp4.overhead_s)
    fp8 = RooflineStepTime.builtin("llama-3.1-70b", "H200", quantization="fp8")
    bf16 = RooflineStepTime.builtin("llama-3.1-70b", "H200")
    assert fp8.predict(decode(1, 100)) < 0.6 * bf16.predict(decode(1, 100))


def test_decode_batching_is_nearly_free_until_compute_bound():
    model = RooflineStepTime.builtin()
    assert model.predict(decode(32, 500)) < 1.5 * model.predict(decode(1, 500))
    # Long contexts make decode pay for reading the KV cache.
    assert model.predict(decode(64, 8000)) > 2 * model.predict(decode(64, 100))


def test_large_prefill_is_compute_bound():
    model = RooflineStepTime.builtin()
    compute, memory = model.breakdown(prefill(4096))
    assert compute > 3 * memory
    # ~2 x 8e9 x 4096 = 66 TFLOP at ~55% of 989 TFLOP/s: ~0.12 s, some 35k prefill tokens/s.
    assert 0.08 < model.predict(prefill(4096)) < 0.16
    # Attention grows quadratically: an 8k prefill costs more than twice a 4k one.
    assert model.predict(prefill(8192)) > 2 * model.predict(prefill(4096))


def test_kv_capacity():
    model = MODELS["llama-3.1-8b"]
    blocks = kv_capacity_blocks(model, GPUS["H100-SXM"], block_size=16)
    # vLLM reports roughly 450k tokens of KV for Llama-3.1-8B bf16 on one H100 at 0.9 utilisation.
    assert 400_000 < blocks * 16 < 500_000
    assert RooflineStepTime.builtin(gpu="H200").kv_capacity_blocks() > 1.9 * blocks
    assert kv_capacity_blocks(model, GPUS["H100-SXM"], block_size=32) == pytest.approx(blocks / 2, abs=1)
    with pytest.raises(ValueError, match="tensor_parallel"):
        kv_capacity_blocks(MODELS["llama-3.1-70b"], GPUS["H100-SXM"])
    tp2 = RooflineStepTime.builtin("llama-3.1-70b", "H100-SXM", tensor_parallel=2).kv_capacity_blocks()
    tp4 = RooflineStepTime.builtin("llama-3.1-70b", "H100-SXM", tensor_parallel=4).kv_capacity_blocks()
    assert 0 < tp2 < tp4
    assert RooflineStepTime.builtin("llama-3.1-70b", "H200", quantization="fp8").kv_capacity_blocks() > 0


def test_moe_shapes_count_total_and_active_parameters():
    """Qwen publishes Qwen3-30B-A3B as 30.5B parameters with 3.3B activated; Mistral, Mixtral 8x7B as
    46.7B with 12.9B active per token. The HF config gives the same shape as the built-in one."""
    from tests.engine.hf_checkpoints import MIXTRAL_8X7B, QWEN3_30B_A3B

    qwen, mixtral = MODELS["qwen3-30b-a3b"], MODELS["mixtral-8x7b"]
    assert qwen.num_params == pytest.approx(30.5e9, rel=0.01)
    assert qwen.active_layer_params + 2 * qwen.lm_head_params == pytest.approx(3.3e9, rel=0.03)
    assert mixtral.num_params == pytest.approx(46.7e9, rel=0.01)
    assert mixtral.active_layer_params + 2 * mixtral.lm_head_params == pytest.approx(12.9e9, rel=0.01)
    assert ModelShape.from_hf_config(QWEN3_30B_A3B, name="qwen3-30b-a3b") == qwen
    assert ModelShape.from_hf_config(MIXTRAL_8X7B, name="mixtral-8x7b") == mixtral
    assert qwen.experts_read(1) == pytest.approx(8) and qwen.experts_read(4096) == pytest.approx(128)


def test_moe_decode_reads_more_experts_as_the_batch_grows():
    """A dense model's decode step streams all its weights at any batch; a MoE model's streams the
    experts its tokens chose, so batch 1 is cheap and time climbs until every expert is read."""
    moe = RooflineStepTime.builtin("qwen3-30b-a3b", "H100-SXM")
    dense = RooflineStepTime.builtin("llama-3.1-8b", "H100-SXM")
    # Batch 1 reads ~3.3B parameters: faster than the 8B dense model.
    assert moe.predict(decode(1, 100)) < 0.6 * dense.predict(decode(1, 100))
    # Batch 64 reads nearly all 128 experts (30.5B): slower than the dense model at the same batch.
    assert moe.predict(decode(64, 100)) > 2.5 * moe.predict(decode(1, 100))
    assert moe.predict(decode(64, 100)) > dense.predict(decode(64, 100))
    assert moe.predict(decode(256, 100)) == pytest.approx(moe.predict(decode(512, 100)), rel=0.05)
    restored = RooflineStepTime.from_json(moe.to_json())
    assert restored.predict(decode(16, 500)) == moe.predict(decode(16, 500))
