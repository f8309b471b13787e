"""Gemma 2, GLM-4 (glm4), GLM-4.5 (glm4_moe), OLMo 2, SmolLM3 and Cohere2: checkpoints transformers saved generate token for token what
transformers generates (chunked prefill then decode, a batch, a prefix-cache hit), Gemma 2's soft-capped attention
and logits and Cohere2's scaled logits score a prompt as transformers does, real Hub configs count transformers' parameters (the roofline's
shape included), GLM-4.5's multi-token-prediction layer is skipped at load, and what the engine would serve wrongly
is refused."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model.config import ModelConfig
from engine.model.families import UnsupportedConfig
from engine.model.llama import Attention
from engine.model.parallel import TPGroup
from engine.roofline import ModelShape
from engine.sampling_params import SamplingParams
from engine.torch_runner import TorchModelRunner
from tests.engine.added_family_checkpoints import ADDED_KINDS, added_family_model, save_added_family
from tests.engine.hf_checkpoints import VOCAB, runner_batched_greedy, runner_greedy, transformers_greedy

# Real Hub config.json files (the fields that matter).
GEMMA2_9B = {
    "model_type": "gemma2", "vocab_size": 256000, "hidden_size": 3584, "intermediate_size": 14336,
    "num_hidden_layers": 42, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256,
    "sliding_window": 4096, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "torch_dtype": "float32",
    "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "attention_bias": False,
}  # fmt: skip
GLM45_AIR = {
    "model_type": "glm4_moe", "vocab_size": 151552, "hidden_size": 4096, "intermediate_size": 10944,
    "num_hidden_layers": 46, "num_attention_heads": 96, "num_key_value_heads": 8, "head_dim": 128,
    "partial_rotary_factor": 0.5, "attention_bias": True, "use_qk_norm": False, "moe_intermediate_size": 1408,
    "n_routed_experts": 128, "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 1,
    "n_group": 1, "topk_group": 1, "norm_topk_prob": True, "routed_scaling_factor": 1.0,
    "num_nextn_predict_layers": 1, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
    "rope_theta": 1000000, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "hidden_act": "silu",
    "eos_token_id": [151329, 151336, 151338], "pad_token_id": 151329,
}  # fmt: skip
# GLM-4.5 (355B): qk norms, 160 experts of 1,536 scaled by 2.5, three dense layers.
GLM45 = {**GLM45_AIR, "hidden_size": 5120, "intermediate_size": 12288, "num_hidden_layers": 92,
         "use_qk_norm": True, "moe_intermediate_size": 1536, "n_routed_experts": 160, "first_k_dense_replace": 3,
         "routed_scaling_factor": 2.5}  # fmt: skip
OLMO2_7B = {
    "model_type": "olmo2", "vocab_size": 100352, "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-06, "rope_theta": 500000, "attention_bias": False,
    "tie_word_embeddings": False, "eos_token_id": 100257, "pad_token_id": 100277, "torch_dtype": "float32",
}  # fmt: skip
GLM4_9B = {
    "model_type": "glm4", "vocab_size": 151552, "hidden_size": 4096, "intermediate_size": 13696,
    "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128,
    "partial_rotary_factor": 0.5, "attention_bias": True, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "hidden_act": "silu",
    "eos_token_id": [151329, 151336, 151338], "pad_token_id": 151329,
}  # fmt: skip
SMOLLM3_3B = {
    "model_type": "smollm3", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 11008,
    "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 4, "hidden_act": "silu",
    "max_position_embeddings": 65536, "rms_norm_eps": 1e-06, "rope_theta": 5000000.0, "use_sliding_window": False,
    "sliding_window": None, "no_rope_layer_interval": 4, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "bos_token_id": 128000, "eos_token_id": 128012, "pad_token_id": 128004,
}  # fmt: skip
COMMAND_R7B = {
    "model_type": "cohere2", "vocab_size": 256000, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
    "logit_scale": 0.25, "layer_norm_eps": 1e-05, "max_position_embeddings": 8192, "rope_theta": 50000,
    "sliding_window": 4096, "sliding_window_pattern": 4, "attention_bias": False, "use_qk_norm": False,
    "bos_token_id": 5, "eos_token_id": 255001, "pad_token_id": 0, "torch_dtype": "bfloat16",
}  # fmt: skip
HUB_CLASSES = {"cohere2": "Cohere2ForCausalLM", "smollm3": "SmolLM3ForCausalLM", "gemma2": "Gemma2ForCausalLM", "glm4": "Glm4ForCausalLM", "glm4_moe": "Glm4MoeForCausalLM", "olmo2": "Olmo2ForCausalLM"}


def varied_prompt(length: int, seed: int = 3) -> list[int]:
    """Not token 0: transformers' `generate` takes it for padding (pad_token_id=0) and masks it out."""
    rng = random.Random(seed)
    return [rng.randrange(1, VOCAB) for _ in range(length)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("added_families")
    return {kind: save_added_family(kind, root / kind) for kind in ADDED_KINDS}


def _runner(model_dir: Path) -> TorchModelRunner:
    return TorchModelRunner(model_dir, num_blocks=40, block_size=8, device="cpu")


@pytest.mark.parametrize("kind", ADDED_KINDS)
def test_checkpoints_saved_by_transformers_generate_identically(checkpoints: dict[str, Path], kind: str) -> None:
    """A 40-token prompt prefilled 16 tokens a step (past Gemma 2's 8-token window), then 12 tokens decoded."""
    prompt = varied_prompt(40)
    expected = transformers_greedy(checkpoints[kind], prompt, 12)
    assert len(set(expected)) > 3
    runner = _runner(checkpoints[kind])
    assert runner.config.num_params() == sum(p.numel() for p in added_family_model(kind).parameters())
    assert runner_greedy(runner, prompt, 12) == expected
    config = runner.config
    if kind.startswith("gemma2"):  # every second layer slides, in KV groups of their own
        assert (config.sliding_layers, config.sliding_window, config.attention_scale) == ((0, 2), 8, 24**-0.5)
        assert runner.kv_groups is not None and config.hidden_act == "gelu_pytorch_tanh"
    if kind == "gemma2":
        assert (config.attn_logit_softcapping, config.final_logit_softcapping) == (1.0, 3.0)
    if kind == "glm4_moe":  # layer 0 dense; RoPE on half of each head; biases on q/k/v only
        assert config.sparse_layers == (1, 2) and config.rotary_dim == 8 and (config.n_group, config.topk_group) == (4, 2)
        assert config.qkv_bias and not config.o_bias and config.qk_norm and config.routed_scaling_factor == 2.5
    if kind == "glm4":  # interleaved RoPE pairs on half of each head, norms around both blocks
        assert config.rope_interleave and config.rotary_dim == 8 and config.sandwich_norms and not config.o_bias
    if kind == "smollm3":  # every second layer without RoPE, and those slide
        assert config.nope_layers == config.sliding_layers == (1, 3) and config.sliding_window == 8
    if kind == "cohere2":  # RoPE (interleaved) on the sliding layers, none on the full ones
        assert config.sliding_layers == (0, 2) and config.nope_layers == (1, 3) and config.rope_interleave
        assert config.parallel_block and config.layer_norm and config.logit_scale == 0.5
    if kind == "olmo2":
        assert config.qk_norm_whole and not config.pre_norms


@pytest.mark.parametrize("kind", ["gemma2", "cohere2"])
def test_scaled_logits_match_transformers_log_probabilities(checkpoints: dict[str, Path], kind: str) -> None:
    """What greedy cannot tell: Gemma 2's capped and Cohere2's scaled logits. The same weights with and without
    Gemma 2's caps answer differently (the caps bind), and the prompt log-probabilities (prefill over both window
    kinds) are transformers' own."""
    from transformers import AutoModelForCausalLM

    prompt = varied_prompt(40)
    if kind == "gemma2":
        assert transformers_greedy(checkpoints["gemma2"], prompt, 8) != transformers_greedy(
            checkpoints["gemma2_uncapped"], prompt, 8)
    engine = LLMEngine(EngineConfig(num_blocks=40, block_size=8, max_model_len=256), _runner(checkpoints[kind]))
    seq = engine.add_request("scored", prompt, SamplingParams(max_tokens=1, prompt_logprobs=0))
    while engine.has_unfinished():
        engine.step()
    reference = AutoModelForCausalLM.from_pretrained(checkpoints[kind], dtype=torch.float32).eval()
    with torch.no_grad():
        logits = reference(torch.tensor([prompt])).logits[0, :-1].log_softmax(-1)
    expected = logits.gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]
    got = torch.tensor([lp.logprob for lp in seq.prompt_logprobs if lp is not None][-len(expected):])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_soft_capped_prefill_in_slices_of_queries(checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefill row whose capped scores would pass the bound goes a few queries at a time, answering the same."""
    from engine.model import attention

    prompt = varied_prompt(40)
    expected = transformers_greedy(checkpoints["gemma2"], prompt, 6)
    monkeypatch.setattr(attention, "SOFTCAP_SCORES", 6 * 40 * 3)  # 6 heads x 40 keys: 3 queries a slice
    assert runner_greedy(_runner(checkpoints["gemma2"]), prompt, 6, chunk=40) == expected


@pytest.mark.parametrize("kind", ["gemma2", "glm4_moe"])
def test_a_batch_generates_as_each_alone(checkpoints: dict[str, Path], kind: str) -> None:
    """Three prompts of different lengths prefilled 8 tokens a step and decoded together: each as transformers."""
    prompts = [varied_prompt(n, seed=s) for n, s in ((30, 1), (17, 2), (9, 3))]
    expected = [transformers_greedy(checkpoints[kind], prompt, 8) for prompt in prompts]
    runner = TorchModelRunner(checkpoints[kind], num_blocks=48, block_size=8, device="cpu")
    assert runner_batched_greedy(runner, prompts, 8, chunk=8, blocks_each=14) == expected


@pytest.mark.parametrize("kind", ["gemma2", "glm4", "olmo2", "cohere2"])
def test_a_repeated_prompt_reuses_its_blocks(checkpoints: dict[str, Path], kind: str) -> None:
    """The second request's first 32 tokens come from the prefix cache (Gemma 2's sliding and full groups alike)
    and it answers as transformers."""
    engine = LLMEngine(EngineConfig(num_blocks=40, block_size=8, max_model_len=256), _runner(checkpoints[kind]))
    prompt = varied_prompt(40, seed=7)

    def answer(request_id: str, tokens: list[int]) -> tuple[list[int], int]:
        seq = engine.add_request(request_id, tokens, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
        while engine.has_unfinished():
            engine.step()
        return seq.output_token_ids, seq.num_cached_tokens

    first, _ = answer("first", prompt)
    again, cached = answer("again", prompt[:36] + prompt[36:])
    assert cached == 32 and again == first == transformers_greedy(checkpoints[kind], prompt, 6)


@pytest.mark.parametrize("raw", [GEMMA2_9B, GLM4_9B, GLM45, GLM45_AIR, OLMO2_7B, SMOLLM3_3B, COMMAND_R7B],
                         ids=["gemma-2-9b", "glm-4-9b", "glm-4.5", "glm-4.5-air", "olmo-2-7b", "smollm3-3b",
                              "command-r7b"])
def test_hub_configs_count_transformers_parameters(raw: dict) -> None:
    """The engine's count is transformers' (MTP layers aside: transformers builds none); the roofline's shape,
    from the engine's parse, has every matrix (and stacked experts) as its matmul weights and Gemma 2's sliding layers."""
    import transformers

    config = ModelConfig.from_dict(raw)
    with torch.device("meta"):
        reference = getattr(transformers, HUB_CLASSES[raw["model_type"]])(transformers.AutoConfig.for_model(**raw))
    assert config.num_params() == sum(p.numel() for p in reference.parameters())
    shape = ModelShape.from_hf_config(raw)
    assert shape.num_params == sum(p.numel() for p in reference.parameters() if p.dim() >= 2)
    assert shape.kv_bytes_per_token == raw["num_hidden_layers"] * 2 * config.num_kv_heads * config.head_dim * 2
    if raw is GEMMA2_9B:  # layers 0, 2, 4, ... slide over 4,096 tokens
        assert config.sliding_layers == tuple(range(0, 42, 2)) and (shape.sliding_window, shape.num_full_layers) == (4096, 21)
        assert (config.attn_logit_softcapping, config.final_logit_softcapping, config.tie_word_embeddings) == (50.0, 30.0, True)
    if raw is GLM45:  # 355B as Z.ai publishes, less its 2B MTP layer
        assert round(config.num_params() / 1e9) == 353 and config.sparse_layers == tuple(range(3, 92))
        assert config.shared_expert_intermediate_size == 1536 and config.rotary_dim == 64
    if raw is COMMAND_R7B:  # three sliding layers of four, the fourth full and without RoPE
        assert config.nope_layers == tuple(range(3, 32, 4)) and len(config.sliding_layers) == 24
    if raw is SMOLLM3_3B:  # every fourth layer without RoPE; no window
        assert config.nope_layers == tuple(range(3, 36, 4)) and config.sliding_layers == ()


def test_glm4_moe_skips_its_multi_token_prediction_layer(checkpoints: dict[str, Path]) -> None:
    """The checkpoint's model.layers.3.* (past the 3 layers served) load as nothing; an unknown tensor still fails."""
    index = json.loads((checkpoints["glm4_moe"] / "model.safetensors.index.json").read_text())
    assert "model.layers.3.eh_proj.weight" in index["weight_map"]
    assert len(_runner(checkpoints["glm4_moe"]).model.model.layers) == 3


