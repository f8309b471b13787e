"""Small random DeepSeek-V2/V3 checkpoints saved by transformers itself (DeepseekV2ForCausalLM,
DeepseekV3ForCausalLM), each with what sets its kind apart, weights spread so that greedy choices are clear-cut:
engine/tiny_moe.py builds them (`pitstop engine make-tiny-model --family deepseek_v3` too)."""

from __future__ import annotations

from pathlib import Path

from engine.tiny_model import train_tokenizer
from engine.tiny_moe import DEEPSEEK_KINDS as KINDS
from engine.tiny_moe import MLA, YARN, hf_deepseek

__all__ = ["KINDS", "MLA", "YARN", "hf_deepseek", "save_deepseek", "save_serving_deepseek"]


def save_deepseek(kind: str, out: Path) -> Path:
    hf_deepseek(kind).save_pretrained(out, max_shard_size="100KB")
    return out


def save_serving_deepseek(kind: str, out: Path, vocab_size: int = 512) -> Path:
    """A folder a server loads: the model over the engine's tiny byte-level BPE (engine/tiny_model.py)."""
    hf_deepseek(kind, vocab_size=vocab_size).save_pretrained(out)
    train_tokenizer(vocab_size).save(str(out / "tokenizer.json"))
    return out
