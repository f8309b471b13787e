"""Tiny random Llama 4 checkpoints saved by transformers itself (engine/tiny_llama4.py's: chunked RoPE layers over
8-token chunks and a global NoPE layer, dense and MoE layers, llama3 RoPE, q/k L2 norms, a query temperature)."""

from __future__ import annotations

from pathlib import Path

from engine.tiny_llama4 import CHUNK, LLAMA4_TEXT, hf_llama4

__all__ = ["CHUNK", "LLAMA4_TEXT", "save_llama4"]


def save_llama4(out: Path, multimodal: bool = False, vocab_size: int = LLAMA4_TEXT["vocab_size"]) -> Path:
    """`multimodal`: a Llama4ForConditionalGeneration folder; `vocab_size`: a served folder's, room for the tiny
    tokenizer (engine/tiny_model.py). Saved in 100 KB shards."""
    hf_llama4(multimodal=multimodal, vocab_size=vocab_size).save_pretrained(out, max_shard_size="100KB")
    return out
