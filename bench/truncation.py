"""What `truncation: "auto"` adds to a Responses turn (gateway/truncation.py): fitting real agent contexts,
the SWE-agent trajectories at each assistant turn (../shared/data), into a model's context, counted
exactly by Pitstop's engine (a tiny model's tokenizer and chat template, in process). Per context: the
time to fit it, how many counts it took, and how many messages went; beside it, one count of the whole
context (what any exact answer costs at least), and the linear way (drop the oldest message after the
task, count again) that the bisection replaces, on the same contexts in the same run.

    .venv/bin/python -m bench.truncation [--window 4096] [--answer 256]

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
from bench.token_counts import DATA, _swe_agent
from gateway.backends.local import LocalEngineBackend
from gateway.config import ModelInfo
from gateway.deployments import Deployment, DeploymentPool
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


async def run(window: int, answer: int, chats: list[dict]) -> dict:
    from engine.async_engine import build_engine
    from engine.tiny_model import make_tiny_model

    with tempfile.TemporaryDirectory() as work:
        model_dir = make_tiny_model(Path(work) / "tiny")
        engine = build_engine(model_dir, num_blocks=64, max_model_len=window)
        backend = CountingBackend(engine, "m")
        pool = DeploymentPool()
        pool.add(Deployment("m#0", "m", backend, ModelInfo(max_input_tokens=window), "pitstop-local/m"))
        state = SimpleNamespace(pool=pool)
        rows = []
        for chat in chats:
            body = {"messages": [dict(m) for m in chat["messages"]], "max_tokens": answer}
            started = time.perf_counter()
            whole = (await count_on_model(state, "m", body)).tokens  # type: ignore[arg-type]
            count_ms = (time.perf_counter() - started) * 1000
            CountingBackend.counts = 0
            started = time.perf_counter()
            try:
                dropped = await fit_context(state, "m", body)  # type: ignore[arg-type]
            except Exception:  # its last turn alone does not fit
                dropped = -1
            fit_ms, counts = (time.perf_counter() - started) * 1000, CountingBackend.counts
            CountingBackend.counts = 0
            started = time.perf_counter()
            linear_dropped = await linear_fit(state, {"messages": chat["messages"], "max_tokens": answer}, window - answer)
            linear_ms, linear_counts = (time.perf_counter() - started) * 1000, CountingBackend.counts
            rows.append({"messages": len(chat["messages"]), "tokens": whole, "dropped": dropped, "fit_ms": fit_ms,
                         "counts": counts, "count_once_ms": count_ms, "linear_ms": linear_ms,
                         "linear_counts": linear_counts, "same_cut": dropped == linear_dropped})
    cut = [r for r in rows if r["dropped"] > 0]

    def summary(key: str, among: list[dict]) -> dict:
        values = [r[key] for r in among]
        return {"median": statistics.median(values), "p99": pct(values, 99), "max": max(values)} if values else {}

    return {"contexts": len(rows), "cut": len(cut), "refused": sum(r["dropped"] < 0 for r in rows),
            "same_cut_as_linear": all(r["same_cut"] for r in rows),
            "fit_ms_cut": summary("fit_ms", cut), "counts_cut": summary("counts", cut),
            "linear_ms_cut": summary("linear_ms", cut), "linear_counts_cut": summary("linear_counts", cut),
            "count_once_ms_cut": summary("count_once_ms", cut),
            "fit_ms_uncut": summary("fit_ms", [r for r in rows if r["dropped"] == 0]),
            "linear_over_bisection_median_ms": (statistics.median(r["linear_ms"] for r in cut)
                                                / statistics.median(r["fit_ms"] for r in cut)) if cut else None,
            "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=4096)
    parser.add_argument("--answer", type=int, default=256)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark reads the SWE-agent trajectories from the shared data folder")
    result = asyncio.run(run(args.window, args.answer, _swe_agent(10_000)))
    print(f"{result['contexts']} contexts, {result['cut']} cut to fit {args.window} tokens: "
          f"fit median {result['fit_ms_cut']['median']:.1f} ms in {result['counts_cut']['median']:.0f} counts "
          f"(one count of the whole context {result['count_once_ms_cut']['median']:.1f} ms); linear "
          f"{result['linear_ms_cut']['median']:.1f} ms in {result['linear_counts_cut']['median']:.0f} counts "
          f"({result['linear_over_bisection_median_ms']:.1f}x); same cut: {result['same_cut_as_linear']}")
    report = {"command": command("bench.truncation", argv), "machine": machine_info(), "window": args.window,
              "answer_reserve": args.answer, **result}
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
