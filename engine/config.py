from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    """Sizes and limits of one engine instance. Block counts are in KV blocks of `block_size` tokens."""

    block_size: int = 16
    num_blocks: int = 1024
    max_model_len: int = 4096
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    # Longest prefill chunk one request may take in a step; keeps decodes flowing beside long prompts.
    long_prefill_token_threshold: int = 512
    # Share of all KV blocks that TTL pins may hold at once.
    pin_budget_fraction: float = 0.5
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        assert self.block_size > 0 and self.num_blocks > 0
        assert 0.0 <= self.pin_budget_fraction <= 1.0
        assert self.max_num_batched_tokens >= self.max_num_seqs
        assert self.long_prefill_token_threshold > 0

    @property
    def pin_budget_blocks(self) -> int:
        return int(self.num_blocks * self.pin_budget_fraction)
