"""N-gram speculative decoding projected onto GPUs: the engine's own scheduler, drafter and block manager
on the roofline simulator (engine/roofline.py), replaying real outputs.

The CPU benchmark (bench/spec_decode.py) measures speculation where every drafted row costs compute. On
a GPU a decode step of a few sequences streams the weights and leaves the compute idle, so checking
drafts is nearly free there, until the batch's rows make the step compute-bound. This runs the same
workloads with and without speculation on the simulated runner, which writes each request's real
output (engine/sim_runner.py: drafts are accepted exactly where they match it) and prices each step,
drafted rows included, on the roofline of a built-in model and GPU.

Workloads, closed loops of `--concurrency` clients, each client a copy of a program with token ids of
its own at the front (no cache shared between copies), started over the first second:
- `swe_agent`: the five SWE-agent trajectories' assistant turns, each turn's prompt the whole
  conversation before it (prefix-cached from the turn before), the next turn sent when its tools'
  recorded `execution_time_seconds` (at least 50 ms) have passed;
- `alpaca_eval`: AlpacaEval answers one after another, a 1 s pause between them.

Reported per model, workload and concurrency, plain decoding against two arms: `speculative`
(`SpeculativeConfig()`'s defaults: every draft the lookup finds, up to 4) and `goodput` (the same, each
step's drafts cut to the length with the most expected tokens a second on the simulated GPU,
engine/draft_length.py): decode seconds per output token (first token to last, over all turns), mean
turn latency, output tokens per second over the run, engine steps, acceptance. These are the roofline's predictions
(achieved fractions of the GPU's peaks assumed, see engine/roofline.py), not measurements on a GPU.

    .venv/bin/python -m bench.spec_decode_sim [--concurrency 1 8 32 128 256] [--models llama-3.1-8b qwen3-30b-a3b]

Writes bench/results/spec_decode_sim.json."""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterable

from bench.common import RESULTS, command, machine_info, write_report
from bench.spec_decode import DATA, TRACE, AgentTurn, alpaca_turns, swe_agent_programs
from engine.config import SpeculativeConfig
from engine.roofline import RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.simulate import Arrival, RequestResult, make_sim_engine, simulate

OUT = RESULTS / "spec_decode_sim.json"
# Speculation as configured by default (every draft the lookup finds, up to 4), and with each step's
# drafts cut to the length that pays on the simulated GPU (engine/draft_length.py).
ARMS = {"speculative": SpeculativeConfig(), "goodput": SpeculativeConfig(draft_policy="goodput")}
HEADER_TOKENS = 16  # each copy's own first tokens: its blocks hash apart from every other copy's
MIN_TOOL_S = 0.05  # an editor call recorded as 0 s still costs a round trip to the agent
CHAT_PAUSE_S = 1.0
VOCAB = 30522  # the WordPiece vocabulary the outputs are tokenised with


def chat_programs(answers: int, per_program: int = 10) -> list[list[AgentTurn]]:
    """AlpacaEval answers grouped into clients' sequences of independent questions."""
    turns = [AgentTurn(prompt, output, CHAT_PAUSE_S) for prompt, output in alpaca_turns(answers)]
    return [turns[i: i + per_program] for i in range(0, len(turns), per_program)]


