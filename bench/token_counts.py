"""How far the gateway's estimate of a prompt's tokens (about four characters a token, what
`count_tokens` / `input_tokens` answered before deployments counted, and still answer for an upstream
that cannot count) lands from an exact count, on real chats, and what each way of counting costs.

Chats, from ../shared/data: RouterBench test prompts (MBPP, ARC, Winogrande: one user message each);
AlpacaEval instructions with a model's answer (two messages); and the SWE-agent trajectories, counted at
every assistant turn over the whole context so far, tool calls and results included (what an agent
framework counts to manage its context). Exact: OpenAI's count for gpt-4o (o200k_base) and gpt-4
(cl100k_base), through litellm's token_counter as the gateway counts OpenAI's models. Reports, per
source, the estimate over the exact count (median, p10, p90), the mean absolute error, and how often the
estimate falls short by more than 10% (a context an agent thinks fits, and does not). Costs: a count's
median time by the estimate, by litellm (o200k_base), and by Pitstop's engine tokenizer (a tiny model's
byte-level BPE, trained locally: its counts are not compared, its cost is what rendering the template
and encoding costs).

    .venv/bin/python -m bench.token_counts [--per-source 300]

Writes bench/results/token_counts.json."""

from __future__ import annotations

import argparse
import ast
import csv
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.agent_workload import TRACE, message_text, tool_calls_of
from bench.common import RESULTS, command, machine_info, pct, write_report
from gateway.backends.litellm_backend import _litellm
from gateway.token_count import chat_input_tokens

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = RESULTS / "token_counts.json"
MODELS = {"gpt-4o": "o200k_base", "gpt-4": "cl100k_base"}


def _routerbench(limit: int) -> list[dict]:
    chats = []
    for name in ("mbpp_test.csv", "arc_challenge_test.csv", "winograde_test.csv"):
        with (DATA / "routerbench_subset" / name).open(newline="") as f:
            for row in csv.DictReader(f):
                chats.append({"messages": [{"role": "user", "content": row["prompt"]}]})
    return chats[:: max(1, len(chats) // limit)][:limit]


def _alpaca(limit: int) -> list[dict]:
    chats = []
    with (DATA / "alpaca_eval_outputs" / "outputs.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            chats.append({"messages": [{"role": "user", "content": row["instruction"]},
                                       {"role": "assistant", "content": row["output"]}]})
    return chats[:: max(1, len(chats) // limit)][:limit]


def _swe_agent(limit: int) -> list[dict]:
    """Each trajectory's context at each assistant turn, as an OpenAI chat."""
    chats = [chat for turns in swe_agent_turns() for chat in turns]
    return chats[:: max(1, len(chats) // limit)][:limit]


def swe_agent_turns() -> list[list[dict]]:
    """Per trajectory, its context at each assistant turn (the chat an agent sends for that turn)."""
    trajectories = []
    for trajectory in json.loads(TRACE.read_text()):
        raw = trajectory["messages"]
        messages: list[dict] = []
        trajectories.append(chats := [])
        for message in json.loads(raw) if isinstance(raw, str) else raw:
            out: dict = {"role": message["role"], "content": message_text(message.get("content"))}
            if message["role"] == "assistant":
                chats.append({"messages": list(messages)})
                if calls := tool_calls_of(message):
                    out["tool_calls"] = [{"id": c.get("id", f"call_{i}"), "type": "function",
                                          "function": c["function"]} for i, c in enumerate(calls)]
            if message["role"] == "tool":
                ids = message.get("tool_call_ids")
                ids = ast.literal_eval(ids) if isinstance(ids, str) else ids or ["call_0"]
                out["tool_call_id"] = ids[0]
            messages.append(out)
    return trajectories


def _accuracy(chats: list[dict], exact: Callable[[dict], int]) -> dict:
    ratios = [chat_input_tokens(chat) / max(1, exact(chat)) for chat in chats]
    return {"n": len(ratios), "estimate_over_exact_median": statistics.median(ratios),
            "p10": pct(ratios, 10), "p90": pct(ratios, 90),
            "mean_abs_error": statistics.fmean(abs(r - 1) for r in ratios),
            "short_by_over_10pct": sum(r < 0.9 for r in ratios) / len(ratios)}


def _median_us(chats: list[dict], count: Callable[[dict], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        for chat in chats:
            started = time.perf_counter()
            count(chat)
            times.append((time.perf_counter() - started) * 1e6)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-source", type=int, default=300)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark reads real chats from the shared data folder")
    litellm = _litellm()
    sources = {"routerbench": _routerbench(args.per_source), "alpaca_eval": _alpaca(args.per_source),
               "swe_agent_contexts": _swe_agent(args.per_source)}
    accuracy: dict = {}
    for source, chats in sources.items():
        accuracy[source] = {}
        for model, encoding in MODELS.items():
            def exact(chat: dict, model: str = model) -> int:
                return litellm.token_counter(model=model, messages=chat["messages"])

            accuracy[source][encoding] = result = _accuracy(chats, exact)
            print(f"{source:20s} {encoding}: estimate/exact median {result['estimate_over_exact_median']:.2f} "
                  f"(p10 {result['p10']:.2f}, p90 {result['p90']:.2f}), mean |error| {result['mean_abs_error']:.1%}, "
                  f"short by >10% on {result['short_by_over_10pct']:.0%}", flush=True)
    from engine.tiny_model import make_tiny_model
    from engine.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as work:
        tokenizer = Tokenizer(make_tiny_model(Path(work) / "tiny"))
        chats = [chat for group in sources.values() for chat in group]
        costs = {
            "estimate": _median_us(chats, chat_input_tokens),
            "litellm_o200k": _median_us(chats, lambda chat: litellm.token_counter(model="gpt-4o",
                                                                                  messages=chat["messages"])),
            "engine_template_and_encode": _median_us(chats, lambda chat: tokenizer.encode(
                tokenizer.apply_chat_template(chat["messages"], add_generation_prompt=True))),
        }
    sizes = {source: statistics.median(len(json.dumps(chat)) for chat in chats) for source, chats in sources.items()}
    print("median microseconds a count: " + ", ".join(f"{k} {v:.0f}" for k, v in costs.items()))
    report = {"command": command("bench.token_counts", argv), "machine": machine_info(),
              "median_chat_json_chars": sizes, "accuracy": accuracy, "median_us_per_count": costs}
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
