"""One agent workload through one simulated engine under one pinning policy.

The engine, scheduler, block manager and pins are the real ones (engine/simulate.py); the Pitstop
policy is the gateway's own code: agent_sessions' TTLPolicy and ToolDurationEstimator choose each
TTL, the engine pins provisionally at the turn's finish and the decision then extends or releases
the pin, as gateway/sessions.py does; returning turns carry their program's start for the
program-first scheduler. The estimator learns online, seeing each tool gap only once the program's
next turn has arrived (virtual time), as the gateway does.

Ranked variants (`PinPolicy.rank`) order by the gateway's work score (rankers/work.py, the same
WorkTable) over true lengths, placed among the workload's own requests: "work-whole" counts a
returning turn's whole context as prefill, "work-cached" leaves out the part its live pin holds, as
gateway/sessions.py's pinned_context does."""

from __future__ import annotations

import heapq
import math
import random
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from agent_sessions.config import SessionsConfig
from agent_sessions.durations import ToolDurationEstimator
from agent_sessions.ttl_policy import EngineCosts, TTLPolicy, TurnEnd, memory_pressure
from bench.agent_workload import Program, token_ids
from engine.batch import StepShape
from engine.block_manager import BlockStats
from engine.hints import SchedulingHints
from engine.llm_engine import LLMEngine
from engine.policy import SchedulingPolicy, make_policy
from engine.program_policy import ProgramFirstPolicy
from engine.roofline import RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.simulate import Arrival, RequestResult, make_sim_engine, simulate
from rankers.work import CHARS_PER_TOKEN, WorkTable

UNLIMITED_TTL_S = 1e7  # "until the next turn": longer than any run


@dataclass(frozen=True)
class PinPolicy:
    name: str
    scheduler: str  # engine waiting-queue policy
    pins: str  # "none", "unlimited", "fixed", "pitstop"
    fixed_ttl_s: float = 0.0
    pin_budget_fraction: float = 0.5
    # Admit waiting work only when its whole prompt fits (EngineConfig.admit_whole_prompt); False: on
    # its first chunk, as vLLM does, so long re-prefills grow into preemptions.
    admit_whole_prompt: bool = True
    # The program-first scheduler's credit for requests outside programs (None: the engine's default).
    interactive_credit_s: float | None = None
    # The rank score sent with each request: "none", or the work score of true lengths, a returning
    # turn's prompt counted whole ("work-whole") or less its live pin ("work-cached").
    rank: str = "none"

    def scheduling_policy(self) -> SchedulingPolicy:
        policy = make_policy(self.scheduler)
        if self.interactive_credit_s is None:
            return policy
        assert isinstance(policy, ProgramFirstPolicy), "the credit belongs to a program-<policy> scheduler"
        return ProgramFirstPolicy(policy.inner, self.interactive_credit_s)


POLICIES = [
    PinPolicy("no-pinning", "fcfs", "none"),  # LRU prefix cache, FCFS
    PinPolicy("unlimited-pin", "fcfs", "unlimited", pin_budget_fraction=1.0),  # pin until the next turn
    PinPolicy("fixed-2s", "program-fcfs", "fixed", 2.0, pin_budget_fraction=1.0),  # Continuum's released rule
    PinPolicy("pitstop", "program-fcfs", "pitstop"),  # learned TTL + budget + program-first
    PinPolicy("program-fcfs-only", "program-fcfs", "none"),  # diagnostic: ordering without pins
    PinPolicy("no-pinning-chunk-admission", "fcfs", "none", admit_whole_prompt=False),  # vLLM-like engine
    # diagnostic: chat without the interactive credit waits behind every running program
    PinPolicy("pitstop-no-interactive-credit", "program-fcfs", "pitstop", interactive_credit_s=0.0),
]
RANKED_POLICIES = [  # bench/agents_ranked.py: the gateway's work score on agent turns, against `pitstop`
    PinPolicy("pitstop-rank-whole-prompt", "program-rank", "pitstop", rank="work-whole"),
    PinPolicy("pitstop-rank-pinned-discount", "program-rank", "pitstop", rank="work-cached"),
]