def run(model: str, programs: list[list[AgentTurn]], concurrency: int, speculative: SpeculativeConfig | None,
        seed: int = 0) -> dict:
    engine = make_sim_engine(RooflineStepTime.builtin(model), speculative=speculative, max_model_len=131072)
    rng = random.Random(seed)
    headers = [[rng.randrange(1000, VOCAB) for _ in range(HEADER_TOKENS)] for _ in range(concurrency)]
    copies = [programs[c % len(programs)] for c in range(concurrency)]

    def arrival(copy: int, index: int, at: float) -> Arrival:
        turn = copies[copy][index]
        return Arrival(at, headers[copy] + turn.context, SamplingParams(max_tokens=len(turn.output)),
                       request_id=f"c{copy}-t{index}", output_token_ids=turn.output)

    def next_turn(result: RequestResult, _token_ids: list[int]) -> Iterable[Arrival]:
        copy, index = (int(part[1:]) for part in result.request_id.split("-"))
        assert result.finish_time is not None and result.num_output_tokens == len(copies[copy][index].output)
        if index + 1 < len(copies[copy]):
            yield arrival(copy, index + 1, result.finish_time + max(MIN_TOOL_S, copies[copy][index].tool_s))

    starts = sorted((rng.uniform(0.0, 1.0), c) for c in range(concurrency))
    began = time.perf_counter()
    results = simulate(engine, [arrival(c, 0, at) for at, c in starts], next_turn)
    simulated_s = time.perf_counter() - began
    assert all(r.finish_reason == "length" for r in results), "every turn writes its whole output"
    output_tokens = sum(r.num_output_tokens for r in results)
    decode_s = sum(r.finish_time - r.first_token_time for r in results)  # type: ignore[operator]
    makespan = max(r.finish_time for r in results) - min(r.arrival_time for r in results)  # type: ignore[type-var]
    spec = engine.stats().spec
    return {"turns": len(results), "output_tokens": output_tokens, "steps": engine.num_steps,
            "decode_s_per_token": decode_s / sum(r.num_output_tokens - 1 for r in results),
            "mean_turn_latency_s": sum(r.latency for r in results) / len(results),  # type: ignore[misc]
            "makespan_s": makespan, "output_tokens_per_s": output_tokens / makespan,
            "output_tokens_per_step": output_tokens / max(1, engine.num_steps),
            "acceptance_rate": spec.accepted_tokens / max(1, spec.draft_tokens),
            "accepted_tokens": spec.accepted_tokens, "draft_tokens": spec.draft_tokens,
            "simulated_in_s": simulated_s}


def compare(model: str, programs: list[list[AgentTurn]], concurrency: int) -> dict:
    plain = run(model, programs, concurrency, None)
    row: dict = {"concurrency": concurrency, "plain": plain}
    for arm, config in ARMS.items():
        result = row[arm] = run(model, programs, concurrency, config)
        row[f"{arm}_decode_speedup"] = plain["decode_s_per_token"] / result["decode_s_per_token"]
        row[f"{arm}_latency_speedup"] = plain["mean_turn_latency_s"] / result["mean_turn_latency_s"]
        row[f"{arm}_throughput_ratio"] = result["output_tokens_per_s"] / plain["output_tokens_per_s"]
    print(f"{model} c={concurrency}: decode " + ", ".join(f"{arm} {row[f'{arm}_decode_speedup']:.2f}x" for arm in ARMS)
          + "; throughput " + ", ".join(f"{arm} {row[f'{arm}_throughput_ratio']:.2f}x" for arm in ARMS), file=sys.stderr)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128, 256])
    parser.add_argument("--models", nargs="+", default=["llama-3.1-8b", "qwen3-30b-a3b"])
    parser.add_argument("--chat-answers", type=int, default=300)
    args = parser.parse_args(argv)
    if not TRACE.exists():
        print(f"skipped: the real data is not at {DATA} (see its README)", file=sys.stderr)
        return
    workloads = {"swe_agent": swe_agent_programs(), "alpaca_eval": chat_programs(args.chat_answers)}
    report: dict = {"command": command("bench.spec_decode_sim", argv), "machine": machine_info(),
                    "gpu": "H100-SXM (roofline, engine/roofline.py)",
                    "arms": {arm: vars(config) for arm, config in ARMS.items()},
                    "tokens": "all-MiniLM-L6-v2 WordPiece (routers/tokens.py)",
                    "workloads": {name: {"programs": len(p), "turns": sum(map(len, p)),
                                         "mean_output_tokens": sum(len(t.output) for q in p for t in q) / sum(map(len, p))}
                                  for name, p in workloads.items()},
                    "results": {}}
    for model in args.models:
        report["results"][model] = {name: [compare(model, programs, c) for c in args.concurrency]
                                    for name, programs in workloads.items()}
    write_report(OUT, report)


if __name__ == "__main__":
    main()
