"""What a step of a model with both sliding-window and full-attention layers reads (Gemma 3: 52 of its 62
layers slide over 1,024 tokens, the rest read the whole context): what its shape prices (engine/batch.py).
The torch runner keeps the sliding layers' KV in groups of their own that release what left the window
(engine/kv_groups.py); a simulated engine prices the reads alone and keeps every block of the model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HybridAttention:
    """`sliding_share` of the layers attend to at most `window` keys back; the others to the whole context."""

    window: int
    sliding_share: float

    def read_tokens(self, context: int, new_tokens: int) -> float:
        """The keys the queries of `new_tokens` tokens ending at `context` read, averaged over the layers:
        step-time models price KV reads and attention per token of every layer, so the mean prices them
        exactly. A sliding layer reads the window and the chunk's own keys, as engine/batch.py counts them."""
        sliding = min(context, self.window + new_tokens - 1)
        return context - self.sliding_share * (context - sliding)


def hybrid_attention(window: int, sliding_layers: int, num_layers: int) -> HybridAttention | None:
    """A model's HybridAttention, or None where no layer slides or every layer does (a window for all of
    them: `attention_window`, engine/batch.py)."""
    if not window or not 0 < sliding_layers < num_layers:
        return None
    return HybridAttention(window, sliding_layers / num_layers)
