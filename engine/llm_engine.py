"""One engine instance: requests in, a step at a time out. Same code under the torch runner on a wall
clock and under the simulated runner on a virtual clock; only the runner and the clock differ."""

from __future__ import annotations

import math
import secrets
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING

from engine.banned_tokens import check_token_ids, with_bad_word_ids
from engine.batch import ScheduledBatch
from engine.block_manager import BlockManager
from engine.clock import Clock, WallClock
from engine.config import EngineConfig
from engine.disk_tier import DiskTier
from engine.drafters import make_draft_length, make_drafter
from engine.fused_decode import max_fused_steps
from engine.hints import NO_HINTS, SchedulingHints
from engine.kv_groups import KVGroupLayout
from engine.lora_registry import LoRAAdapter, LoRAAdapters
from engine.model.config import ModelConfig
from engine.outputs import EngineStats, RequestOutput, StepRecord
from engine.policy import FCFSPolicy, SchedulingPolicy
from engine.reasoning import THINK_END, THINK_START
from engine.runner import ModelRunner
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence
from engine.session_kv import SessionKV, SessionPins
from engine.speculation import SpeculationCounters, accepted_tokens
from engine.thinking_budget import ThinkingBudget, ThinkingTags, force_thinking_ends

if TYPE_CHECKING:
    import torch

    from engine.audio_inputs import AudioInput
    from engine.detokenizer import IncrementalDetokenizer
    from engine.image_inputs import ImageInput
    from engine.logprobs import TokenLogprobs
    from engine.structured_output import GrammarCompiler
    from engine.tokenizer import Tokenizer


