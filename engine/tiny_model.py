"""make_tiny_model: writes a small random Llama, Qwen3, Qwen3-MoE, Gemma 3 or Phi-3 model as a real Hugging Face folder
(DeepSeek-V2/V3 and Qwen2-MoE, saved by transformers: engine/tiny_moe.py),
fully offline: config.json, model.safetensors, generation_config.json, a byte-level BPE tokenizer.json
trained on docstrings of the Python standard library, and tokenizer_config.json with a ChatML-like
chat template that renders tools and tool calls. transformers loads it as it would a Hub model."""

from __future__ import annotations

import importlib
import inspect
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

BOS, EOS, PAD, START = "<|begin|>", "<|end|>", "<|pad|>", "<|start|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, START]
TINY_FAMILIES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
                 "gemma3": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM"}
# The `--family` name -> its config's model_type (Gemma 3's text model is `gemma3_text`).
MODEL_TYPES = {"gemma3": "gemma3_text"}
# Ordinary (non-special) single tokens, so tool calls survive skip_special_tokens decoding.
TOOL_TOKENS = ["<tool_call>", "</tool_call>"]

# Modules whose docstrings make the tokenizer corpus: fixed list, sorted members -> same corpus each run.
CORPUS_MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "contextlib",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools",
    "heapq", "hashlib", "html", "http", "inspect", "io", "itertools", "json", "logging", "math",
    "operator", "os", "pathlib", "pickle", "random", "re", "shutil", "socket", "statistics", "string",
    "subprocess", "tempfile", "textwrap", "threading", "time", "typing", "unittest", "urllib", "uuid",
    "zipfile",
)  # fmt: skip
CORPUS_MAX_CHARS = 400_000
# A little non-ASCII text, so some multi-byte characters get merges and others stay split in bytes.
EXTRA_TEXT = "naïve café, déjà vu — résumé. Grüße aus München! ¿Qué tal? 日本語のテキスト。 ✓ → ∑ π ≈ 3.14\n"

CHAT_TEMPLATE = """\
{%- macro text(content) -%}
{%- if content is string -%}{{ content }}
{%- elif content -%}{%- for part in content if part.type == 'text' -%}{{ part.text }}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{{- bos_token -}}
{%- set has_system = messages and messages[0].role == 'system' -%}
{%- if has_system or tools -%}
<|start|>system
{% if has_system %}{{ text(messages[0].content) }}{% endif %}
{% if has_system and tools %}{{ '\\n\\n' }}{% endif %}
{% if tools %}# Tools
You may call these functions, given as JSON schemas:
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}To call one, reply with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.
{%- endif %}<|end|>
{% endif -%}
{%- for message in messages -%}
{%- if not (loop.first and has_system) -%}
<|start|>{{ message.role }}
{{ text(message.content) }}
{%- if message.role == 'assistant' and message.tool_calls -%}
{%- for call in message.tool_calls -%}
{%- set fn = call.function if call.function is defined else call -%}
<tool_call>{"name": {{ fn.name | tojson }}, "arguments": {% if fn.arguments is string %}{{ fn.arguments }}\
{% else %}{{ fn.arguments | tojson }}{% endif %}}</tool_call>
{%- endfor -%}
{%- endif -%}
<|end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|start|>assistant
{% endif -%}
"""


