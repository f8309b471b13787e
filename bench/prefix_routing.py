"""Routing requests that name no session among several instances of one model: least outstanding requests
(what the gateway did before), round robin, Pitstop's prefix affinity (agent_sessions/prefix_affinity.py,
the class the gateway runs), the same with SGLang's relative threshold too (a match must cover half the
request), and session affinity (what a session id gives: the upper bound).

Workload: bench/agents.py's SWE-agent programs, each turn resent whole (the context so far plus the
turn's new tokens) with no session id, as an agent framework that names none sends them, and every
program's first turn opening with the same system prompt (`--shared-prefix` tokens). Simulated runner:
`--instances` engines of Llama-3.1-8B on an H100 each (roofline step times, the whole KV each, no pins),
stepped in time order on their own virtual clocks; a request is routed when it arrives, on the instances'
requests in flight then. The policies see one character per token. Writes bench/results/prefix_routing.json.

    .venv/bin/python -m bench.prefix_routing            # full run (a few minutes on 2 cores)
    .venv/bin/python -m bench.prefix_routing --quick    # smaller, for a smoke test"""

from __future__ import annotations

import argparse
import heapq
import itertools
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent_sessions.affinity import AffinityRule, InstanceLoad
from agent_sessions.prefix_affinity import PrefixAffinity
from bench.agent_sim import token_ids
from bench.agent_workload import Program, ToolScaling, load_templates, make_programs
from bench.common import command, machine_info, write_report
from engine.llm_engine import LLMEngine
from engine.roofline import RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.simulate import make_sim_engine

RESULTS = Path(__file__).parent / "results"
POLICIES = ("least-outstanding", "round-robin", "prefix", "prefix-share-0.5", "session")
CHUNK_TOKENS, MIN_MATCH_TOKENS = 32, 512  # the gateway's 128 and 2,048 characters, at ~4 a token


@dataclass(order=True)
class _Arrival:
    time: float
    order: int
    program: Program = field(compare=False)
    turn: int = field(compare=False)
    prompt: list[int] = field(compare=False)


class Router:
    """One routing policy over the instances, by name; `route` returns an instance's index."""

    def __init__(self, policy: str, names: list[str], capacity_tokens: int) -> None:
        self.policy = policy
        self.names = names
        self.capacity_tokens = capacity_tokens
        self.rule = AffinityRule()
        share = 0.5 if policy == "prefix-share-0.5" else 0.0  # the ablation: SGLang's relative threshold too
        self.prefixes = PrefixAffinity(self.rule, chunk_chars=CHUNK_TOKENS, min_match_chars=MIN_MATCH_TOKENS,
                                       min_match_share=share)
        self.homes: dict[str, str] = {}
        self.turns = itertools.count()
        self.reasons: dict[str, int] = {}

    def route(self, program_id: str, prompt: list[int], loads: list[int]) -> int:
        instances = [InstanceLoad(name, True, load) for name, load in zip(self.names, loads, strict=True)]
        least = min(range(len(loads)), key=lambda i: loads[i])  # ties: the first, as DeploymentPool.pick
        if self.policy == "round-robin":
            return next(self.turns) % len(self.names)
        if self.policy == "least-outstanding":
            return least
        hashes: list[int] = []
        if self.policy.startswith("prefix"):
            hashes = self.prefixes.chunk_hashes("".join(map(chr, prompt)))  # a token is a character here
            affinity = self.prefixes.choose(hashes, instances)
        else:
            affinity = self.rule.choose(self.homes.get(program_id), instances)
        self.reasons[affinity.reason] = self.reasons.get(affinity.reason, 0) + 1
        chosen = least if affinity.prefer is None else self.names.index(affinity.prefer)
        self.homes[program_id] = self.names[chosen]
        if hashes:
            self.prefixes.routed(self.names[chosen], hashes, self.capacity_tokens)
        return chosen


