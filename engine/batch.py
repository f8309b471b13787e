from __future__ import annotations

from dataclasses import dataclass, field

from engine.hybrid_attention import HybridAttention
from engine.kv_transfer import DISK, KVTransfer
from engine.sequence import Sequence


@dataclass
class ScheduledBatch:
    """What one engine step computes: for each sequence, `num_new_tokens` tokens starting at its
    `num_computed_tokens`. A sequence samples a token when the step reaches its last token.

    A decoding sequence may carry draft tokens (engine/speculation.py): they follow its last token in
    the step's input and count in `num_new_tokens`; it then samples at its last token and after each
    draft.

    `kv_transfers`: block copies between the GPU and the host or disk tier (engine/kv_transfer.py) that
    the runner performs, in order, before the forward pass. `attention_window`: with a model whose every layer
    slides, the keys each query reads, what the step's shape counts of its context. `hybrid_attention`: with a
    model whose other layers read the whole context (Gemma 3), the shape counts the keys read averaged over
    the layers (engine/hybrid_attention.py)."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    draft_token_ids: list[list[int]] = field(default_factory=list)
    kv_transfers: list[KVTransfer] = field(default_factory=list)
    block_size: int = 16  # tokens per KV block: what a transfer moves
    attention_window: int | None = None  # every layer's sliding window: no query reads further back
    hybrid_attention: HybridAttention | None = None  # some layers slide, the others read it all

    def add(self, seq: Sequence, num_new_tokens: int, draft_token_ids: list[int] | None = None) -> None:
        assert num_new_tokens > 0
        drafts = draft_token_ids or []
        assert not drafts or num_new_tokens == len(drafts) + 1, "drafts follow a decode's one token"
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)
        self.draft_token_ids.append(drafts)

    def __len__(self) -> int:
        return len(self.seqs)

    def samples(self, i: int) -> bool:
        seq = self.seqs[i]
        return seq.num_computed_tokens + self.num_new_tokens[i] - len(self.draft_token_ids[i]) == seq.num_tokens

    @property
    def has_drafts(self) -> bool:
        return any(self.draft_token_ids)

    @property
    def sampling_indices(self) -> list[int]:
        return [i for i in range(len(self.seqs)) if self.samples(i)]

    @property
    def shape(self) -> StepShape:
        prefill_tokens = decode_seqs = kv_tokens = prefill_seqs = draft_tokens = 0
        prefill_attn = 0
        window, hybrid = self.attention_window, self.hybrid_attention
        for seq, n, drafts in zip(self.seqs, self.num_new_tokens, self.draft_token_ids, strict=True):
            context = seq.num_computed_tokens + n
            if window is not None:  # the keys a query reads (the chunk's own keys are a window's worth at most)
                context = min(context, window + n - 1)
            elif hybrid is not None:
                context = hybrid.read_tokens(context, n)
            kv_tokens += context
            if drafts:  # a decode that checks drafts: its extra query rows attend to the context
                decode_seqs += 1
                draft_tokens += len(drafts)
                prefill_attn += len(drafts) * context
            elif n == 1 and seq.num_computed_tokens >= seq.num_prompt_tokens:
                decode_seqs += 1
            else:
                prefill_seqs += 1
                prefill_tokens += n
                prefill_attn += n * context
        disk_loads = sum(1 for t in self.kv_transfers if t.tier == DISK and not (t.save or t.ahead))
        return StepShape(prefill_tokens, prefill_seqs, decode_seqs, kv_tokens, prefill_attn, draft_tokens,
                         len(self.kv_transfers) * self.block_size, disk_loads * self.block_size)


@dataclass(frozen=True)
class StepShape:
    """The numbers a step's duration depends on; what step-time models read."""

    prefill_tokens: int
    prefill_seqs: int
    decode_seqs: int
    # Sum over the batch of each sequence's context length after this step (the keys read: a hybrid sliding
    # model's mean over its layers, a float; engine/hybrid_attention.py).
    kv_tokens: float
    # Sum of new tokens x context: the quadratic part of prefill attention (draft rows' included).
    prefill_attention: float
    # Draft tokens checked by decoding sequences (speculative decoding): each is one more query row
    # through the model and one more sampled row, on top of its sequence's decode token.
    draft_tokens: int = 0
    # Tokens of KV copied through host memory before the forward pass: to or from the host tier, and to or
    # from the disk tier's buffers (engine/kv_transfer.py).
    kv_tokens_moved: int = 0
    # Of those, tokens read from the disk tier first (its loads wait for the drive; its writes run behind
    # the step, on the runner's writer thread: engine/disk_store.py).
    disk_tokens_read: int = 0

    @property
    def num_tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs + self.draft_tokens