def make_tiny_model(
    out_dir: str | Path,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    vocab_size: int = 1024,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    *,
    tie_word_embeddings: bool = False,
    family: str = "llama",
    experts: int = 8,
    experts_per_token: int = 2,
) -> Path:
    """Writes the model folder and returns its path. Same arguments, same bytes. `family`: "llama",
    "qwen3" (per-head q/k norms), "qwen3_moe" (Qwen3 with `experts` experts in every layer, each a
    quarter of the dense MLP's width, `experts_per_token` of them per token), "gemma3" (Gemma 3's
    layout, tied embeddings, every second layer sliding over 16 tokens) or "phi3" (fused q/k/v and
    gate/up tensors, RoPE on 3/4 of each head as Phi-4-mini)."""
    if hidden % heads or heads % kv_heads:
        raise ValueError("hidden must be a multiple of heads, and heads a multiple of kv_heads")
    if family not in TINY_FAMILIES:
        raise ValueError(f"family must be one of {TINY_FAMILIES}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    intermediate = intermediate or 32 * math.ceil(hidden * 8 / 3 / 32)  # Llama's ~8/3 ratio
    special = write_tokenizer(out, vocab_size, max_position_embeddings)
    ids = {BOS: special["bos"], EOS: special["eos"], PAD: special["pad"]}
    config = {
        "architectures": [TINY_FAMILIES[family]],
        "model_type": MODEL_TYPES.get(family, family),
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tie_word_embeddings or family == "gemma3",
        "initializer_range": 0.02,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if family == "qwen3_moe":
        config |= {"num_experts": experts, "num_experts_per_tok": experts_per_token,
                   "moe_intermediate_size": max(16, intermediate // 4), "norm_topk_prob": True,
                   "decoder_sparse_step": 1, "mlp_only_layers": []}  # fmt: skip
    if family == "gemma3":
        config |= {"hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": hidden // heads,
                   "sliding_window": 16, "sliding_window_pattern": 2, "rope_theta": 1_000_000.0,
                   "rope_local_base_freq": 10_000.0, "final_logit_softcapping": None,
                   "attn_logit_softcapping": None}  # fmt: skip
        del config["hidden_act"]
    if family == "phi3":
        config |= {"partial_rotary_factor": 0.75, "sliding_window": None}
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {
        "bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD],
    })  # fmt: skip
    weights = random_weights(config, seed)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def write_tokenizer(out: Path, vocab_size: int, max_length: int) -> dict[str, int]:
    """tokenizer.json and tokenizer_config.json (the chat template) in `out`; the bos, eos and pad ids."""
    if vocab_size < 256 + len(SPECIAL_TOKENS) + len(TOOL_TOKENS) + 64:
        raise ValueError("vocab_size must leave room for the 256 byte tokens, special tokens and merges")
    tokenizer = train_tokenizer(vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    })  # fmt: skip
    return {name: tokenizer.token_to_id(tok) for name, tok in (("bos", BOS), ("eos", EOS), ("pad", PAD))}


def random_weights(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights, scaled so every layer moves the residual stream and the logits have a
    spread of a few units: greedy decoding then depends on context and rarely meets near-ties.
    (HF's std-0.02 init makes near-uniform logits, which is useless for agreement tests.)"""
    gen = torch.Generator().manual_seed(seed)
    hidden = config["hidden_size"]
    head_dim = config["head_dim"]
    q_size = config["num_attention_heads"] * head_dim
    kv_size = config["num_key_value_heads"] * head_dim
    inter = config["intermediate_size"]

    def normal(rows: int, cols: int, std: float) -> torch.Tensor:
        return torch.randn(rows, cols, generator=gen) * std

    def linear(rows: int, cols: int, gain: float = 1.0) -> torch.Tensor:
        return normal(rows, cols, gain / math.sqrt(cols))

    gemma = config["model_type"] == "gemma3_text"

    def norm_weight(size: int = hidden) -> torch.Tensor:
        return (0.0 if gemma else 1.0) + 0.1 * torch.randn(size, generator=gen)  # Gemma scales by (1 + weight)

    tied = config["tie_word_embeddings"]
    # Tied: the head reuses the embedding, so keep it at the head's scale instead of unit scale. Gemma multiplies
    # it by sqrt(hidden): smaller still, or each token's own embedding outweighs the layers and greedy repeats it.
    embed_std = 0.25 / math.sqrt(hidden) if gemma else 2.0 / math.sqrt(hidden) if tied else 1.0
    weights = {"model.embed_tokens.weight": normal(config["vocab_size"], hidden, embed_std)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        # Larger q/k make attention peaked rather than a plain average, so outputs depend on context.
        weights[p + "self_attn.q_proj.weight"] = linear(q_size, hidden, gain=2.0)
        weights[p + "self_attn.k_proj.weight"] = linear(kv_size, hidden, gain=2.0)
        weights[p + "self_attn.v_proj.weight"] = linear(kv_size, hidden)
        weights[p + "self_attn.o_proj.weight"] = linear(hidden, q_size)
        if config["model_type"] in ("qwen3", "qwen3_moe", "gemma3_text"):
            weights[p + "self_attn.q_norm.weight"] = norm_weight(head_dim)
            weights[p + "self_attn.k_norm.weight"] = norm_weight(head_dim)
        if config.get("num_experts"):
            # A larger router gain makes each token's choice of experts decisive, not a near-tie.
            weights[p + "mlp.gate.weight"] = linear(config["num_experts"], hidden, gain=4.0)
            width = config["moe_intermediate_size"]
            for e in range(config["num_experts"]):
                weights[p + f"mlp.experts.{e}.gate_proj.weight"] = linear(width, hidden)
                weights[p + f"mlp.experts.{e}.up_proj.weight"] = linear(width, hidden)
                weights[p + f"mlp.experts.{e}.down_proj.weight"] = linear(hidden, width)
        else:
            weights[p + "mlp.gate_proj.weight"] = linear(inter, hidden)
            weights[p + "mlp.up_proj.weight"] = linear(inter, hidden)
            weights[p + "mlp.down_proj.weight"] = linear(hidden, inter)
        weights[p + "input_layernorm.weight"] = norm_weight()
        weights[p + "post_attention_layernorm.weight"] = norm_weight()
        if gemma:
            weights[p + "pre_feedforward_layernorm.weight"] = norm_weight()
            weights[p + "post_feedforward_layernorm.weight"] = norm_weight()
    weights["model.norm.weight"] = norm_weight() + (3.0 if gemma else 0.0)  # Gemma: logits spread by 4 for that
    if config["model_type"] == "phi3":  # Phi-3 stores q/k/v and gate/up fused
        for i in range(config["num_hidden_layers"]):
            p = f"model.layers.{i}."
            parts = [weights.pop(p + f"self_attn.{x}_proj.weight") for x in "qkv"]
            weights[p + "self_attn.qkv_proj.weight"] = torch.cat(parts)
            parts = [weights.pop(p + f"mlp.{x}_proj.weight") for x in ("gate", "up")]
            weights[p + "mlp.gate_up_proj.weight"] = torch.cat(parts)
    if not tied:
        weights["lm_head.weight"] = normal(config["vocab_size"], hidden, 2.0 / math.sqrt(hidden))
    return {name: t.contiguous() for name, t in weights.items()}


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 style) trained on local text; exactly `vocab_size` tokens."""
    tokenizer = Tokenizer(BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(
        vocab_size=vocab_size - len(TOOL_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    # The corpus runs out of merges near 10k tokens; larger vocabularies are filled with reserved
    # special tokens (as Llama 3 does), so every id the model can emit is a token.
    missing = vocab_size - tokenizer.get_vocab_size()
    tokenizer.add_special_tokens([AddedToken(f"<|reserved_{i}|>", special=True) for i in range(missing)])
    assert tokenizer.get_vocab_size() == vocab_size
    return tokenizer


def corpus_lines() -> list[str]:
    lines = [EXTRA_TEXT] * 20
    total = 0
    for name in CORPUS_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for doc in _docstrings(module):
            lines.append(doc)
            total += len(doc)
            if total >= CORPUS_MAX_CHARS:
                return lines
    return lines


def _docstrings(module: object) -> list[str]:
    docs = [inspect.getdoc(module) or ""]
    for attr in sorted(vars(module)):
        if attr.startswith("_"):
            continue
        member = getattr(module, attr)
        if getattr(member, "__module__", None) == module.__name__:
            docs.append(inspect.getdoc(member) or "")
    return [d for d in docs if d]


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def make_truncated_model(model_dir: str | Path, out_dir: str | Path, layers: int) -> Path:
    """A model folder of `model_dir`'s first `layers` decoder layers, with its embeddings, final norm, head
    and tokenizer: a draft model sharing the target's vocabulary and first layers (LayerSkip's early exit,
    without the training that makes a real model's early layers predict its last). The tiny random models'
    layers each move the residual stream, so such a draft agrees with its target only in part."""
    import re
    import shutil

    from safetensors import safe_open

    src, out = Path(model_dir), Path(out_dir)
    config = json.loads((src / "config.json").read_text())
    if not 1 <= layers <= config["num_hidden_layers"]:
        raise ValueError(f"layers must be between 1 and the model's {config['num_hidden_layers']}")
    out.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and path.name != "model.safetensors.index.json":
            shutil.copy2(path, out / path.name)
    _write_json(out / "config.json", config | {"num_hidden_layers": layers})
    layer = re.compile(r"model\.layers\.(\d+)\.")
    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(src.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                match = layer.match(name)
                if match is None or int(match[1]) < layers:
                    weights[name] = f.get_tensor(name)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
