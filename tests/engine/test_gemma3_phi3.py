"""Gemma 3 (text) and Phi-3 (Phi-3.5, Phi-4-mini): checkpoints that transformers saved generate token for
token what transformers generates (Gemma 3's sliding and full layers with their two RoPEs, Phi-3's fused
tensors, partial rotary and LongRoPE on both sides of its original context), real Hub configs parse to
transformers' parameter counts and RoPE frequencies, and configs the engine would serve wrongly are refused."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model.config import ModelConfig
from engine.model.families import UnsupportedConfig
from engine.model.loader import split_fused
from engine.model.rope import attention_scaling, inverse_frequencies
from engine.roofline import MODELS, ModelShape
from engine.sampling_params import SamplingParams
from engine.torch_runner import TorchModelRunner
from tests.engine.hf_checkpoints import VOCAB, hf_model, runner_greedy, save_hf_model, transformers_greedy

KINDS = ["gemma3", "gemma3_softcap", "phi3", "phi3_sliding", "phi3_longrope"]
# Real Hub config.json files (the fields that matter; Gemma's is google/gemma-3-27b-it's text_config, which
# leaves the rest to transformers' defaults).
GEMMA3_27B = {
    "model_type": "gemma3_text", "hidden_size": 5376, "intermediate_size": 21504, "num_hidden_layers": 62,
    "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128, "query_pre_attn_scalar": 168,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024, "vocab_size": 262208,
}  # fmt: skip
PHI35_LONG = [1.0800000429153442, 1.1100000143051147, 1.1399999856948853, 1.340000033378601, 1.5899999141693115,
              1.600000023841858, 1.6200000047683716, 2.620000123977661, 3.2300000190734863, 3.2300000190734863,
              4.789999961853027, 7.400000095367432, 7.700000286102295, 9.09000015258789, 12.199999809265137,
              17.670000076293945, 24.46000099182129, 28.57000160217285, 30.420001983642578, 30.840002059936523,
              32.590003967285156, 32.93000411987305, 42.320003509521484, 44.96000289916992, 50.340003967285156,
              50.45000457763672, 57.55000305175781, 57.93000411987305, 58.21000289916992, 60.1400032043457,
              62.61000442504883, 62.62000274658203, 62.71000289916992, 63.1400032043457, 63.1400032043457,
              63.77000427246094, 63.93000411987305, 63.96000289916992, 63.970001220703125, 64.02999877929688,
              64.06999969482422, 64.08000183105469, 64.12000274658203, 64.41000366210938, 64.4800033569336,
              64.51000213623047, 64.52999877929688, 64.83999633789062]  # fmt: skip
PHI35_SHORT = [1.0, 1.0199999809265137, 1.0299999713897705, 1.0299999713897705, 1.0499999523162842,
               1.0499999523162842, 1.0499999523162842, 1.0499999523162842, 1.0499999523162842, 1.0699999332427979,
               1.0999999046325684, 1.1099998950958252, 1.1599998474121094, 1.1599998474121094, 1.1699998378753662,
               1.2899998426437378, 1.339999794960022, 1.679999828338623, 1.7899998426437378, 1.8199998140335083,
               1.8499997854232788, 1.8799997568130493, 1.9099997282028198, 1.9399996995925903, 1.9899996519088745,
               2.0199997425079346, 2.0199997425079346, 2.0199997425079346, 2.0199997425079346, 2.0199997425079346,
               2.0199997425079346, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914,
               2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914,
               2.0799996852874756, 2.0899996757507324, 2.189999580383301, 2.2199995517730713, 2.5899994373321533,
               2.729999542236328, 2.749999523162842, 2.8399994373321533]  # fmt: skip
PHI35_MINI = {
    "model_type": "phi3", "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
    "max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
    "rope_scaling": {"long_factor": PHI35_LONG, "short_factor": PHI35_SHORT, "type": "longrope"},
    "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": False, "attention_bias": False,
    "bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000, "torch_dtype": "bfloat16",
}  # fmt: skip
PHI4_MINI_LONG = [1, 1.118320672, 1.250641126, 1.398617824, 1.564103225, 1.74916897, 1.956131817, 2.187582649,
                  2.446418898, 2.735880826, 3.059592084, 3.421605075, 3.826451687, 4.279200023, 4.785517845,
                  5.351743533, 5.984965424, 6.693110555, 7.485043894, 8.370679318, 9.36110372, 10.4687158,
                  11.70738129, 13.09260651, 14.64173252, 16.37415215, 18.31155283, 20.47818807, 22.90118105,
                  25.61086418, 28.64115884, 32.03, 32.1, 32.13, 32.23, 32.6, 32.61, 32.64, 32.66, 32.7, 32.71,
                  32.93, 32.97, 33.28, 33.49, 33.5, 44.16, 47.77]  # fmt: skip
PHI4_MINI = {
    "model_type": "phi3", "vocab_size": 200064, "hidden_size": 3072, "intermediate_size": 8192,
    "num_hidden_layers": 32, "num_attention_heads": 24, "num_key_value_heads": 8, "hidden_act": "silu",
    "max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "partial_rotary_factor": 0.75,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": True,
    "rope_scaling": {"long_factor": PHI4_MINI_LONG, "short_factor": [1.0] * 48, "type": "longrope"},
    "bos_token_id": 199999, "eos_token_id": 199999, "pad_token_id": 199999, "torch_dtype": "bfloat16",
}  # fmt: skip


def varied_prompt(length: int, seed: int = 3) -> list[int]:
    """Not token 0: transformers' `generate` takes it for padding (pad_token_id=0) and masks it out."""
    rng = random.Random(seed)
    return [rng.randrange(1, VOCAB) for _ in range(length)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gemma3_phi3")
    return {kind: save_hf_model(kind, root / kind) for kind in KINDS}


@pytest.mark.parametrize(("kind", "length"), [
    ("gemma3", 40),  # past layer 0's 8-token window
    ("phi3", 40),
    ("phi3_sliding", 40),  # every layer slides over 8 tokens: blocks that slid out are released
    ("phi3_longrope", 40),  # past the original 16 positions: the long factors throughout
    ("phi3_longrope", 9),  # 9 + 6 new tokens stay within them: the short factors
])  # fmt: skip
def test_checkpoints_saved_by_transformers_generate_identically(checkpoints: dict[str, Path], kind: str,
                                                                length: int) -> None:
    prompt, new = varied_prompt(length), 12 if length > 16 else 6
    expected = transformers_greedy(checkpoints[kind], prompt, new)
    assert len(set(expected)) > 3
    runner = TorchModelRunner(checkpoints[kind], num_blocks=32, block_size=8, device="cpu")
    assert runner.config.num_params() == sum(p.numel() for p in hf_model(kind).parameters())
    assert runner_greedy(runner, prompt, new) == expected
    config = runner.config
    if kind == "gemma3":
        assert (config.sliding_layers, config.sliding_window, config.local_rope_theta) == ((0,), 8, 100.0)
        assert config.rope_scaling == {"rope_type": "linear", "factor": 8.0} and config.attention_scale == 24**-0.5
    if kind == "phi3_sliding":
        assert runner.attention_window == 8 and config.sliding_layers == (0, 1)
    if kind == "phi3_longrope":
        assert config.rotary_dim == 6 and config.rope_scaling is not None
        assert attention_scaling(config) == pytest.approx(math.sqrt(2))  # 1 + ln(256 / 16) / ln(16)


def test_a_multimodal_gemma3_folder_serves_its_language_model(tmp_path: Path) -> None:
    """Gemma3ForConditionalGeneration (the 4B-27B releases): its `text_config` and `language_model` tensors,
    the vision tower's skipped; text generates as transformers' multimodal model does, and an int8 checkpoint of
    it quantizes the language model's projections and scores as int8 at load."""
    from engine.quantize_checkpoint import quantize_checkpoint

    model_dir = save_hf_model("gemma3_multimodal", tmp_path / "multimodal")
    prompt = [1 + token % 296 for token in varied_prompt(40, seed=5)]  # 297-299 begin, end and stand for images
    expected = transformers_greedy(model_dir, prompt, 10)
    runner = TorchModelRunner(model_dir, num_blocks=32, block_size=8, device="cpu")
    language_model = hf_model("gemma3_multimodal").model.language_model
    assert runner.config.num_params() == sum(p.numel() for p in language_model.parameters())
    assert len(set(expected)) > 3 and runner_greedy(runner, prompt, 10) == expected
    assert ModelShape.from_hf_config(json.loads((model_dir / "config.json").read_text())).num_layers == 2
    int8 = quantize_checkpoint(model_dir, tmp_path / "int8", "int8")
    quantized = TorchModelRunner(int8, num_blocks=32, block_size=8, device="cpu")
    at_load = TorchModelRunner(model_dir, num_blocks=32, block_size=8, device="cpu", quantization="int8")
    assert runner_greedy(quantized, prompt, 10) == runner_greedy(at_load, prompt, 10)
    assert quantized.model.model.layers[1].mlp.gate_up_proj.weight.dtype == torch.int8


def test_final_logit_softcapping_gives_transformers_log_probabilities(checkpoints: dict[str, Path]) -> None:
    """Softcapped logits (tanh(x / 2) x 2) keep greedy's choice, so the prompt's log-probabilities tell."""
    from transformers import AutoModelForCausalLM

    model_dir, prompt = checkpoints["gemma3_softcap"], varied_prompt(20)
    engine = LLMEngine(EngineConfig(num_blocks=32, block_size=8, max_model_len=256),
                       TorchModelRunner(model_dir, num_blocks=32, block_size=8, device="cpu"))
    seq = engine.add_request("scored", prompt, SamplingParams(max_tokens=1, prompt_logprobs=0))
    while engine.has_unfinished():
        engine.step()
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = reference(torch.tensor([prompt])).logits[0, :-1].log_softmax(-1)
    expected = logits.gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]
    assert engine.runner.config.final_logit_softcapping == 2.0 and logits.exp().max() < 0.5  # capped: no peaks
    got = torch.tensor([lp.logprob for lp in seq.prompt_logprobs if lp is not None][-len(expected):])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_a_long_longrope_prompts_blocks_are_not_a_short_ones(checkpoints: dict[str, Path]) -> None:
    """K/V of a prompt past the original context are turned by the long factors: a short prompt sharing its
    first blocks must not reuse them (and answers as transformers does), while the same long prompt does."""
    model_dir = checkpoints["phi3_longrope"]
    engine = LLMEngine(EngineConfig(num_blocks=32, block_size=8, max_model_len=256),
                       TorchModelRunner(model_dir, num_blocks=32, block_size=8, device="cpu"))
    long, short = varied_prompt(40), varied_prompt(40)[:12]

    def answer(request_id: str, prompt: list[int]) -> tuple[list[int], int]:
        seq = engine.add_request(request_id, prompt, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
        while engine.has_unfinished():
            engine.step()
        return seq.output_token_ids, seq.num_cached_tokens

    first, _ = answer("long", long)
    assert answer("long again", long) == (first, 32)  # four whole blocks of 8 from the cache
    tokens, cached = answer("short", short)
    assert cached == 0 and tokens == transformers_greedy(model_dir, short, 4)


@pytest.mark.parametrize(("raw", "cls", "builtin"), [(GEMMA3_27B, "Gemma3ForCausalLM", "gemma-3-27b"),
                                                     (PHI35_MINI, "Phi3ForCausalLM", "phi-3.5-mini"),
                                                     (PHI4_MINI, "Phi3ForCausalLM", "phi-4-mini")])  # fmt: skip
def test_hub_configs_count_transformers_parameters(raw: dict, cls: str, builtin: str) -> None:
    """The engine's count is transformers'; the roofline's built-in (and a folder's config read by it) has
    its matmul weights, every 2-D parameter."""
    import transformers

    config = ModelConfig.from_dict(raw)
    hf_config = transformers.AutoConfig.for_model(**raw)
    with torch.device("meta"):
        reference = getattr(transformers, cls)(hf_config)
    assert config.num_params() == sum(p.numel() for p in reference.parameters())
    matmul = sum(p.numel() for p in reference.parameters() if p.dim() == 2)
    assert MODELS[builtin].num_params == ModelShape.from_hf_config(raw, builtin).num_params == matmul
    if raw is GEMMA3_27B:  # every sixth layer full, the rest sliding on base 10,000
        assert config.sliding_layers == tuple(i for i in range(62) if (i + 1) % 6)
        assert [t == "sliding_attention" for t in hf_config.layer_types] == [i in config.sliding_layers for i in range(62)]
        assert (config.local_rope_theta, config.rope_theta, config.tie_word_embeddings) == (10000.0, 1e6, True)
        assert config.embed_scale == 5376**0.5 and config.hidden_act == "gelu_pytorch_tanh"
    if raw is PHI4_MINI:  # 3.8B as Microsoft publishes; 96 of 128 dims turned; no window (262,144 > context)
        assert config.num_params() == 3_836_021_760 and config.rotary_dim == 96 and config.sliding_layers == ()


@pytest.mark.parametrize("raw", [PHI35_MINI, PHI4_MINI, GEMMA3_27B])
def test_rope_frequencies_match_transformers(raw: dict) -> None:
    """LongRoPE's short and long sets and its attention factor; Gemma 3's two RoPEs, one per layer type."""
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_config = transformers.AutoConfig.for_model(**raw)
    config = ModelConfig.from_dict(raw)
    if raw["model_type"] == "phi3":
        short, factor = ROPE_INIT_FUNCTIONS["longrope"](hf_config)
        long, _ = ROPE_INIT_FUNCTIONS["longrope"](hf_config, seq_len=4097)
        assert torch.equal(inverse_frequencies(config), short) and torch.equal(inverse_frequencies(config, long=True), long)
        assert attention_scaling(config) == pytest.approx(factor, rel=1e-12)
        assert factor == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))
        return
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

    hf = Gemma3RotaryEmbedding(hf_config)
    local = replace(config, rope_theta=config.local_rope_theta, rope_scaling=None)
    assert torch.equal(inverse_frequencies(config), hf.full_attention_inv_freq)
    assert torch.equal(inverse_frequencies(local), hf.sliding_attention_inv_freq)


