"""What `truncation: "auto"` adds to a Responses turn (gateway/truncation.py): fitting real agent contexts,
the SWE-agent trajectories at each assistant turn (../shared/data), into a model's context, counted
exactly by Pitstop's engine (a tiny model's tokenizer and chat template, in process). Per context: the
time to fit it, how many counts it took, and how many messages went; beside it, one count of the whole
context (what any exact answer costs at least), and the linear way (drop the oldest message after the
task, count again) that the bisection replaces, on the same contexts in the same run. Turn to turn, how
much of what is sent the last turn's chat already was (what a prefix cache, or a session's pinned KV,
reuses), with the cut kept stable (the default) and with the longest tail that fits.

    .venv/bin/python -m bench.truncation [--window 8192] [--answer 256] [--stride-share 0.25]

Writes bench/results/truncation.json."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.common import RESULTS, command, machine_info, pct, write_report
from bench.token_counts import DATA, swe_agent_turns
from gateway import truncation
from gateway.backends.local import LocalEngineBackend
from gateway.deployments import Deployment, DeploymentPool
from gateway.model_list_config import ModelInfo
from gateway.token_count import count_on_model
from gateway.truncation import fit_context

OUT = RESULTS / "truncation.json"


class CountingBackend(LocalEngineBackend):
    counts = 0

    async def count_tokens(self, body: dict) -> int | None:
        CountingBackend.counts += 1
        return await super().count_tokens(body)


async def linear_fit(state: Any, body: dict, budget: int) -> int:
    """The way bisection replaces: keep the task, drop the oldest message after it (never opening on a tool
    result), count, again, until it fits."""
    messages = body["messages"]
    head = 2 if messages[0]["role"] == "system" else 1  # the instructions and the task
    if (await count_on_model(state, "m", body)).tokens <= budget:
        return 0
    for cut in (i for i in range(head, len(messages)) if messages[i]["role"] != "tool"):
        kept = {**body, "messages": messages[:head] + messages[cut:]}
        if (await count_on_model(state, "m", kept)).tokens <= budget:
            return cut - head
    return -1


async def _kept(state: Any, chat: dict, answer: int, stable: bool) -> tuple[list[dict] | None, float, int, int]:
    """What `fit_context` sends of `chat`: its messages (None: refused), the time, the counts, how many went."""
    body = {"messages": [dict(m) for m in chat["messages"]], "max_tokens": answer}
    CountingBackend.counts = 0
    started = time.perf_counter()
    try:
        dropped = await fit_context(state, "m", body, stable=stable)
    except Exception:  # its last exchange alone does not fit
        return None, (time.perf_counter() - started) * 1000, CountingBackend.counts, -1
    return body["messages"], (time.perf_counter() - started) * 1000, CountingBackend.counts, dropped


async def _tokens(state: Any, messages: list[dict]) -> int:
    return (await count_on_model(state, "m", {"messages": messages})).tokens if messages else 0


async def run(window: int, answer: int, trajectories: list[list[dict]]) -> dict:
    from engine.build import build_engine
    from engine.tiny_model import make_tiny_model

    with tempfile.TemporaryDirectory() as work:
        model_dir = make_tiny_model(Path(work) / "tiny")
        engine = build_engine(model_dir, num_blocks=64, max_model_len=window)
        backend = CountingBackend(engine, "m")
        pool = DeploymentPool()
        pool.add(Deployment("m#0", "m", backend, ModelInfo(max_input_tokens=window), "pitstop-local/m"))
        state = SimpleNamespace(pool=pool, windows={})
        rows = []
        prefill = {"stable": {"sent": 0, "reused": 0}, "longest": {"sent": 0, "reused": 0}}
        for turns in trajectories:
            previous: dict[str, list[dict] | None] = {"stable": None, "longest": None}
            for chat in turns:
                started = time.perf_counter()
                whole = await _tokens(state, chat["messages"])
                count_ms = (time.perf_counter() - started) * 1000
                row: dict = {"messages": len(chat["messages"]), "tokens": whole, "count_once_ms": count_ms}
                for policy in ("stable", "longest"):
                    kept, ms, counts, dropped = await _kept(state, chat, answer, policy == "stable")
                    row |= {f"{policy}_ms": ms, f"{policy}_counts": counts, f"{policy}_dropped": dropped}
                    if kept is not None:  # what the prefix cache holds of it: the last turn's chat, as far as it is kept
                        before = previous[policy] or []
                        common = next((i for i, (a, b) in enumerate(zip(before, kept, strict=False)) if a != b),
                                      min(len(before), len(kept)))
                        prefill[policy]["sent"] += (sent := await _tokens(state, kept))
                        prefill[policy]["reused"] += min(sent, await _tokens(state, kept[:common]))
                    previous[policy] = kept
                CountingBackend.counts = 0
                started = time.perf_counter()
                row["linear_dropped"] = await linear_fit(state, {"messages": chat["messages"], "max_tokens": answer},
                                                         window - answer)
                row["linear_ms"], row["linear_counts"] = (time.perf_counter() - started) * 1000, CountingBackend.counts
                rows.append(row)
    cut = [r for r in rows if r["longest_dropped"] > 0]

    def summary(key: str, among: list[dict]) -> dict:
        values = [r[key] for r in among]
        return {"median": statistics.median(values), "p99": pct(values, 99), "max": max(values)} if values else {}

    return {"contexts": len(rows), "cut": len(cut), "refused": sum(r["longest_dropped"] < 0 for r in rows),
            "longest_same_cut_as_linear": all(r["longest_dropped"] == r["linear_dropped"] for r in rows),
            "fit_ms_cut": summary("stable_ms", cut), "counts_cut": summary("stable_counts", cut),
            "longest_fit_ms_cut": summary("longest_ms", cut), "longest_counts_cut": summary("longest_counts", cut),
            "linear_ms_cut": summary("linear_ms", cut), "linear_counts_cut": summary("linear_counts", cut),
            "count_once_ms_cut": summary("count_once_ms", cut),
            "fit_ms_uncut": summary("stable_ms", [r for r in rows if r["longest_dropped"] == 0]),
            "linear_over_bisection_median_ms": (statistics.median(r["linear_ms"] for r in cut)
                                                / statistics.median(r["longest_ms"] for r in cut)) if cut else None,
            "prefill_tokens": prefill,
            "prefix_reused_share": {p: v["reused"] / v["sent"] for p, v in prefill.items()},
            "prefill_recomputed_longest_over_stable": ((prefill["longest"]["sent"] - prefill["longest"]["reused"])
                                                       / (prefill["stable"]["sent"] - prefill["stable"]["reused"])),
            "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=8192)
    parser.add_argument("--answer", type=int, default=256)
    parser.add_argument("--stride-share", type=float, default=truncation.STRIDE_SHARE,
                        help="how far a stable cut moves at once, as a share of the budget")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    truncation.STRIDE_SHARE = args.stride_share
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark reads the SWE-agent trajectories from the shared data folder")
    result = asyncio.run(run(args.window, args.answer, swe_agent_turns()))
    print(f"{result['contexts']} contexts, {result['cut']} cut to fit {args.window} tokens: "
          f"fit median {result['fit_ms_cut']['median']:.1f} ms in {result['counts_cut']['median']:.0f} counts "
          f"(one count of the whole context {result['count_once_ms_cut']['median']:.1f} ms); the longest tail by "
          f"bisection {result['longest_fit_ms_cut']['median']:.1f} ms in {result['longest_counts_cut']['median']:.0f} "
          f"counts, one message at a time {result['linear_ms_cut']['median']:.1f} ms in "
          f"{result['linear_counts_cut']['median']:.0f} ({result['linear_over_bisection_median_ms']:.1f}x; same cut: "
          f"{result['longest_same_cut_as_linear']}); prefix reused turn to turn {result['prefix_reused_share']['stable']:.0%} "
          f"stable, {result['prefix_reused_share']['longest']:.0%} longest tail; prefill recomputed "
          f"{result['prefill_recomputed_longest_over_stable']:.1f}x more with the longest tail")
    report = {"command": command("bench.truncation", argv), "machine": machine_info(), "window": args.window,
              "answer_reserve": args.answer, "stride_share": args.stride_share, **result}
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
