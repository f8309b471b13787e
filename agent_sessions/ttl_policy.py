"""The pin TTL for a turn that ended with the program away on a tool call.

    value(T) = P(return) x P(back within T) x benefit  -  memory cost rate x T

benefit (engine-seconds): re-prefilling the program's context (superlinear in its length: attention
grows with the context, so per-token cost doubles at `attention_knee_tokens`), or, on an engine with a
host KV tier that can hold it, copying it out and back over the host link (engine/host_cache.py), or,
with a disk tier behind that (engine/disk_cache.py), those copies and the read back from the drive,
whichever is cheapest, plus the queueing a re-admitted turn would wait; memory cost rate: the share of the KV cache the pin holds, times how much that memory is
worth now (1 when the cache is contended: holding all of it for a second costs a second of the
engine). P(return) grows with the turns the program has come back from (a Beta estimate), so
long-running programs with long contexts get the longest pins. The TTL maximising value is chosen
from a grid that includes every observed duration; zero when no TTL has positive value.
The same object decides in the gateway and in the simulator (bench/agents.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent_sessions.durations import ToolDurationEstimator


@dataclass(frozen=True)
class TurnEnd:
    context_tokens: int  # KV the program holds: prompt + completion of the turn that ended
    turns_done: int  # turns finished, this one included
    returns: int  # turns that came back after a tool call, before this end
    tool_names: list[str]  # tools the turn asked for (empty: not known from the response)
    tool_calls_seen: bool  # the response itself ended in tool calls
    declares_tools: bool = True  # the request offered tools
    agent: str | None = None


@dataclass(frozen=True)
class EngineCosts:
    prefill_tokens_per_s: float  # how fast the engine re-prefills a short lost context
    kv_capacity_tokens: int  # all KV the engine instance holds
    memory_pressure: float = 1.0  # engine-seconds lost per (whole cache x second) held
    queue_wait_s: float = 0.0  # what a turn that is not pinned (and so re-queued) waits on top
    # Context length at which a prefill's attention costs as much as its matmuls (Llama-3.1-8B: ~50k).
    attention_knee_tokens: float = 50_000.0
    # The engine's host KV tier: tokens it holds (0: none), and how fast KV crosses the host link.
    host_capacity_tokens: int = 0
    host_copy_tokens_per_s: float = 400_000.0  # Llama-3.1-8B's 128 KiB a token at ~51 GB/s (PCIe Gen5)
    # The engine's disk KV tier: tokens it holds (0: none), and how fast the drive reads KV back.
    disk_capacity_tokens: int = 0
    disk_read_tokens_per_s: float = 36_000.0  # Llama-3.1-8B's 128 KiB a token at 80% of one NVMe's 6 GB/s

    def reprefill_s(self, context_tokens: int) -> float:
        return context_tokens / self.prefill_tokens_per_s * (1.0 + context_tokens / self.attention_knee_tokens)

    def miss_s(self, context_tokens: int) -> float:
        """What losing the context from the GPU costs the next turn, the cheapest way back: its re-prefill;
        its copies to the host tier and back (both happen: the save when its blocks are reused, the load
        on return); or, where only the disk tier can hold it, those copies and the drive's read between
        them (the write runs behind the steps, so it costs the engine nothing here)."""
        recompute = self.reprefill_s(context_tokens)
        copies = 2 * context_tokens / self.host_copy_tokens_per_s
        if context_tokens <= self.host_capacity_tokens:
            return min(recompute, copies)
        if context_tokens <= self.disk_capacity_tokens:
            return min(recompute, copies + context_tokens / self.disk_read_tokens_per_s)
        return recompute


@dataclass(frozen=True)
class TTLDecision:
    ttl_s: float
    p_return: float
    p_within: float  # P(back within ttl_s | returns)
    benefit_s: float
    cost_rate: float  # engine-seconds per second held
    value_s: float


@dataclass
class TTLPolicy:
    estimator: ToolDurationEstimator
    max_ttl_s: float = 120.0
    # Beta prior on coming back after a turn: a response with tool calls nearly always comes back;
    # without visible tool calls, an agent (tools offered) is judged by how often it came back so far.
    p_return_tool_calls: float = 0.97
    prior_returns: float = 2.0
    prior_leaves: float = 1.0
    grid_points: int = 48
    # Engine-seconds lost per second of holding the whole cache at full pressure. Below 1: a pin only
    # delays admissions (running work keeps going), and a returning program needs that memory again.
    memory_cost_weight: float = 0.25
    # A pin must be worth at least this (engine-seconds): setting and settling one is not free.
    min_value_s: float = 0.01

    def p_return(self, end: TurnEnd) -> float:
        if end.tool_calls_seen:
            return self.p_return_tool_calls
        if not end.declares_tools and end.returns == 0:
            return 0.0  # a chat turn: nothing says it will come back soon
        opportunities = max(end.turns_done - 1, end.returns)
        return (end.returns + self.prior_returns) / (opportunities + self.prior_returns + self.prior_leaves)

    def grid(self, end: TurnEnd) -> np.ndarray:
        base = np.geomspace(0.05, self.max_ttl_s, self.grid_points)
        # Just past each observed duration: where P(back within T) steps up.
        seen = self.estimator.support(end.tool_names, end.agent) * 1.02 + 0.01
        return np.unique(np.concatenate([base, seen[seen <= self.max_ttl_s]]))

    def choose(self, end: TurnEnd, costs: EngineCosts) -> TTLDecision:
        p_return = self.p_return(end)
        benefit = costs.miss_s(end.context_tokens) + costs.queue_wait_s
        share = min(1.0, end.context_tokens / max(1, costs.kv_capacity_tokens))
        cost_rate = self.memory_cost_weight * max(0.0, costs.memory_pressure) * share
        if p_return <= 0 or end.context_tokens <= 0 or not math.isfinite(benefit):
            return TTLDecision(0.0, p_return, 0.0, benefit, cost_rate, 0.0)
        ttls = self.grid(end)
        within = self.estimator.cdf(ttls, end.tool_names, end.agent)
        values = p_return * within * benefit - cost_rate * ttls
        best = int(np.argmax(values))
        if values[best] < self.min_value_s:
            return TTLDecision(0.0, p_return, 0.0, benefit, cost_rate, 0.0)
        return TTLDecision(float(ttls[best]), p_return, float(within[best]), benefit, cost_rate,
                           float(values[best]))


def memory_pressure(used_fraction: float, floor: float = 0.25) -> float:
    """What holding memory costs now: the cache's occupancy, never below `floor`."""
    return max(floor, min(1.0, used_fraction))