class LLMEngine(SessionPins, LoRAAdapters):
    def __init__(self, config: EngineConfig, runner: ModelRunner, clock: Clock | None = None,
                 policy: SchedulingPolicy | None = None, tokenizer: Tokenizer | None = None,
                 record_steps: bool = False) -> None:
        # Imported here: it imports torch, which importing gateway.app must not.
        from engine.mamba_state import hybrid_engine_config

        config = hybrid_engine_config(config, runner)  # a Mamba-2 hybrid's limits (engine/mamba_state.py)
        window, hybrid = getattr(runner, "attention_window", None), getattr(runner, "hybrid_attention", None)
        groups: KVGroupLayout | None = getattr(runner, "kv_groups", None)  # sliding and full layers' KV apart
        self.block_manager = BlockManager.for_model(config, window, groups)
        self.block_manager.prefix_limit = getattr(getattr(runner, "mamba_states", None), "resumable_blocks", None)
        kv_limit = self.block_manager.max_context_tokens(config.long_prefill_token_threshold) or config.max_model_len
        self.config = config = replace(config, max_model_len=min(config.max_model_len, kv_limit),
                                       attention_window=None if groups else window, hybrid_attention=hybrid)
        self.runner, self.clock, self.tokenizer = runner, clock or WallClock(), tokenizer
        if (vision := getattr(runner, "vision", None)) is not None:  # a chunk must hold a Gemma 3 image
            vision.check_chunk(min(config.max_num_batched_tokens, config.long_prefill_token_threshold))
        for tier in ("host", "disk"):
            if getattr(config, f"num_{tier}_blocks") > getattr(runner, f"num_{tier}_blocks", 0):
                raise ValueError(f"a {tier} KV tier of {getattr(config, f'num_{tier}_blocks')} blocks needs a runner "
                                 f"with that many {tier} blocks (this one has {getattr(runner, f'num_{tier}_blocks', 0)})")
        self.disk_tier = DiskTier(self.block_manager, runner, config, self.clock.now()) if config.num_disk_blocks else None
        self.spec = SpeculationCounters()
        self.scheduler = Scheduler(config, self.block_manager, policy or FCFSPolicy(),
                                   make_drafter(config, runner, self.spec), make_draft_length(config, runner, self.spec))
        self.sequences: dict[str, Sequence] = {}
        self.detokenizers: dict[str, IncrementalDetokenizer] = {}
        self.sessions: OrderedDict[str, SessionKV] = OrderedDict()
        self.loras: dict[str, LoRAAdapter] = {}
        self._retired_loras: set[int] = set()
        self._next_lora_id = 1
        self.step_log: list[StepRecord] | None = [] if record_steps else None
        self.num_steps = self.prefill_tokens = self.generation_tokens = 0
        self._grammars: GrammarCompiler | None = None  # made on the first structured request
        self._grammars_lock = threading.Lock()
        self._tags: ThinkingTags | None = None  # the thinking block's tags as token ids, found on first use
        # Fusing skips per-step records and stop strings: only for runners that offer it, unrecorded.
        # A drafter may draft in any step, so speculation runs every step on its own.
        self._can_fuse = (hasattr(runner, "execute_decode_steps") and not record_steps and tokenizer is None
                          and config.speculative is None)

    # ---- requests -----------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
                    priority: float = 0.0, session_id: str | None = None, pin_ttl_s: float | None = None,
                    arrival_time: float | None = None, hints: SchedulingHints = NO_HINTS,
                    prompt_leader: str | None = None, lora: str | None = None, images: list[ImageInput] | None = None,
                    prompt_embeds: torch.Tensor | None = None, audio: AudioInput | None = None) -> Sequence:
        """`prompt_leader`: another sample's request id (`n` > 1), whose prompt blocks this one waits for (Sequence.
        prompt_leader). `lora`: an adapter's name. `images`, `prompt_embeds`: engine/image_inputs.py, prompt_embeds.py.
        `audio`: a Whisper model's window (engine/audio_inputs.py), which such a model's every request brings."""
        if (audio is not None) != getattr(self.runner, "takes_audio", False):
            raise InvalidRequestError("this model transcribes audio: send it to /v1/audio/transcriptions or "
                                      "/v1/audio/translations" if audio is None else "this model takes no audio",
                                      "model", "model_not_supported")
        self.validate_request(prompt_token_ids, pin_ttl_s, params=params, images=len(images or ()))
        assert prompt_embeds is None or self.config.enable_prompt_embeds, "prompt embeddings are disabled"
        if request_id in self.sequences:
            raise InvalidRequestError(f"request id {request_id!r} is already in flight", "request_id")
        if getattr(self.scheduler.drafter, "shares_noise", False) and not params.greedy and params.seed is None:
            # Its own random seed: the draft model then draws with the noise the request will be sampled
            # with (engine/draft_model.py), and the output is still a fresh sample.
            params = replace(params, seed=secrets.randbits(62))
        params = with_bad_word_ids(params, self.tokenizer)
        seq = Sequence(request_id, prompt_token_ids, params, self.clock.now() if arrival_time is None else arrival_time,
                       priority=priority, session_id=session_id, pin_ttl_s=pin_ttl_s, hints=hints,
                       lora_id=self.lora_id(lora), images=images or (), prompt_embeds=prompt_embeds, audio=audio)
        config = getattr(self.runner, "config", None)
        if isinstance(config, ModelConfig) and config.long_rope_offset(seq.num_prompt_tokens):
            # LongRoPE: a long prompt's K/V are turned by the long frequencies, a short one's by the short
            # ones (engine/model/rope.py): their blocks must not stand in for each other in the prefix cache.
            seq.hash_seed = hash(("longrope", seq.hash_seed))
        if prompt_leader is not None:
            seq.prompt_leader = self.sequences.get(prompt_leader)
        if params.constraint is not None:
            seq.grammar = self.grammars().matcher(params.constraint)
        if params.thinking_token_budget is not None:
            seq.thinking = ThinkingBudget.for_prompt(params.thinking_token_budget, self._thinking_tags(),
                                                     prompt_token_ids)
        self.sequences[request_id] = seq
        if session_id is not None:
            self._hold_pin_for_arrival(session_id, seq.arrival_time)
        if self.tokenizer is not None:
            from engine.detokenizer import IncrementalDetokenizer

            self.detokenizers[request_id] = IncrementalDetokenizer(
                self.tokenizer, params.stop, [] if prompt_embeds is not None else prompt_token_ids, skip_special_tokens=params.skip_special_tokens,
                include_stop=params.include_stop_str_in_output)
        self.scheduler.add(seq)
        return seq

    def validate_request(self, prompt_token_ids: list[int], pin_ttl_s: float | None = None,
                         vocab_size: int | None = None, params: SamplingParams | None = None, images: int = 0) -> None:
        """The checks `add_request` makes; callable from another thread (reads only the config)."""
        if not prompt_token_ids:
            raise InvalidRequestError("the prompt is empty", "prompt")
        if images and getattr(self.runner, "image_features", None) is None:
            raise InvalidRequestError("this model does not take image inputs", "messages", "unsupported")
        if len(prompt_token_ids) >= self.config.max_model_len:
            raise InvalidRequestError(
                f"the prompt has {len(prompt_token_ids)} tokens; this model's context is "
                f"{self.config.max_model_len} tokens, including at least one for the answer", "prompt",
                "context_length_exceeded")  # OpenAI's code: what a gateway's context-window fallback looks for
        if vocab_size is not None and not all(0 <= t < vocab_size for t in prompt_token_ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab_size})", "prompt")
        if pin_ttl_s is not None and pin_ttl_s < 0:
            raise InvalidRequestError("pin_ttl_s must be >= 0", "pin_ttl_s")
        if params is None:
            return
        if (params.logprobs is not None or params.prompt_logprobs is not None) \
                and not hasattr(self.runner, "step_logprobs"):
            raise InvalidRequestError("this engine's runner computes no log-probabilities (a simulated one)",
                                      "logprobs")
        check_token_ids(with_bad_word_ids(params, self.tokenizer), vocab_size, self.tokenizer is not None,
                        self.runner.eos_token_ids)
        if params.constraint is not None:
            if not self.can_constrain:
                raise InvalidRequestError("this engine cannot hold answers to a grammar (it needs a tokenizer and "
                                          "a runner that computes logits, not a simulated one)", params.constraint.param)
            self.grammars().check(params.constraint)

    @property
    def can_constrain(self) -> bool:
        """Can answers be held to a grammar: a tokenizer, and a runner that computes logits."""
        return self.tokenizer is not None and hasattr(self.runner, "step_logprobs")

    def _thinking_tags(self) -> ThinkingTags:
        if self.tokenizer is None:
            raise InvalidRequestError("this engine has no tokenizer to find the thinking tags in: "
                                      "thinking_token_budget is not available", "thinking_token_budget")
        if self._tags is None:
            self._tags = ThinkingTags(tuple(self.tokenizer.encode(THINK_START)), tuple(self.tokenizer.encode(THINK_END)))
        return self._tags

    def grammars(self) -> GrammarCompiler:
        """The engine's grammar compiler (engine/structured_output.py), made once on first use."""
        with self._grammars_lock:
            if self._grammars is None:
                from engine.structured_output import shared_compiler

                assert self.tokenizer is not None
                vocab = getattr(getattr(self.runner, "config", None), "vocab_size", None) or self.tokenizer.vocab_size
                self._grammars = shared_compiler(self.tokenizer.to_json(), vocab, tuple(self.runner.eos_token_ids))
            return self._grammars

    def abort(self, request_id: str) -> None:
        seq = self.sequences.pop(request_id, None)
        self.detokenizers.pop(request_id, None)
        if seq is not None and not seq.is_finished:
            self.scheduler.abort(seq)
            seq.finish_reason = "abort"
            self._release_lora(seq)

    def has_unfinished(self) -> bool:
        return len(self.scheduler) > 0

    # ---- the step -----------------------------------------------------------------------------

    def step(self, horizon: float = math.inf) -> list[RequestOutput]:
        """One step. `horizon` is the time of the next outside event (an arrival): a runner that can
        fuse pure-decode steps (the simulated one) may run several up to it, with the same result."""
        start = self.clock.now()
        if self.disk_tier is not None:
            self.disk_tier.before_step(start)
        batch = self.scheduler.schedule(start)
        if self.disk_tier is not None:
            self.disk_tier.after_schedule()
        if not batch:
            return []
        batch.kv_transfers = self.block_manager.take_transfers()
        if self._can_fuse and not self.scheduler.preempted_last_step and not batch.has_drafts:
            steps = max_fused_steps(batch, self.config, self.block_manager.num_free_blocks)
            if steps > 1:
                deadline = self.next_event_time()
                horizon = horizon if deadline is None else min(horizon, deadline)
                steps = self.runner.plan_decode_steps(batch, steps, horizon)  # type: ignore[attr-defined]
                if steps > 1:
                    return self._fused_decode(batch, steps)
        samples = [batch.samples(i) for i in range(len(batch))]
        token_ids = force_thinking_ends(batch, self.runner.execute(batch))
        logprobs: dict[int, TokenLogprobs] = getattr(self.runner, "step_logprobs", None) or {}
        prompt_logprobs: dict[int, list[TokenLogprobs]] = getattr(self.runner, "step_prompt_logprobs", None) or {}
        embeddings: dict[int, list[float]] = getattr(self.runner, "step_embeddings", None) or {}
        for i, scored in prompt_logprobs.items():
            batch.seqs[i].prompt_logprobs += scored
        end = self.clock.now()
        self.num_steps += 1
        if self.step_log is not None:
            self.step_log.append(StepRecord(batch.shape, end - start))
        outputs: list[RequestOutput] = []
        row = 0  # the runner's sampled rows: one per sampling sequence, plus one per draft token
        for i, (seq, num_new, drafts, sampled) in enumerate(zip(batch.seqs, batch.num_new_tokens,
                                                                 batch.draft_token_ids, samples, strict=True)):
            if sampled:  # a draft model's proposal was checked (engine/step_rows.py); the next is drawn anew
                seq.draft_proposal = None
            if drafts:
                outputs.append(self._verified(seq, drafts, token_ids[row: row + len(drafts) + 1], logprobs, row, end))
                row += len(drafts) + 1
                continue
            seq.num_computed_tokens += num_new
            if num_new > 1 or seq.num_computed_tokens - num_new < seq.num_prompt_tokens:  # not a decode
                self.prefill_tokens += num_new
            if sampled:
                chosen = logprobs.get(row)
                first = seq.num_output_tokens == 0
                outputs.append(self._append_token(seq, token_ids[row], end))
                if seq.held_draft is not None:  # a goodput policy held its drafts back: would they have held?
                    self.scheduler.draft_length.shadow(seq, token_ids[row])  # type: ignore[union-attr]
                row += 1
                if chosen is not None:
                    outputs[-1].logprobs = [chosen]
                if first and seq.params.prompt_logprobs is not None:
                    outputs[-1].prompt_logprobs = seq.prompt_logprobs
                if first and seq.params.embed:
                    outputs[-1].embedding = embeddings.get(i)
        return outputs

    def _verified(self, seq: Sequence, drafts: list[int], sampled: list[int], logprobs: dict[int, TokenLogprobs],
                  first_row: int, now: float) -> RequestOutput:
        """A decode step that checked `drafts`: the accepted tokens appended one at a time, as single
        steps would have appended them (stops, lengths and stop strings end it where they would)."""
        kept = accepted_tokens(drafts, sampled)
        if self.scheduler.draft_length is not None:
            self.scheduler.draft_length.observe(seq, len(drafts), len(kept) - 1)
        self.spec.drafted_steps += 1
        self.spec.draft_tokens += len(drafts)
        self.spec.accepted_tokens += len(kept) - 1
        # The step computed the last token and every draft; the KV of the accepted ones stands. Each
        # token is appended with the tokens before it computed, as after a plain decode step.
        base = seq.num_computed_tokens + 1
        output: RequestOutput | None = None
        for k, token in enumerate(kept):
            seq.num_computed_tokens = base + k
            self.block_manager.register_computed(seq, seq.num_computed_tokens)
            step = self._append_token(seq, token, now)
            chosen = logprobs.get(first_row + k)
            if chosen is not None:
                step.logprobs = [chosen]
            output = step if output is None else output.followed_by(step)
            if step.finished:
                break
        assert output is not None
        return output

    def _fused_decode(self, batch: ScheduledBatch, steps: int) -> list[RequestOutput]:
        for seq in batch.seqs:  # the blocks the single steps would have taken one at a time
            self.block_manager.reserve(seq, seq.num_computed_tokens + steps)
        batch.kv_transfers += self.block_manager.take_transfers()  # blocks evicted to the host for them
        tokens = self.runner.execute_decode_steps(batch, steps)  # type: ignore[attr-defined]
        end = self.clock.now()
        self.num_steps += steps
        outputs = []
        for seq, new_tokens in zip(batch.seqs, tokens, strict=True):
            assert len(new_tokens) == steps
            seq.token_ids.extend(new_tokens[:-1])
            seq.num_computed_tokens += steps
            self.generation_tokens += steps - 1
            self.block_manager.register_computed(seq, seq.num_computed_tokens)
            output = self._append_token(seq, new_tokens[-1], end)
            output.new_token_ids = new_tokens
            outputs.append(output)
        return outputs

    def _append_token(self, seq: Sequence, token_id: int, now: float) -> RequestOutput:
        seq.token_ids.append(token_id)
        if seq.thinking is not None:
            seq.thinking.observe(token_id)
        self.generation_tokens += 1
        if seq.first_token_time is None:
            seq.first_token_time = now
        params = seq.params
        reason = None
        # Under min_tokens nothing but the length ends the output (the sampler also masks the stop tokens).
        stops_armed = seq.num_output_tokens >= params.min_tokens
        if seq.num_output_tokens > params.min_tokens and not params.ignore_eos \
                and (token_id in self.runner.eos_token_ids or token_id in params.stop_token_ids):
            reason = "stop"
        elif seq.grammar is not None and (not seq.grammar.consume(token_id) or seq.grammar.complete):
            reason = "stop"  # the answer is whole (or, were the mask ever bypassed, off its grammar)
        else:
            num_tokens = len(seq.token_ids)
            if num_tokens - seq.num_prompt_tokens >= params.max_tokens or num_tokens >= self.config.max_model_len:
                reason = "length"
        text = ""
        detokenizer = self.detokenizers.get(seq.request_id)
        if detokenizer is not None:
            delta = detokenizer.add([token_id], stops_armed)  # special tokens such as EOS decode to nothing
            text = delta.text
            if delta.stop is not None:
                reason = "stop"
            elif reason is not None:
                text += detokenizer.flush()
        if reason is not None:
            self._finish(seq, reason, now)
        return RequestOutput(seq.request_id, [token_id], text, reason is not None, reason,
                             seq.num_prompt_tokens, seq.num_cached_tokens, seq.num_output_tokens)

    def _finish(self, seq: Sequence, reason: str, now: float) -> None:
        seq.finish_reason, seq.finish_time = reason, now
        if seq.session_id is not None:
            self._remember_session(seq, now)  # and pin it, before the blocks are freed
        self.scheduler.finish(seq)
        del self.sequences[seq.request_id]
        self.detokenizers.pop(seq.request_id, None)
        self._release_lora(seq)

    def next_event_time(self) -> float | None:
        """When something timed next happens inside the engine: a pin's deadline, a disk read ahead done."""
        disk = self.disk_tier.next_read_done() if self.disk_tier is not None else None
        return min((t for t in (self.next_pin_deadline(), disk) if t is not None), default=None)

    def close(self, clean: bool = True) -> None:
        """Ends the instance: a disk tier keeps what is worth keeping for the next (engine/disk_tier.py;
        `clean` False after a crash), then the runner lets go of its files and worker processes."""
        if self.disk_tier is not None:
            self.disk_tier.close(clean)
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    def stats(self) -> EngineStats:
        return EngineStats(
            blocks=self.block_manager.stats(), block_size=self.config.block_size,
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            num_preemptions=self.scheduler.num_preemptions, num_steps=self.num_steps,
            prefill_tokens=self.prefill_tokens, generation_tokens=self.generation_tokens,
            pins=self.block_manager.pins.counters, spec=replace(self.spec),
            kv_cache_dtype=getattr(self.runner, "kv_cache_dtype", "auto"), num_loras=len(self.loras),
            quantization=getattr(self.runner, "quantization", None),
            tensor_parallel_size=getattr(self.runner, "tensor_parallel_size", 1),
        )