@pytest.mark.parametrize(("raw", "change", "message"), [
    (GEMMA2_9B, {"use_bidirectional_attention": True}, "attends causally"),
    (GEMMA2_9B, {"hidden_activation": "gelu"}, "unsupported hidden activation"),
    (GEMMA2_9B, {"layer_types": ["sliding_attention"] * 3}, "layer_types must name 42 layers"),
    (GLM45, {"n_group": 3}, "n_group 3 must divide 160 experts"),
    (GLM45, {"partial_rotary_factor": 1.5}, "partial_rotary_factor must be in"),
    (SMOLLM3_3B, {"no_rope_layers": [1, 0]}, "no_rope_layers must flag 36 layers"),
])  # fmt: skip
def test_configs_served_wrongly_are_refused(raw: dict, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict({**raw, **change})


def test_gemma3_reads_attention_soft_capping_now_served() -> None:
    """Gemma 3's configs leave it null; one that sets it is capped as Gemma 2 is, no longer refused."""
    from tests.engine.test_gemma3_phi3 import GEMMA3_27B

    assert ModelConfig.from_dict({**GEMMA3_27B, "attn_logit_softcapping": 50.0}).attn_logit_softcapping == 50.0


def test_olmo2_refuses_tensor_parallelism() -> None:
    """Its q/k norm spans every head: a rank holding half of them cannot compute it."""
    config = ModelConfig.from_dict({**OLMO2_7B, "num_hidden_layers": 1})
    with pytest.raises(ValueError, match="norms q and k over every head"), torch.device("meta"):
        Attention(config, 0, TPGroup(rank=0, size=2))
    assert isinstance(UnsupportedConfig("x"), ValueError)


def test_gemma2_served_answers_the_openai_sdk_as_transformers(tmp_path: Path) -> None:
    """`pitstop engine serve` on a soft-capped Gemma 2 folder with the tiny tokenizer: a chat answers (random
weights: ignoring the end token they choose), and a
    completion's text is transformers' greedy tokens for the same prompt ids, again from the prefix cache."""
    from transformers import AutoTokenizer

    from engine.tiny_model import write_tokenizer
    from tests.engine.serving import engine_server, sdk

    model_dir = save_added_family("gemma2", tmp_path / "gemma2", vocab_size=512)
    ids = write_tokenizer(model_dir, 512, 256)
    for name in ("config.json", "generation_config.json"):  # the tokenizer's ids, not Gemma 2's defaults
        path = model_dir / name
        path.write_text(json.dumps(json.loads(path.read_text()) | {f"{k}_token_id": v for k, v in ids.items()}))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "def f(x):\n    return x * 2\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n" * 2
    prompt = tokenizer(text)["input_ids"]
    expected = tokenizer.decode(transformers_greedy(model_dir, prompt, 6))
    with engine_server(model_dir, model_name="gemma2") as url:
        client = sdk(url)
        chat = client.chat.completions.create(model="gemma2", messages=[{"role": "user", "content": "Weather?"}],
                                              max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
        first = client.completions.create(model="gemma2", prompt=prompt, max_tokens=6, temperature=0)
        again = client.completions.create(model="gemma2", prompt=prompt, max_tokens=6, temperature=0)
    assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 8
    assert first.choices[0].text == again.choices[0].text == expected
    details = again.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == len(prompt) // 16 * 16 > 0
