"""Speculative decoding's parts (engine/speculation.py) and the engine loop with drafts, driven by a fake
runner whose next token is a function of the history, so outputs with and without speculation can be
compared token for token."""

from __future__ import annotations

import random

import numpy as np
import pytest

from engine.batch import ScheduledBatch
from engine.clock import VirtualClock
from engine.config import EngineConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.speculation import TokenArray, accepted_tokens, lookup_draft
from tests.engine.test_scheduler import run_all

EOS = 0


def lookup(tokens: list[int], k: int = 4, n_min: int = 1, n_max: int = 3) -> list[int]:
    return lookup_draft(np.array(tokens, dtype=np.int64), k, n_min, n_max)


def test_lookup_drafts_what_followed_the_latest_occurrence_of_the_longest_suffix() -> None:
    # The suffix [1, 2] occurs at 0..1 (followed by 3, 4) and at 5..6 (followed by 9, 9): latest wins.
    assert lookup([1, 2, 3, 4, 0, 1, 2, 9, 9, 5, 1, 2]) == [9, 9, 5, 1]
    # A longer suffix beats a later shorter one: [7, 1, 2] occurred only at 0..2.
    assert lookup([7, 1, 2, 3, 3, 8, 1, 2, 6, 6, 7, 1, 2]) == [3, 3, 8, 1]
    # k bounds the draft; what follows is clipped at the sequence's end.
    assert lookup([5, 6, 7, 5, 6], k=2) == [7, 5]
    assert lookup([5, 6, 5, 6], k=4) == [5, 6]


def test_lookup_respects_the_shortest_suffix_and_finds_nothing_new() -> None:
    assert lookup([1, 2, 3, 4, 5]) == []
    # Only the last token recurs: a 1-gram match, refused when suffixes must be 2 long.
    assert lookup([4, 8, 1, 9, 4], n_min=1) == [8, 1, 9, 4]
    assert lookup([4, 8, 1, 9, 4], n_min=2) == []
    assert lookup([3], n_min=1) == []
    assert lookup([3, 3], n_min=1) == [3]
    assert lookup([1, 2, 1, 2], k=0) == []


def test_lookup_agrees_with_a_plain_search() -> None:
    def plain(tokens: list[int], k: int, n_min: int, n_max: int) -> list[int]:
        for n in range(n_max, n_min - 1, -1):
            if len(tokens) <= n:
                continue
            suffix = tokens[-n:]
            for start in range(len(tokens) - n - 1, -1, -1):
                if tokens[start: start + n] == suffix:
                    return tokens[start + n: start + n + k]
        return []

    rng = random.Random(7)
    for _ in range(500):
        tokens = [rng.randrange(4) for _ in range(rng.randrange(1, 40))]
        n_min = rng.randint(1, 3)
        n_max = rng.randint(n_min, 5)
        k = rng.randint(1, 6)
        assert lookup(tokens, k, n_min, n_max) == plain(tokens, k, n_min, n_max), (tokens, k, n_min, n_max)


def test_token_array_grows_with_the_sequence() -> None:
    array, tokens = TokenArray(), []
    for step in range(700):
        tokens.append(step % 13)
        if step % 97 == 0 or step > 650:
            assert array.synced(tokens).tolist() == tokens
    assert array.synced(tokens).tolist() == tokens


def test_accepted_tokens_keeps_samples_up_to_the_first_disagreement() -> None:
    assert accepted_tokens([5, 6, 7], [5, 6, 7, 8]) == [5, 6, 7, 8]  # all drafts, then the bonus token
    assert accepted_tokens([5, 6, 7], [5, 9, 7, 8]) == [5, 9]  # the sample replaces the first wrong draft
    assert accepted_tokens([5, 6, 7], [1, 6, 7, 8]) == [1]
    assert accepted_tokens([], [4]) == [4]


@pytest.mark.parametrize("fields", [{"method": "eagle"}, {"num_speculative_tokens": 0},
                                    {"prompt_lookup_min": 3, "prompt_lookup_max": 2}, {"prompt_lookup_min": 0}])
def test_bad_speculative_configs_are_refused(fields: dict) -> None:
    with pytest.raises(ValueError):
        SpeculativeConfig(**fields)


class HistoryRunner:
    """Next token = a function of the last three tokens over a small alphabet, so outputs fall into
    loops that n-gram drafts predict; EOS after a 2 at every `eos_every`-th position. Checks drafts as the torch runner
    does: a token after the sequence's last one, and one after each draft (as if accepted)."""

    verifies_drafts = True
    eos_token_ids = (EOS,)

    def __init__(self, alphabet: int = 7, eos_every: int = 0) -> None:
        self.alphabet = alphabet
        self.eos_every = eos_every
        self.batches: list[ScheduledBatch] = []
        self.max_context = 0  # the most tokens any sequence had computed by the end of a step

    def next_token(self, history: list[int]) -> int:
        a, b, c = history[-3:] if len(history) >= 3 else (0, 0, history[-1])
        value = (a * 5 + b * 3 + c * 2 + 1) % (self.alphabet * 3)
        if self.eos_every and len(history) % self.eos_every == 0 and c == 2:
            return EOS
        return 1 + value % self.alphabet

    def execute(self, batch: ScheduledBatch) -> list[int]:
        self.batches.append(batch)
        self.max_context = max(self.max_context, *(s.num_computed_tokens + n
                                                   for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True)))
        out = []
        for i in batch.sampling_indices:
            seq, drafts = batch.seqs[i], batch.draft_token_ids[i]
            # The runner's input for this sequence ends with its last token and the drafts.
            assert seq.num_computed_tokens + batch.num_new_tokens[i] == seq.num_tokens + len(drafts)
            out += [self.next_token(seq.token_ids + drafts[:j]) for j in range(len(drafts) + 1)]
        return out