def prefill_tokens_per_s(model: RooflineStepTime, chunk: int) -> float:
    """How fast a short lost context is recomputed: chunk-sized prefill steps."""
    return chunk / model.predict(StepShape(chunk, 1, 0, chunk, chunk * chunk // 2))


def attention_knee_tokens(model: RooflineStepTime) -> float:
    """Context where a prefill's attention costs its matmuls (2 x per-token / per-pair seconds)."""
    return 2 * model._s_per_token / model._s_per_pair


@dataclass
class ChatRequest:
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


def make_chat(rate_per_s: float, duration_s: float, seed: int = 1) -> list[ChatRequest]:
    rng = random.Random(seed)
    out, t = [], 0.0
    while rate_per_s > 0:
        t += rng.expovariate(rate_per_s)
        if t > duration_s:
            break
        out.append(ChatRequest(t, int(min(8000, rng.lognormvariate(math.log(1000), 0.8))),
                               int(min(1000, rng.lognormvariate(math.log(200), 0.7)))))
    return out


def workload_work_table(programs: list[Program], chat: list[ChatRequest], prefill_weight: float) -> WorkTable:
    """Every request of the workload, (prompt, answer) tokens with whole prompts: the population a
    ranker trained on this deployment's own logs would place requests in."""
    rows = [(c.prompt_tokens, c.output_tokens) for c in chat]
    for program in programs:
        context = 0
        for spec in program.template.turns:
            context += spec.new_prompt_tokens
            rows.append((context, spec.output_tokens))
            context += spec.output_tokens
    return WorkTable({"workload": np.array(rows, dtype=np.float64)}, prefill_weight)


def work_score(table: WorkTable, prompt_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
    """The gateway's work score with the true answer length in place of the ranker's guess."""
    return table.score(table.answer_rank(output_tokens, "workload"), "workload",
                       int(prompt_tokens * CHARS_PER_TOKEN), cached_tokens)


@dataclass
class _Run:
    programs: dict[str, Program]
    finish: dict[str, float] = field(default_factory=dict)
    pending: list[tuple[float, str, float]] = field(default_factory=list)  # (arrival, tool, gap) not yet seen
    pinned_area: float = 0.0  # pinned blocks x seconds
    last_sample: float = 0.0
    decisions: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class TierRates:
    """What the TTL choice is told of the engine's KV tiers (tokens/s): KV over the host link, and read back
    from the disk tier's drive. `priced` False (an ablation): TTLs chosen as if the engine had neither."""

    host_copy: float
    disk_read: float
    priced: bool = True

    @classmethod
    def of(cls, model: RooflineStepTime, priced: bool = True) -> TierRates:
        """The rates the roofline prices the simulated engine's copies and reads at."""
        return cls(1.0 / model._s_per_kv_token_moved, 1.0 / model._s_per_disk_token_read, priced)


class AgentDriver:
    def __init__(self, engine: LLMEngine, policy: PinPolicy, programs: list[Program], prefill_rate: float,
                 config: SessionsConfig, work: WorkTable | None = None, tiers: TierRates | None = None) -> None:
        assert (work is None) == (policy.rank == "none"), "a ranked policy needs the workload's work table"
        self.engine = engine
        self.work = work
        self._pinned_until: dict[str, float] = {}  # program -> end of the pin its last decision set
        self.policy = policy
        self.run = _Run({p.program_id: p for p in programs})
        runner = engine.runner
        self.vocab = getattr(runner, "vocab_size", None) or runner.config.vocab_size  # type: ignore[attr-defined]
        self.config = config
        self.ttl_policy = TTLPolicy(ToolDurationEstimator(), max_ttl_s=config.max_ttl_s,
                                    memory_cost_weight=config.memory_cost_weight)
        self.idle_prefill_rate = prefill_rate
        # None: the gateway's defaults (the sessions config's), as for an engine it knows no profile of.
        self.tiers = tiers or TierRates(config.host_copy_tokens_per_s, config.disk_read_tokens_per_s)
        self.attention_knee = config.attention_knee_tokens
        self.chunk = engine.config.long_prefill_token_threshold
        self._step_mark = (0.0, 0)  # (time, steps) at the last decision
        self._step_s = 0.0  # recent seconds per engine step (EWMA): a loaded engine re-prefills slower
        self.capacity_tokens = engine.config.num_blocks * engine.config.block_size

    def _pin_ttl(self, last_turn: bool) -> float | None:
        pins = self.policy.pins
        if pins == "none" or last_turn:
            return None
        if pins == "unlimited":
            return UNLIMITED_TTL_S
        if pins == "fixed":
            return self.policy.fixed_ttl_s
        return self.config.provisional_ttl_s

    def arrival(self, program: Program, turn: int, at: float, prompt: list[int], pinned_tokens: int = 0) -> Arrival:
        spec = program.template.turns[turn]
        last = turn == len(program.template.turns) - 1
        hints = SchedulingHints(program_start=program.arrival_s if turn > 0 else None, in_program=True,
                                rank_score=self.rank_score(len(prompt), spec.output_tokens, pinned_tokens))
        return Arrival(at, prompt, SamplingParams(max_tokens=spec.output_tokens, ignore_eos=True),
                       f"{program.program_id}:{turn}", session_id=program.program_id,
                       pin_ttl_s=self._pin_ttl(last), hints=hints)

    def rank_score(self, prompt_tokens: int, output_tokens: int, pinned_tokens: int = 0) -> float | None:
        if self.work is None:
            return None
        cached = pinned_tokens if self.policy.rank == "work-cached" else 0
        return work_score(self.work, prompt_tokens, output_tokens, cached)

    def first_arrival(self, program: Program) -> Arrival:
        spec = program.template.turns[0]
        return self.arrival(program, 0, program.arrival_s,
                            token_ids(program.token_base, spec.new_prompt_tokens, self.vocab))

    def _prefill_rate(self, now: float) -> float:
        """Re-prefill speed as the engine runs now: one chunk per step at the recent step time."""
        last_time, last_steps = self._step_mark
        steps = self.engine.num_steps - last_steps
        if steps > 0 and now > last_time:
            step_s = (now - last_time) / steps
            self._step_s = step_s if self._step_s == 0 else 0.8 * self._step_s + 0.2 * step_s
            self._step_mark = (now, self.engine.num_steps)
        return min(self.idle_prefill_rate, self.chunk / self._step_s) if self._step_s else self.idle_prefill_rate

    def _sample_pins(self, now: float) -> None:
        run = self.run
        run.pinned_area += self.engine.block_manager.pins.num_pinned_blocks * (now - run.last_sample)
        run.last_sample = now

    def on_finish(self, result: RequestResult, tokens: list[int]) -> list[Arrival]:
        now = self.engine.clock.now()
        self._sample_pins(now)
        if ":" not in result.request_id:
            return []  # background chat
        program_id, turn_text = result.request_id.split(":")
        program, turn = self.run.programs[program_id], int(turn_text)
        turns = program.template.turns
        if turn == len(turns) - 1:
            self.run.finish[program_id] = now
            self.engine.unpin_session(program_id)
            return []
        if self.policy.pins == "pitstop":
            self._decide(program, turn, len(tokens), now)
        gap = program.tool_times_s[turn]
        heapq.heappush(self.run.pending, (now + gap, turns[turn].tool or "", gap))
        spec = turns[turn + 1]
        new = token_ids(program.token_base, spec.new_prompt_tokens, self.vocab, offset=len(tokens) * 13 + turn)
        # What the gateway knows when the turn comes back: its pin's deadline, not whether the pin
        # budget evicted it since (gateway/sessions.py's pinned_context).
        block = self.engine.config.block_size
        prompt_tokens = len(tokens) - turns[turn].output_tokens
        pinned = prompt_tokens // block * block if self._pinned_until.get(program_id, 0.0) > now + gap else 0
        return [self.arrival(program, turn + 1, now + gap, tokens + new, pinned)]

    def _decide(self, program: Program, turn: int, context_tokens: int, now: float) -> None:
        estimator = self.ttl_policy.estimator
        while self.run.pending and self.run.pending[0][0] <= now:  # gaps the gateway has seen by now
            _, tool, gap = heapq.heappop(self.run.pending)
            estimator.observe([tool], gap)
        blocks = self.engine.block_manager
        used = (blocks.num_blocks - blocks.num_free_blocks) / blocks.num_blocks
        engine, tiers = self.engine.config, self.tiers
        host, disk = (engine.num_host_blocks * engine.block_size, engine.num_disk_blocks * engine.block_size) \
            if tiers.priced else (0, 0)
        costs = EngineCosts(self._prefill_rate(now), self.capacity_tokens,
                            memory_pressure(used, self.config.memory_pressure_floor),
                            attention_knee_tokens=self.attention_knee, host_capacity_tokens=host,
                            host_copy_tokens_per_s=tiers.host_copy, disk_capacity_tokens=disk,
                            disk_read_tokens_per_s=tiers.disk_read)
        tool = program.template.turns[turn].tool
        decision = self.ttl_policy.choose(TurnEnd(context_tokens, turn + 1, turn, [tool] if tool else [],
                                                  tool_calls_seen=tool is not None), costs)
        self.run.decisions.append(decision.ttl_s)
        self._pinned_until[program.program_id] = now + decision.ttl_s
        if decision.ttl_s > 0:
            self.engine.extend_session_pin(program.program_id, decision.ttl_s)
        else:
            self.engine.unpin_session(program.program_id)


def run_policy(policy: PinPolicy, programs: list[Program], chat: list[ChatRequest], model: RooflineStepTime,
               num_blocks: int, max_model_len: int = 131072, config: SessionsConfig | None = None,
               work: WorkTable | None = None, num_host_blocks: int = 0, price_kv_tiers: bool = True,
               **engine_config: float) -> dict:
    """`price_kv_tiers` False (an ablation): TTLs chosen as if the engine had no host or disk tier;
    `engine_config` goes to EngineConfig."""
    engine = policy_engine(policy, model, num_blocks, max_model_len, num_host_blocks=num_host_blocks, **engine_config)
    rate = prefill_tokens_per_s(model, engine.config.long_prefill_token_threshold)
    kv_block_bytes = model.model.kv_bytes_per_token * engine.config.block_size
    config = config or SessionsConfig(attention_knee_tokens=attention_knee_tokens(model))
    return run_on_engine(engine, policy, programs, chat, rate, kv_block_bytes, config, work,
                         TierRates.of(model, price_kv_tiers))


def policy_engine(policy: PinPolicy, model: RooflineStepTime, num_blocks: int, max_model_len: int = 131072,
                  **engine_config: object) -> LLMEngine:
    """A simulated engine as `policy` runs it; `engine_config` goes to make_sim_engine (EngineConfig's fields,
    a disk tier's `disk_kv_path`)."""
    return make_sim_engine(model, num_blocks=num_blocks, policy=policy.scheduling_policy(),
                           pin_budget_fraction=policy.pin_budget_fraction, max_model_len=max_model_len,
                           pins_hold_admission=True, admit_whole_prompt=policy.admit_whole_prompt, **engine_config)


def workload_arrivals(driver: AgentDriver, programs: list[Program], chat: list[ChatRequest]) -> list[Arrival]:
    """Every program's first turn and every chat request, in time order (later turns follow as turns finish)."""
    vocab = driver.vocab
    firsts = [(p.arrival_s, driver.first_arrival(p)) for p in programs]
    chats = [(c.arrival_s, Arrival(c.arrival_s, token_ids(10**9 + i * 7_000_003, c.prompt_tokens, vocab),
                                   SamplingParams(max_tokens=c.output_tokens, ignore_eos=True), f"chat{i}",
                                   hints=SchedulingHints(rank_score=driver.rank_score(c.prompt_tokens,
                                                                                      c.output_tokens))))
             for i, c in enumerate(chat)]
    return [a for _, a in sorted(firsts + chats, key=lambda x: x[0])]


def run_on_engine(engine: LLMEngine, policy: PinPolicy, programs: list[Program], chat: list[ChatRequest],
                  prefill_rate: float, kv_block_bytes: int, config: SessionsConfig | None = None,
                  work: WorkTable | None = None, tiers: TierRates | None = None) -> dict:
    """The workload through `engine` (on a VirtualClock, or a subclass keeping CPU time for a real
    runner): the simulated runner, or the torch runner at small scale."""
    config = config or SessionsConfig()
    driver = AgentDriver(engine, policy, programs, prefill_rate, config, work, tiers)
    arrivals = workload_arrivals(driver, programs, chat)
    started = time.perf_counter()
    results = simulate(engine, arrivals, driver.on_finish)
    wall = time.perf_counter() - started
    return summarize(policy, driver, engine, programs, results, kv_block_bytes, wall)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summarize(policy: PinPolicy, driver: AgentDriver, engine: LLMEngine, programs: list[Program],
              results: list[RequestResult], kv_block_bytes: int, wall_s: float) -> dict:
    run = driver.run
    rejected = [r for r in results if r.finish_reason == "rejected"]
    assert not rejected, f"{len(rejected)} requests were rejected, e.g. {rejected[0].error}"
    jct = [run.finish[p.program_id] - p.arrival_s for p in programs]
    chat = [r.latency for r in results if ":" not in r.request_id and r.latency is not None]
    end = max(r.finish_time or 0.0 for r in results)
    start = min(p.arrival_s for p in programs)
    stats = engine.stats()
    return {
        "policy": policy.name, "scheduler": policy.scheduler, "pins": policy.pins,
        "pin_budget_fraction": policy.pin_budget_fraction,
        "programs": len(programs), "jct_avg_s": statistics.fmean(jct), "jct_p90_s": _p(jct, 0.9),
        "jct_p50_s": _p(jct, 0.5), "programs_per_min": 60 * len(programs) / (end - start),
        "chat_requests": len(chat), "chat_latency_avg_s": statistics.fmean(chat) if chat else None,
        "chat_latency_p90_s": _p(chat, 0.9) if chat else None,
        "output_tokens_per_s": stats.generation_tokens / (end - start),
        "prefix_hit_tokens": stats.blocks.prefix_hit_tokens, "prefill_tokens_computed": stats.prefill_tokens,
        "pin_hit_tokens": stats.pins.hit_tokens,
        "pinned_gib_avg": run.pinned_area / max(1e-9, run.last_sample) * kv_block_bytes / 2**30,
        "pin_events": {"set": stats.pins.set, "expired": stats.pins.expired, "evicted": stats.pins.evicted},
        "ttl_median_s": _p(run.decisions, 0.5) if run.decisions else None,
        "ttl_zero_share": (sum(1 for d in run.decisions if d == 0) / len(run.decisions)) if run.decisions else None,
        "preemptions": stats.num_preemptions, "simulated_s": end, "wall_s": round(wall_s, 2),
        **host_tier_summary(stats.blocks),
    }


def host_tier_summary(blocks: BlockStats) -> dict:
    """The host tier's counters, and a disk tier's where there is one (bench/disk_kv.py)."""
    host, disk = blocks.host, blocks.disk
    out: dict = {"host_blocks": 0} if host is None else {
        "host_blocks": host.total, "host_hit_tokens": blocks.host_hit_tokens, "host_saved_blocks": host.saved_blocks,
        "host_loaded_blocks": host.loaded_blocks, "host_evicted_blocks": host.evicted_blocks,
        "host_skipped_saves": host.skipped_saves}
    if disk is not None:
        out |= {"disk_blocks": disk.total, "disk_hit_tokens": blocks.disk_hit_tokens,
                "disk_saved_blocks": disk.saved_blocks, "disk_loaded_blocks": disk.loaded_blocks,
                "disk_evicted_blocks": disk.evicted_blocks, "disk_restored_blocks": disk.restored_blocks}
    return out
