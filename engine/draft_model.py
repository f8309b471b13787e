"""Speculative decoding with a draft model: a smaller model of the same vocabulary writes each decoding
request's next k tokens; the engine checks them in its decode step as it checks n-gram drafts
(engine/speculation.py).

How a sampled request's drafts are checked is SpeculativeConfig.acceptance_method's choice. Under
"rejection_sampler" (the default, vLLM's) the draft samples each draft from its processed distribution q
(the request's temperature, top-p/top-k/min-p, `logit_bias`, penalties and `min_tokens`, with a seed of
its own for a seeded request) and keeps q beside it (`DraftProposal`, [drafts, vocab] on the device, only
for sampled requests); the target keeps a draft x with probability min(1, p(x) / q(x)) and otherwise draws
from the residual (engine/model/rejection_sampler.py). The output has the target's distribution, and a
draft holds with probability 1 - TV(p, q), the most any rule that keeps it can hold.

Under "coupled", the draft samples as the request is sampled, with the same noise. Sampling is an
exponential race (engine/model/sampler.py: the argmax of p / E, E drawn from a generator seeded by the
request's seed and the output token's index), so the draft, given the request's parameters and seed,
draws argmax(q / E) with the very E the target will draw argmax(p / E) with at that place, and the
target keeps its own sample: where q is close to p the two pick the same token (a Gumbel-max coupling),
and the output is the one plain decoding gives whatever the draft writes, token for token. An unseeded
sampled request is given a random seed when it arrives (engine/llm_engine.py, `shares_noise`), which keeps
it a fresh sample. Greedy requests are argmax for both, under either method.

The draft runs on its own runner and KV cache, with its own block manager (prefix caching included), so
the target's scheduler, blocks, pins and host tier are untouched. Each request has a shadow sequence in
the draft with the request's tokens. A proposal is one forward pass over every request's tokens the
draft has not computed yet (the prompt the first time, then the tokens the last step accepted: one to
k + 1), which samples the first draft, then k - 1 passes of one token a request. A long prompt is caught
up a chunk a step (`max_catch_up`, the engine's `long_prefill_token_threshold`), drafting only once it is
in, so no decode step waits on a whole draft prefill. The draft's KV for its
own drafts is never published to its prefix cache (they are lookahead slots, as the target's drafts
are) and is overwritten by the next proposal, which recomputes from the first token the draft had not
seen accepted.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.batch import ScheduledBatch
from engine.block_manager import BlockManager
from engine.config import SpeculativeConfig
from engine.model.sampler import draft_seed
from engine.sequence import Sequence
from engine.speculation import DraftProposal, SpeculationCounters

if TYPE_CHECKING:
    from engine.torch_runner import TorchModelRunner

UNBOUNDED = 1 << 30  # a shadow's max_tokens: its request's own limits cap each proposal


class DraftModelProposer:
    """The scheduler's drafter (engine/scheduler.py `Drafter`) over a draft model's runner.

    `num_blocks` of `block_size` tokens: the draft's KV cache, as many tokens as the target's by default
    (`from_target`), so a request the target holds fits in the draft too, drafts aside."""

    shift = 0  # the request's leading tokens its shadow leaves out (an EAGLE head's: engine/eagle.py)
    reads_target_features = False  # its KV is its own weights' alone: a target update leaves its cache

    def __init__(self, runner: TorchModelRunner, config: SpeculativeConfig, num_blocks: int, block_size: int,
                 enable_prefix_caching: bool = True, counters: SpeculationCounters | None = None,
                 max_catch_up: int = 512) -> None:
        self.runner = runner
        self.config = config
        self.block_size = block_size
        self.block_manager = BlockManager(num_blocks, block_size, enable_prefix_caching=enable_prefix_caching)
        # coupled: seeds unseeded sampled requests (engine/llm_engine.py add_request), to draw with their noise
        self.shares_noise = config.acceptance_method == "coupled"
        self.proposes_distributions = config.acceptance_method == "rejection_sampler"
        runner.sampler.keep_probs = self.proposes_distributions
        self.shadows: dict[str, tuple[Sequence, Sequence]] = {}  # request id -> (the request, its shadow)
        self.counters = counters or SpeculationCounters()  # the engine's: it counts the draft's passes
        self.max_catch_up = max_catch_up  # tokens a request's shadow computes in one pass at most
        self._round_start = (0, 0)  # the counters' draft and accepted tokens when the weights last changed

    @classmethod
    def from_target(cls, target: TorchModelRunner, config: SpeculativeConfig, num_blocks: int, block_size: int,
                    enable_prefix_caching: bool = True, counters: SpeculationCounters | None = None,
                    max_catch_up: int = 512) -> DraftModelProposer:
        """A draft runner for `config.model` on the target's device and dtype; refused (ValueError) when
        its vocabulary is not the target's."""
        from engine.torch_runner import TorchModelRunner

        assert config.model is not None
        path = Path(config.model)
        if not (path / "config.json").is_file():
            raise ValueError(f"speculative model {config.model!r} is not a model folder (no config.json)")
        runner = TorchModelRunner(path, num_blocks, block_size, device=target.device, dtype=target.dtype,
                                  hybrid_kv_cache=False)  # one group: its block manager's
        if runner.config.vocab_size != target.config.vocab_size:
            raise ValueError(f"the draft model's vocabulary ({runner.config.vocab_size} tokens) is not the target's "
                             f"({target.config.vocab_size}): a draft must share the target's tokenizer")
        return cls(runner, config, num_blocks, block_size, enable_prefix_caching, counters, max_catch_up)

    # ---- shadows --------------------------------------------------------------------------------

    def forget(self, seq: Sequence) -> None:
        """`seq` finished or was preempted (a preempted one starts again): its shadow's blocks go back,
        their full blocks still cached for it, and its drafts' distributions with them."""
        seq.draft_proposal = None
        entry = self.shadows.pop(seq.request_id, None)
        if entry is not None:
            self.block_manager.free(entry[1])

    def _shadow(self, seq: Sequence) -> Sequence:
        """`seq`'s shadow, its token ids brought up to `seq`'s (its computed KV kept where still valid)."""
        entry = self.shadows.get(seq.request_id)
        if entry is None or entry[0] is not seq:
            if entry is not None:
                self.block_manager.free(entry[1])
            seed = draft_seed(seq.params.seed) if self.proposes_distributions else seq.params.seed
            params = replace(seq.params, max_tokens=UNBOUNDED, logprobs=None, prompt_logprobs=None,
                             constraint=None, embed=False, thinking_token_budget=None, seed=seed)
            prompt = seq.token_ids[self.shift: max(seq.num_prompt_tokens, self.shift + 1)]
            shadow = Sequence(seq.request_id, prompt, params, seq.arrival_time)
            shadow.num_prompt_tokens = seq.num_prompt_tokens - self.shift  # its outputs are the request's
            self.shadows[seq.request_id] = (seq, shadow)
        else:
            shadow = entry[1]
        shadow.token_ids.extend(seq.token_ids[shadow.num_tokens + self.shift:])
        shadow.num_computed_tokens = min(shadow.num_computed_tokens, shadow.num_tokens - 1)  # its last to compute
        return shadow

    def _start(self, shadow: Sequence, lookahead: int) -> int | None:
        """Blocks for the tokens `shadow` computes this pass (those it has not computed, at most
        `max_catch_up`) and, where that is all of them, `lookahead` drafts after them; how many it computes,
        or None (its shadow freed) when the draft's cache is full."""
        bm = self.block_manager
        cached = bm.match_prefix(shadow) if not shadow.block_table else []
        behind = shadow.num_tokens - (len(cached) * self.block_size if cached else shadow.num_computed_tokens)
        new = min(behind, self.max_catch_up)
        if bm.allocate_slots(shadow, new, cached, num_lookahead_tokens=lookahead if new == behind else 0):
            return new
        del self.shadows[shadow.request_id]
        bm.free(shadow)
        return None

    # ---- proposing ------------------------------------------------------------------------------

    def propose(self, requests: list[tuple[Sequence, int]]) -> list[list[int]]:
        """Drafts for each (decoding request, the most tokens it may take), in order: up to
        `num_speculative_tokens` each, fewer where the room, the draft's context length or its cache
        run out, and none after a draft that is an end-of-sequence token. A request the draft is more than
        `max_catch_up` tokens behind (a long prompt, its first time) gets a chunk of them computed and no
        drafts, so no step waits on a long draft prefill."""
        drafts: list[list[int]] = [[] for _ in requests]
        limit = self.runner.max_model_len
        wanted: list[tuple[int, Sequence, int]] = []  # (index, shadow, drafts wanted)
        catching_up: list[tuple[Sequence, int]] = []  # (shadow, tokens computed this pass)
        for index, (seq, room) in enumerate(requests):
            k = min(self.config.num_speculative_tokens, room, limit - seq.num_tokens)
            if k < 1:
                continue
            shadow = self._shadow(seq)
            new = self._start(shadow, k - 1)
            if new is None:
                continue
            if shadow.num_computed_tokens + new < shadow.num_tokens:
                catching_up.append((shadow, new))
            else:
                wanted.append((index, shadow, k))
        if not wanted and not catching_up:
            return drafts
        probs: dict[int, list[torch.Tensor]] = {}  # index -> each draft's distribution (sampled requests)
        batch = ScheduledBatch(block_size=self.block_size)
        for shadow, new in catching_up:  # no token sampled for these: the runner returns the others' only
            batch.add(shadow, new)
        for _, shadow, _ in wanted:
            batch.add(shadow, shadow.num_tokens - shadow.num_computed_tokens)
        self._pass(batch, wanted, drafts, probs)
        for shadow, new in catching_up:
            shadow.num_computed_tokens += new
        own_tokens = {index: shadow.num_tokens for index, shadow, _ in wanted}
        for step in range(1, max((k for _, _, k in wanted), default=1)):
            active = [(i, s, k) for i, s, k in wanted if k > step and drafts[i][-1] not in self._ends(s)]
            if not active:
                break
            batch = ScheduledBatch(block_size=self.block_size)
            for index, shadow, _ in active:
                shadow.token_ids.append(drafts[index][-1])  # the draft before, as this pass's input
                shadow.num_computed_tokens = shadow.num_tokens - 1
                batch.add(shadow, 1)
            self._pass(batch, active, drafts, probs)
        for index, shadow, _ in wanted:  # back to the request's own tokens, all of them computed
            del shadow.token_ids[own_tokens[index]:]
            shadow.num_computed_tokens = shadow.num_tokens
            if index in probs:  # one tensor a request: the passes' [rows, vocab] tensors go now
                seq = requests[index][0]
                seq.draft_proposal = DraftProposal(seq.num_tokens, list(drafts[index]), torch.stack(probs[index]))
        return drafts

    def _ends(self, shadow: Sequence) -> tuple[int, ...]:
        """Tokens that end the request's output: nothing a draft writes after one is worth checking."""
        params = shadow.params
        return params.stop_token_ids if params.ignore_eos else (*params.stop_token_ids, *self.runner.eos_token_ids)

    def _pass(self, batch: ScheduledBatch, rows: list[tuple[int, Sequence, int]], drafts: list[list[int]],
              probs: dict[int, list[torch.Tensor]]) -> None:
        tokens = self.runner.execute(batch)
        self.counters.draft_passes += 1
        assert len(tokens) == len(rows)
        drawn_from = self.runner.sampler.probs  # sampled rows' distributions, with proposes_distributions
        for row, ((index, _, _), token) in enumerate(zip(rows, tokens, strict=True)):
            drafts[index].append(token)
            if row in drawn_from:
                probs.setdefault(index, []).append(drawn_from[row])

    def new_round(self) -> float | None:
        """The acceptance rate of the drafts checked since the last call (a weight update: engine/weight_updates.py),
        None where none was; the next round starts now."""
        drafted, accepted = self.counters.draft_tokens, self.counters.accepted_tokens
        rate = ((accepted - self._round_start[1]) / (drafted - self._round_start[0])
                if drafted > self._round_start[0] else None)
        self._round_start = (drafted, accepted)
        return rate

    def close(self) -> None:
        self.runner.close()