@pytest.mark.parametrize(("change", "message"), [
    ({"use_bidirectional_attention": True}, "attends causally"),
    ({"hidden_activation": "gelu"}, "unsupported hidden activation"),
    ({"rope_parameters": {"sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                          "full_attention": {"rope_type": "default", "rope_theta": 1e6}}}, "plain RoPE"),
])  # fmt: skip
def test_gemma3_configs_served_wrongly_are_refused(change: dict, message: str) -> None:
    with pytest.raises(UnsupportedConfig, match=message):
        ModelConfig.from_dict({**GEMMA3_27B, **change})


def test_phi3_configs_and_tensors_that_cannot_be_split_are_refused() -> None:
    with pytest.raises(UnsupportedConfig, match="short_factor must hold 48"):
        ModelConfig.from_dict({**PHI4_MINI, "rope_scaling": {**PHI4_MINI["rope_scaling"], "short_factor": [1.0] * 64}})
    config = ModelConfig.from_dict({**PHI4_MINI, "num_hidden_layers": 1})
    qweight = torch.zeros(3072 // 8, 5120, dtype=torch.int32)  # GPTQ's packing: [in / 8, out]
    with pytest.raises(ValueError, match="4-bit fused projections are not supported"):
        split_fused("model.layers.0.self_attn.qkv_proj.qweight", qweight, config)
    parts = split_fused("model.layers.0.mlp.gate_up_proj.weight", torch.arange(16384.0)[:, None], config)
    assert [(name, t[0, 0].item()) for name, t in parts] == [
        ("model.layers.0.mlp.gate_proj.weight", 0.0), ("model.layers.0.mlp.up_proj.weight", 8192.0)]
    scale = torch.tensor(0.5)  # one static scale for the fused tensor is each part's
    assert [t for _, t in split_fused("model.layers.0.self_attn.qkv_proj.input_scale", scale, config)] == [scale] * 3
