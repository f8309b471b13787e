"""Small random checkpoints saved by transformers itself (v5 config format, sharded safetensors), and
greedy generation through Pitstop's runner to compare with transformers' `generate`."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from engine.batch import ScheduledBatch
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.tiny_moe import spread_weights
from engine.torch_runner import TorchModelRunner

VOCAB = 300
COMMON = {"vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
          "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 256}  # fmt: skip
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}  # fmt: skip
YARN_ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16}
# Real Hub config.json files (the fields that matter).
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 151936,
    "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": 48,
    "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
    "num_experts_per_tok": 8, "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
    "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_sliding_window": False, "sliding_window": None,
    "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu", "attention_bias": False,
}  # fmt: skip
QWEN3_8B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 4096,
    "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_sliding_window": False, "hidden_act": "silu",
    "attention_bias": False, "eos_token_id": 151645,
}  # fmt: skip
MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
    "rope_theta": 1e6, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
}  # fmt: skip


# head_dim 8 x 3/4 turns 6 dims: 3 factors each.
PHI3_LONGROPE = {"type": "longrope", "short_factor": [1.0, 1.2, 1.5], "long_factor": [1.5, 4.0, 9.0]}
MOE = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32}


def hf_model(kind: str) -> torch.nn.Module:
    """A transformers model of one family, weights rescaled so logits are spread out (no greedy
    near-ties). Each family has what sets it apart: biases, tied embeddings, scaled RoPE, experts."""
    import transformers as hf

    torch.manual_seed(0)
    if kind == "qwen2":
        return _spread(hf.Qwen2ForCausalLM(hf.Qwen2Config(**COMMON, tie_word_embeddings=True)), gain=2.0)
    if kind == "llama3":
        return _spread(hf.LlamaForCausalLM(hf.LlamaConfig(**COMMON, attention_bias=True, rope_parameters=LLAMA3_ROPE)))
    if kind == "qwen3":  # YaRN past 16 positions, as Qwen3's long-context setting
        return _spread(hf.Qwen3ForCausalLM(hf.Qwen3Config(**COMMON, head_dim=16, rope_parameters=YARN_ROPE)))
    if kind == "qwen3_moe":  # the second layer dense, softmax weights renormalised over the top 2
        config = hf.Qwen3MoeConfig(**COMMON, **MOE, head_dim=16, mlp_only_layers=[1], norm_topk_prob=True)
        return _spread(hf.Qwen3MoeForCausalLM(config))
    if kind == "qwen3_moe_unnormalised":  # sparse layers every second one, raw top-k softmax weights
        config = hf.Qwen3MoeConfig(**{**COMMON, "num_hidden_layers": 4}, **MOE, decoder_sparse_step=2)
        return _spread(hf.Qwen3MoeForCausalLM(config))
    if kind == "mistral_sliding":  # every layer sees its last 8 tokens
        return _spread(hf.MistralForCausalLM(hf.MistralConfig(**COMMON, sliding_window=8)))
    if kind == "qwen3_sliding":  # layer 0 full, layer 1 a 12-token window (not a multiple of the blocks)
        config = hf.Qwen3Config(**COMMON, head_dim=16, use_sliding_window=True, sliding_window=12, max_window_layers=1)
        return _spread(hf.Qwen3ForCausalLM(config))
    if kind == "mixtral":
        config = hf.MixtralConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2)
        return _spread(hf.MixtralForCausalLM(config))
    if kind in ("gemma3", "gemma3_softcap"):  # layer 0 slides over 8 tokens on a local base, layer 1 full, RoPE x8
        config = hf.Gemma3TextConfig(**COMMON, head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                                     sliding_window_pattern=2, rope_local_base_freq=100.0,
                                     rope_scaling={"rope_type": "linear", "factor": 8.0},
                                     final_logit_softcapping=2.0 if kind == "gemma3_softcap" else None)  # fmt: skip
        return _spread(hf.Gemma3ForCausalLM(config), embed_std=0.1)  # times sqrt(48) in the model
    if kind == "gemma3_5to1":  # Gemma 3's own layout: five layers slide over 8 tokens, then a full one
        config = hf.Gemma3TextConfig(**{**COMMON, "num_hidden_layers": 6}, head_dim=16, query_pre_attn_scalar=24,
                                     sliding_window=8, sliding_window_pattern=6, rope_local_base_freq=100.0)
        return _spread(hf.Gemma3ForCausalLM(config), embed_std=0.1)
    if kind == "gemma3_multimodal":  # the 4B-27B releases' layout: a vision tower beside the language model
        text = {**COMMON, "head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 8, "sliding_window_pattern": 2}
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "image_size": 28, "patch_size": 14}
        config = hf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=299,
                                 boi_token_index=297, eoi_token_index=298)  # fmt: skip
        return _spread(hf.Gemma3ForConditionalGeneration(config), embed_std=0.1)
    torch.manual_seed(2)  # a seed whose greedy answers vary (seed 0 gives the Phi-3 pair near-repeats)
    if kind in ("phi3", "phi3_sliding"):  # the second: every layer sees its last 8 tokens (Phi-3-mini-4k's kind)
        window = 8 if kind == "phi3_sliding" else None
        return _spread(hf.Phi3ForCausalLM(hf.Phi3Config(**COMMON, sliding_window=window, pad_token_id=0)))
    if kind == "phi3_longrope":  # LongRoPE past 16 positions, RoPE on 3/4 of each head (Phi-4-mini's kind)
        config = hf.Phi3Config(**COMMON, sliding_window=None, pad_token_id=0, partial_rotary_factor=0.75,
                               original_max_position_embeddings=16, rope_scaling=PHI3_LONGROPE)
        return _spread(hf.Phi3ForCausalLM(config))
    raise ValueError(kind)


_spread = spread_weights  # engine/tiny_moe.py's, which the CLI's tiny MoE models use too


def save_hf_model(kind: str, out: Path) -> Path:
    hf_model(kind).save_pretrained(out, max_shard_size="100KB")
    return out


def random_prompt(length: int = 40, seed: int = 3) -> list[int]:
    """Varied ids, never 0: transformers' `generate` with pad_token_id 0 masks a prompt's 0s as padding."""
    rng = random.Random(seed)
    return [rng.randrange(1, VOCAB) for _ in range(length)]


def transformers_greedy(model_dir: Path, prompt: list[int], max_new_tokens: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = reference.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=None, pad_token_id=0)  # fmt: skip
    return out[0, len(prompt) :].tolist()


def runner_greedy(runner: TorchModelRunner, prompt: list[int], max_new_tokens: int, chunk: int = 16) -> list[int]:
    """Chunked prefill, then decode, one sequence over a reversed block table."""
    seq = Sequence("s", prompt, SamplingParams(temperature=0.0), 0.0)
    give_blocks(runner, seq, list(range(runner.num_blocks - 1, 0, -1)))
    while seq.num_output_tokens < max_new_tokens:
        batch = ScheduledBatch()
        n = min(seq.num_tokens - seq.num_computed_tokens, chunk)
        batch.add(seq, n)
        tokens = runner.execute(batch)
        seq.num_computed_tokens += n
        seq.token_ids.extend(tokens)
    return seq.output_token_ids


def runner_batched_greedy(runner: TorchModelRunner, prompts: list[list[int]], max_new_tokens: int, chunk: int,
                          blocks_each: int) -> list[list[int]]:
    """The prompts prefilled `chunk` tokens a step and decoded in one batch, each over `blocks_each` blocks of
    its own: what a test compares with `runner_greedy` of each alone."""
    seqs = [Sequence(f"s{i}", prompt, SamplingParams(temperature=0.0), 0.0) for i, prompt in enumerate(prompts)]
    for i, seq in enumerate(seqs):
        give_blocks(runner, seq, list(range(1 + blocks_each * i, 1 + blocks_each * (i + 1))))
    while any(seq.num_output_tokens < max_new_tokens for seq in seqs):
        batch = ScheduledBatch()
        for seq in seqs:
            if seq.num_output_tokens < max_new_tokens:
                batch.add(seq, min(seq.num_tokens - seq.num_computed_tokens, chunk))
        tokens = iter(runner.execute(batch))
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            seq.num_computed_tokens += n
            if seq.num_computed_tokens == seq.num_tokens:
                seq.token_ids.append(next(tokens))
    return [seq.output_token_ids for seq in seqs]


def give_blocks(runner: TorchModelRunner, seq: Sequence, block_ids: list[int]) -> None:
    """`block_ids` as `seq`'s block tables: split evenly between the runner's KV groups (engine/kv_groups.py)."""
    groups = runner.kv_groups.num_groups if runner.kv_groups is not None else 1
    per_group = len(block_ids) // groups
    seq.block_tables = [block_ids[g * per_group : (g + 1) * per_group] for g in range(groups)]
