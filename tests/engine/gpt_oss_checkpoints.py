"""Small random gpt-oss checkpoints saved by transformers itself (GptOssForCausalLM), and the same model with its
experts packed to MXFP4 (`pack_mxfp4`, the inverse of engine/model/gpt_oss_weights.py's dequantization) as the
released checkpoints store them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer

from engine.model.gpt_oss_weights import FP4_VALUES, SCALE_BIAS
from engine.tiny_model import train_tokenizer

VOCAB = 300
WINDOW = 8
# Four layers, sliding (8 tokens) then full, twice; YaRN x16 past 16 positions as the release's x32 past 4,096.
CONFIG = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 4,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_local_experts": 4,
          "num_experts_per_tok": 2, "sliding_window": WINDOW, "max_position_embeddings": 256,
          "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 16.0, "beta_fast": 32.0,
                              "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 16},
          "pad_token_id": 0, "eos_token_id": 1}  # fmt: skip


def hf_gpt_oss(seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A transformers GptOssForCausalLM with weights spread so that greedy choices are clear-cut, sinks large
    enough to matter, and pre-activations that reach the SwiGLU's clamp."""
    import transformers as hf

    torch.manual_seed(seed)
    model = hf.GptOssForCausalLM(hf.GptOssConfig(**{**CONFIG, **overrides}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("sinks"):
                param.normal_(1.0, 1.5)
            elif "norm" in name:
                param.normal_(1.0, 0.3)
            elif param.dim() == 1 or name.endswith("_bias"):
                param.normal_(0.0, 0.3)
            elif "embed" in name:
                param.normal_(0.0, 1.0)
            elif "experts" in name:  # [experts, in, out]: gate/up reach past the clamp at 7
                param.normal_(0.0, (6.0 if "gate_up" in name else 1.0) / param.shape[1] ** 0.5)
            else:
                gain = 2.0 if "q_proj" in name or "k_proj" in name else 4.0 if "router" in name else 1.0
                param.normal_(0.0, gain / param.shape[-1] ** 0.5)
    return model.eval()


def save_gpt_oss(out: Path, seed: int = 0, mxfp4: bool = False, **overrides: object) -> Path:
    """transformers' own save; with `mxfp4`, its experts rounded to MXFP4 first (so transformers' model from
    `out / "reference"` and the packed checkpoint in `out` hold the same values)."""
    model = hf_gpt_oss(seed, **overrides)
    if not mxfp4:
        model.save_pretrained(out, max_shard_size="100KB")
        return out
    packed: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                blocks, scales = pack_mxfp4(param.transpose(1, 2))  # stored [experts, out, in]
                packed[f"{name}_blocks"], packed[f"{name}_scales"] = blocks, scales
                param.copy_(unpack_reference(blocks, scales).transpose(1, 2))
    model.save_pretrained(out / "reference")
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not k.endswith(("experts.gate_up_proj", "experts.down_proj"))}
    save_file({**state, **packed}, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out / "reference" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (out / "config.json").write_text(json.dumps(config))
    return out


def pack_mxfp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., in] float -> (blocks [..., in / 32, 16] uint8, scales [..., in / 32] uint8): each group of 32 scaled
    by the power of two that brings its largest magnitude to at most 6, each value rounded to the nearest E2M1
    value, two a byte, the even-indexed one in the low nibble."""
    groups = weight.float().unflatten(-1, (-1, 32))
    largest = groups.abs().amax(-1).clamp(min=2.0**-100)
    exponents = torch.ceil(torch.log2(largest / 6.0))
    lut = torch.tensor(FP4_VALUES)
    codes = ((groups / torch.exp2(exponents).unsqueeze(-1)).unsqueeze(-1) - lut).abs().argmin(-1).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks, (exponents.to(torch.int32) + SCALE_BIAS).to(torch.uint8)


def unpack_reference(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The values `pack_mxfp4` stored, decoded independently of the engine (transformers' own function)."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    # It returns [experts, in, out] (its transposed layout); back to [experts, out, in].
    return convert_moe_packed_tensors(blocks, scales, dtype=torch.float32).transpose(1, 2)


HARMONY_TOKENS = ["<|channel|>", "<|message|>", "<|constrain|>", "<|call|>", "<|return|>"]  # beside <|start|>, <|end|>
# The release's chat template in brief: a system message with the reasoning effort, a developer message with
# the instructions and the tools as a TypeScript namespace, calls and tool results in the commentary channel.
HARMONY_TEMPLATE = """\
{%- set system = messages[0].content if messages and messages[0].role in ('system', 'developer') else none -%}
<|start|>system<|message|>You are a tiny model.
Reasoning: {{ reasoning_effort | default('medium') }}

# Valid channels: analysis, commentary, final. Channel must be included for every message.
{%- if tools %}
Calls to these tools must go to the commentary channel: 'functions'.{% endif %}<|end|>
{%- if system or tools -%}
<|start|>developer<|message|>{% if system %}# Instructions

{{ system }}{% endif %}{% if tools %}

# Tools

## functions

namespace functions {
{% for tool in tools %}// {{ tool.function.description }}
type {{ tool.function.name }} = (_: {{ tool.function.parameters | tojson }}) => any;
{% endfor %}} // namespace functions{% endif %}<|end|>
{%- endif -%}
{%- for message in messages if message.role not in ('system', 'developer') -%}
{%- if message.role == 'assistant' and message.tool_calls -%}
{%- for call in message.tool_calls -%}
<|start|>assistant to=functions.{{ call.function.name }}<|channel|>commentary <|constrain|>json<|message|>\
{{ call.function.arguments }}<|call|>
{%- endfor -%}
{%- elif message.role == 'assistant' -%}
<|start|>assistant<|channel|>final<|message|>{{ message.content }}<|end|>
{%- elif message.role == 'tool' -%}
<|start|>functions.{{ message.name | default('tool') }} to=assistant<|channel|>commentary<|message|>\
{{ message.content }}<|end|>
{%- else -%}
<|start|>{{ message.role }}<|message|>{{ message.content }}<|end|>
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}
"""


def harmony_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """The engine's tiny byte-level BPE (engine/tiny_model.py, whose specials include <|start|> and <|end|>) with
    Harmony's other special tokens: exactly `vocab_size` tokens."""
    tokenizer = train_tokenizer(vocab_size - len(HARMONY_TOKENS))
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in HARMONY_TOKENS])
    assert tokenizer.get_vocab_size() == vocab_size
    return tokenizer


def save_serving_gpt_oss(out: Path, vocab_size: int = 512, mxfp4: bool = False, context: int = 256) -> Path:
    """A tiny gpt-oss folder a server loads: the model, the Harmony tokenizer and template, and `<|return|>` and
    `<|call|>` as its eos tokens (the release's generation_config lists them); `context` tokens long (a prompt
    offering tools needs more than the default)."""
    tokenizer = harmony_tokenizer(vocab_size)
    ends = [tokenizer.token_to_id(token) for token in ("<|return|>", "<|call|>")]
    save_gpt_oss(out, mxfp4=mxfp4, vocab_size=vocab_size, eos_token_id=ends[0],
                 pad_token_id=tokenizer.token_to_id("<|pad|>"), max_position_embeddings=context,
                 rope_parameters={**CONFIG["rope_parameters"], "factor": context / 16})  # type: ignore[dict-item]
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": ends, "pad_token_id": ends[0]}))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin|>", "eos_token": "<|return|>",
        "pad_token": "<|pad|>", "model_max_length": context, "chat_template": HARMONY_TEMPLATE}))
    return out