def run(speculative: SpeculativeConfig | None, prompts: list[list[int]], params: SamplingParams,
        runner: HistoryRunner | None = None, **overrides) -> tuple[dict[str, list[int]], LLMEngine, HistoryRunner]:
    config = EngineConfig(**{"block_size": 4, "num_blocks": 256, "max_num_batched_tokens": 64,
                             "long_prefill_token_threshold": 16, "max_num_seqs": 8, "speculative": speculative,
                             **overrides})
    runner = runner or HistoryRunner()
    engine = LLMEngine(config, runner, clock=VirtualClock())
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params)
    return run_all(engine), engine, runner


def prompts(count: int = 6, seed: int = 3) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 8) for _ in range(rng.randrange(3, 40))] for _ in range(count)]


def test_speculation_gives_the_same_tokens_in_fewer_steps() -> None:
    params = SamplingParams(max_tokens=60, ignore_eos=True)
    plain, plain_engine, _ = run(None, prompts(), params)
    fast, engine, runner = run(SpeculativeConfig(num_speculative_tokens=4), prompts(), params)
    assert fast == plain and all(len(t) == 60 for t in fast.values())
    spec = engine.stats().spec
    assert spec.draft_tokens > 0 and 0 < spec.accepted_tokens <= spec.draft_tokens
    # Every accepted draft saved one step of some request; steps count the whole batch, so compare totals.
    assert engine.num_steps < plain_engine.num_steps
    assert engine.stats().generation_tokens == plain_engine.stats().generation_tokens == 6 * 60
    assert max(len(d) for b in runner.batches for d in b.draft_token_ids) == 4
    assert engine.stats().blocks.used == 0


def test_stops_inside_an_accepted_run_end_the_output_where_plain_decoding_ends_it() -> None:
    params = SamplingParams(max_tokens=50)
    runner_args = {"alphabet": 3, "eos_every": 23}
    plain, _, _ = run(None, prompts(8, seed=5), params, HistoryRunner(**runner_args))
    fast, engine, _ = run(SpeculativeConfig(), prompts(8, seed=5), params, HistoryRunner(**runner_args))
    assert fast == plain
    assert any(t[-1] == EOS for t in fast.values()) and any(len(t) == 50 for t in fast.values())
    assert engine.stats().spec.accepted_tokens > 0


def test_drafts_stay_inside_the_budget_and_the_limits() -> None:
    params = SamplingParams(max_tokens=17, ignore_eos=True)
    plain, _, _ = run(None, prompts(), params, max_num_batched_tokens=10, long_prefill_token_threshold=8)
    fast, engine, runner = run(SpeculativeConfig(num_speculative_tokens=8), prompts(), params,
                               max_num_batched_tokens=10, long_prefill_token_threshold=8)
    assert fast == plain and all(len(t) == 17 for t in fast.values())
    assert all(sum(b.num_new_tokens) <= 10 for b in runner.batches)
    assert any(b.has_drafts for b in runner.batches)
    # The context limit: a prompt near max_model_len drafts no further than it.
    long_prompt = [[1, 2, 3] * 9]
    plain, _, _ = run(None, long_prompt, SamplingParams(max_tokens=100, ignore_eos=True), max_model_len=40)
    fast, _, runner = run(SpeculativeConfig(num_speculative_tokens=8), long_prompt,
                          SamplingParams(max_tokens=100, ignore_eos=True), max_model_len=40)
    assert fast == plain and len(fast["r0"]) == 40 - 27
    assert runner.max_context == 40 - 1  # the last token is never computed


def test_accepted_tokens_reach_the_prefix_cache_and_rejected_ones_never_do() -> None:
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    fast, engine, _ = run(SpeculativeConfig(), prompts(4), params)
    assert engine.stats().spec.draft_tokens > engine.stats().spec.accepted_tokens  # some drafts were rejected
    bm = engine.block_manager
    published = [b for b in bm.blocks if b.hash is not None]
    assert published
    # Each published block holds tokens that some finished sequence really has at that block's place.
    whole = [p + fast[f"r{i}"] for i, p in enumerate(prompts(4))]
    for block in published:
        assert block.token_ids is not None
        assert any(tuple(seq[j: j + 4]) == block.token_ids for seq in whole for j in range(0, len(seq) - 3, 4))
    # A second request continuing the first conversation finds all its full blocks cached.
    follow = whole[0] + [3]
    engine.add_request("again", follow, SamplingParams(max_tokens=1))
    engine.step()
    assert engine.stats().blocks.prefix_hit_tokens == (len(follow) - 1) // 4 * 4


def test_memory_pressure_drops_drafts_and_outputs_still_match() -> None:
    params = SamplingParams(max_tokens=30, ignore_eos=True)
    plain, _, _ = run(None, prompts(6), params, num_blocks=24)
    fast, engine, _ = run(SpeculativeConfig(num_speculative_tokens=6), prompts(6), params, num_blocks=24)
    assert fast == plain
    assert engine.stats().blocks.used == 0


def test_a_runner_that_cannot_check_drafts_is_refused() -> None:
    from tests.engine.fakes import CountingRunner

    with pytest.raises(ValueError, match="samples after each draft"):
        LLMEngine(EngineConfig(speculative=SpeculativeConfig()), CountingRunner())