def run(policy: str, programs: list[Program], model: RooflineStepTime, instances: int, shared_prefix: int) -> dict:
    engines = [make_sim_engine(model, max_model_len=131072) for _ in range(instances)]
    vocab = 30_000  # below 0xD800: every id is a character the prefix record can hash
    router = Router(policy, [f"i{i}" for i in range(instances)], engines[0].config.num_blocks * 16)
    shared = token_ids(7, shared_prefix, vocab)
    order = itertools.count()
    heap = [_Arrival(p.arrival_s, next(order), p, 0,
                     shared + token_ids(p.token_base, max(1, p.template.turns[0].new_prompt_tokens - shared_prefix),
                                        vocab)) for p in programs]
    heapq.heapify(heap)
    running: dict[str, tuple[_Arrival, Sequence, int]] = {}
    finish: dict[str, float] = {}
    routed = [0] * instances
    started = time.perf_counter()

    def on_output(engine: LLMEngine, request_id: str) -> None:
        arrival, seq, _ = running.pop(request_id)
        program, turn, now = arrival.program, arrival.turn, engine.clock.now()
        turns = program.template.turns
        if turn == len(turns) - 1:
            finish[program.program_id] = now
            return
        tokens = seq.token_ids
        new = token_ids(program.token_base, turns[turn + 1].new_prompt_tokens, vocab, offset=len(tokens) * 13 + turn)
        heapq.heappush(heap, _Arrival(now + program.tool_times_s[turn], next(order), program, turn + 1, tokens + new))

    while heap or running:
        busy = [e for e in engines if e.has_unfinished()]
        next_step = min((e.clock.now() for e in busy), default=float("inf"))
        if heap and heap[0].time <= next_step:
            arrival = heapq.heappop(heap)
            chosen = router.route(arrival.program.program_id, arrival.prompt, [len(e.scheduler) for e in engines])
            engine = engines[chosen]
            engine.clock.advance_to(arrival.time)  # an idle instance waits for it; a busy one is past it
            spec = arrival.program.template.turns[arrival.turn]
            request_id = f"{arrival.program.program_id}:{arrival.turn}"
            seq = engine.add_request(request_id, arrival.prompt, SamplingParams(max_tokens=spec.output_tokens,
                                                                                 ignore_eos=True),
                                     arrival_time=arrival.time)
            running[request_id] = (arrival, seq, chosen)
            routed[chosen] += 1
            continue
        engine = min(busy, key=lambda e: e.clock.now())
        for out in engine.step():
            if out.finished:
                on_output(engine, out.request_id)
    return _summary(policy, programs, finish, engines, routed, router.reasons, time.perf_counter() - started)


def _summary(policy: str, programs: list[Program], finish: dict[str, float], engines: list[LLMEngine],
             routed: list[int], reasons: dict[str, int], wall_s: float) -> dict:
    jct = [finish[p.program_id] - p.arrival_s for p in programs]
    ordered = sorted(jct)
    stats = [e.stats() for e in engines]
    query = sum(s.blocks.prefix_query_tokens for s in stats)
    return {"policy": policy, "programs": len(programs), "jct_avg_s": round(statistics.fmean(jct), 2),
            "jct_p90_s": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
            "prefill_tokens_computed": sum(s.prefill_tokens for s in stats),
            "prefix_hit_rate": round(sum(s.blocks.prefix_hit_tokens for s in stats) / query, 4) if query else 0.0,
            "preemptions": sum(s.num_preemptions for s in stats), "requests_per_instance": routed,
            "affinity_reasons": reasons, "wall_s": round(wall_s, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--programs", type=int, default=240)
    parser.add_argument("--rates", type=float, nargs="*", default=[1.2, 2.4, 3.2], help="programs arriving a second")
    parser.add_argument("--shared-prefix", type=int, default=2000, help="system prompt tokens every program shares")
    parser.add_argument("--tool-scale", type=float, default=2.0)
    parser.add_argument("--test-run-scale", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "prefix_routing.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.programs, args.rates = 24, [1.2]
    model = RooflineStepTime.builtin("llama-3.1-8b")
    templates = load_templates()
    rows = []
    for rate in args.rates:
        programs = make_programs(templates, args.programs, rate, ToolScaling(args.tool_scale, args.test_run_scale),
                                 seed=args.seed)
        for policy in POLICIES:
            row = {"program_rate_per_s": rate, **run(policy, programs, model, args.instances, args.shared_prefix)}
            rows.append(row)
            print(f"rate {rate:4.1f} {policy:18s} jct {row['jct_avg_s']:7.1f} p90 {row['jct_p90_s']:7.1f} "
                  f"prefill {row['prefill_tokens_computed']:>10d} hit {row['prefix_hit_rate']:.3f} "
                  f"per instance {row['requests_per_instance']} ({row['wall_s']} s)", flush=True)
    report = {"command": command("bench.prefix_routing", argv), "machine": machine_info(),
              "setup": {"instances": args.instances, "model": "llama-3.1-8b on H100-SXM (roofline), whole KV each",
                        "programs": args.programs, "shared_prefix_tokens": args.shared_prefix,
                        "chunk_tokens": CHUNK_TOKENS, "min_match_tokens": MIN_MATCH_TOKENS,
                        "trace": "shared/data/traces/swe_agent/swe_trajectories_5.json"},
              "summary": summary(rows), "runs": rows}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


def summary(rows: list[dict]) -> list[dict]:
    """Per load: each policy's mean JCT against prefix affinity's (> 1: prefix affinity is faster)."""
    out = []
    for rate in dict.fromkeys(r["program_rate_per_s"] for r in rows):
        group = {r["policy"]: r for r in rows if r["program_rate_per_s"] == rate}
        mine = group["prefix"]
        out.append({"program_rate_per_s": rate,
                    **{f"jct_ratio_{name}_over_prefix": round(r["jct_avg_s"] / mine["jct_avg_s"], 3)
                       for name, r in group.items() if name != "prefix"},
                    "prefill_ratio_least_outstanding_over_prefix": round(
                        group["least-outstanding"]["prefill_tokens_computed"] / mine["prefill_tokens_computed"], 3)})
    return out


if __name__ == "__main__":
    main()
