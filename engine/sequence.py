from __future__ import annotations

import secrets
from enum import Enum, auto
from typing import TYPE_CHECKING

from engine.hints import NO_HINTS, SchedulingHints
from engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from collections.abc import Iterable

    import torch

    from engine.audio_inputs import AudioInput
    from engine.image_inputs import ImageInput
    from engine.logprobs import TokenLogprobs
    from engine.speculation import DraftProposal, TokenArray
    from engine.structured_output import GrammarMatcher
    from engine.thinking_budget import ThinkingBudget


NULL_BLOCK = -1  # a block-table entry whose block slid out of its group's window and was released
# The parent of a base-model prompt's first block in the prefix cache's hash chain: a constant, so the same
# tokens hash alike in every process (the disk tier's blocks outlive the engine: engine/disk_cache.py;
# Python < 3.12 hashes None by its address). A LoRA adapter's chains start from its id and a salt drawn once
# per process: ids are given in load order, so the same id in another run may be another adapter.
BASE_HASH_SEED = 0x5EED_0F_B10C5
_LORA_HASH_SALT = secrets.randbits(62)
_EMBEDS_HASH_TAG = 0xE3BED5  # a prompt sent as embeddings: its chain starts apart from token ids' chains


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    """One request's state inside an engine: its tokens, how many have KV computed, and its blocks."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_time: float,
        priority: float = 0.0,
        session_id: str | None = None,
        pin_ttl_s: float | None = None,
        hints: SchedulingHints = NO_HINTS,
        lora_id: int = 0,
        images: Iterable[ImageInput] = (),
        prompt_embeds: torch.Tensor | None = None,
        audio: AudioInput | None = None,
    ) -> None:
        assert prompt_token_ids, "a sequence needs at least one prompt token"
        self.request_id = request_id
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.arrival_time = arrival_time
        self.priority = priority
        self.session_id = session_id
        self.pin_ttl_s = pin_ttl_s
        self.hints = hints
        # The LoRA adapter it runs with (engine/model/lora.py); 0: the base model. Its KV differs from the
        # base model's for the same tokens, so its prefix-cache hashes start from the adapter's.
        self.lora_id = lora_id
        self.hash_seed: int = hash(("lora", lora_id, _LORA_HASH_SALT)) if lora_id else BASE_HASH_SEED
        # The prompt's images (engine/image_inputs.py): their features replace their tokens' embeddings, and
        # their content hashes enter the hashes of the blocks they fall in.
        self.images: list[ImageInput] = list(images)
        # Rows standing in for the whole prompt's token embeddings (engine/prompt_embeds.py; its token ids are
        # placeholders): each block is keyed by its rows' bytes too (engine/prefix_match.py), so embeddings
        # sharing leading rows share those blocks; ints only in the key, which then hashes alike in every process
        # (a str's hash is salted per process).
        self.prompt_embeds = prompt_embeds
        if prompt_embeds is not None:
            assert len(prompt_embeds) == self.num_prompt_tokens, "a row for each prompt position"
            self.hash_seed = hash((_EMBEDS_HASH_TAG, self.hash_seed))
        # A Whisper request's audio window (engine/audio_inputs.py): its decoder KV is that audio's too.
        self.audio = audio
        if audio is not None:
            self.hash_seed = hash(("audio", audio.content_hash, self.hash_seed))
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        # Each KV group's blocks (engine/kv_groups.py): one table unless the model mixes sliding and full layers.
        self.block_tables: list[list[int]] = [[]]
        # Hashes of the full blocks of this sequence, in order; filled as blocks fill up.
        self.block_hashes: list[int] = []
        self.num_registered_blocks = 0  # leading blocks already published to the prefix cache
        self.num_released_blocks = 0  # leading blocks released as they slid out of the window (NULL_BLOCK)
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.finish_time: float | None = None
        self.finish_reason: str | None = None
        self.num_preemptions = 0
        # Free-form slot for the waiting-queue policy (e.g. a rank score, a program id).
        self.policy_state: dict = {}
        # Another sample of the same prompt (`n` > 1): while that one is running and computing the
        # prompt, this one is not admitted; then it takes the prompt's blocks from the prefix cache.
        self.prompt_leader: Sequence | None = None
        # With params.prompt_logprobs: entry j is prompt token j + 1's (the first token has none).
        self.prompt_logprobs: list[TokenLogprobs] = []
        # With params.constraint: where the output stands in its grammar (advanced token by token).
        self.grammar: GrammarMatcher | None = None
        # With params.thinking_token_budget: where the output stands in its thinking (engine/thinking_budget.py).
        self.thinking: ThinkingBudget | None = None
        # With speculative decoding: the token ids as an array the n-gram lookup searches (grown as they grow).
        self.lookup: TokenArray | None = None
        # With goodput draft lengths: the chance its next draft holds (engine/draft_length.py).
        self.draft_acceptance: float | None = None
        self.held_draft: int | None = None  # the first draft of a proposal held back this step
        # A draft model's drafts with their distributions, for rejection sampling (engine/speculation.py).
        self.draft_proposal: DraftProposal | None = None

    @property
    def block_table(self) -> list[int]:
        """The first KV group's blocks (the only group's, for most models): the same length in every group."""
        return self.block_tables[0]

    @block_table.setter
    def block_table(self, block_ids: list[int]) -> None:
        self.block_tables = [block_ids]

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def needs_prompt_logits(self) -> bool:
        """Prompt tokens still to be scored: their KV must be computed here, not taken from the cache."""
        return self.params.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens - 1

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id!r}, {self.status.name}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={len(self.block_table)})"
        )
