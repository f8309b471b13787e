"""What writing a key's and its team's spend costs on PostgreSQL: the gateway's own outcome recorder, limiter
and outcome writer (no HTTP) finishing `--requests` requests of one key in a team (both with a monthly budget,
each request holding and settling both), paced at `--rate` a second and as fast as the loop goes. Before: the
commit this bench came with's parent (a `git worktree` at `--base`), one UPDATE of the key's row and one of the
team's a request, each in its own transaction on a worker thread (asyncio.to_thread). After: this tree, the
spend added by the outcome writer with each batch of rows, in the batch's transaction.

For each: database transactions and statements a request (the engine's commit and cursor events; UPDATEs of
api_keys and teams apart), CPU a request of the threads off the event loop (the writer, and before, the
worker threads: /proc/self/task), and how long until a request's spend is in the key's row, read every 5 ms
by another connection (p50 / p99 / max over the requests, and from the last request's end until all of it).
Each variant runs in a subprocess on a database of its own, before and after alternated, `--reps` times;
the summary gives each figure's median over the reps.

    git worktree add /tmp/base <the commit before>
    .venv/bin/python -m bench.spend_batching --base /tmp/base [--requests 2000] [--rate 200] [--reps 3]

Writes bench/results/spend_batching.json (or `--out`). The same comparison measures later changes to the
writer against their commit before: `--base` a worktree of it, `--out` a file of their own."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COST = 2.0**-10  # a request's cost: a binary fraction, so sums of it compare exactly
BUDGET = 1e9
POLL_S = 0.005
MODES = ("paced", "max")


# ---- the worker: one run, on whatever tree PYTHONPATH names -----------------------------------------------

def _thread_cpu_s() -> dict[int, float]:
    """CPU seconds of each live thread of this process, by its native id."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


class SpendPoller:
    """Reads the key's spend every POLL_S on a connection of its own until it reaches `total`."""

    def __init__(self, url: str, key_id: str, total: float) -> None:
        import sqlalchemy as sa

        from storage.db import create_engine

        self.engine, self.key_id, self.total = create_engine(url), key_id, total
        self.query = sa.text("SELECT spent_usd FROM api_keys WHERE id = :id")
        self.seen: list[tuple[float, float]] = []  # (monotonic time, spend read)
        self.native_id = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.native_id = threading.get_native_id()
        deadline = time.monotonic() + 600
        with self.engine.connect() as connection:
            while time.monotonic() < deadline:
                spent = float(connection.execute(self.query, {"id": self.key_id}).scalar_one())
                connection.rollback()  # a fresh snapshot each read
                self.seen.append((time.monotonic(), spent))
                if spent >= self.total:
                    return
                time.sleep(POLL_S)

    def durable_at(self, spent: float) -> float:
        return next(t for t, seen in self.seen if seen >= spent)


def _recorder(writer: Any, limiter: Any, engine: Any) -> Any:
    """The tree's OutcomeRecorder as its gateway builds it (before: with the key and team stores it wrote to)."""
    from gateway.metrics import GatewayMetrics
    from gateway.outcomes import OutcomeRecorder

    if "keys" in inspect.signature(OutcomeRecorder).parameters:
        from storage.keys import KeyStore
        from storage.teams import TeamStore

        return OutcomeRecorder(writer, GatewayMetrics(), limiter, KeyStore(engine), False, None, TeamStore(engine))
    return OutcomeRecorder(writer, GatewayMetrics(), limiter, False, None)


class Counts:
    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.statements = self.transactions = self.spend_updates = 0
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.statements += 1
        words = statement.split(None, 2)
        if words[0].upper() == "UPDATE" and words[1] in ("api_keys", "teams"):
            self.spend_updates += 1

    def _commit(self, _conn: Any) -> None:
        self.transactions += 1

    def snapshot(self) -> tuple[int, int, int]:
        return self.transactions, self.statements, self.spend_updates


async def _requests(recorder: Any, limiter: Any, caller: Any, requests: int, rate: float) -> list[float]:
    """Each request as the gateway makes it: held of its key's and team's budget, finished (its row to the
    writer, its cost settled), its answer waiting for the limiter's settle; when each ended."""
    from gateway.limits.base import Hold
    from gateway.limits.periods import current_period
    from gateway.outcomes import OutcomeDraft

    ended = []
    started = time.monotonic()
    month = current_period("month")
    team = caller.team
    for i in range(requests):
        if rate > 0:
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
        hold = Hold(uuid.uuid4().hex, COST, period=month)
        assert (await limiter.admit(caller.key_id, None, BUDGET, hold=hold, period=month)).allowed
        assert (await limiter.admit(team.subject, None, BUDGET, hold=hold, period=month)).allowed
        draft = OutcomeDraft(caller=caller, hold=hold, team_hold=hold, extra_cost_usd=COST)
        recorder.finish(draft)
        await draft.settled()
        ended.append(time.monotonic())
    return ended


def worker(url: str, requests: int, rate: float) -> dict:
    import gateway
    from gateway.auth import Caller
    from gateway.limits import MemoryLimiter
    from gateway.team_limits import TeamLimits
    from storage.db import create_engine
    from storage.keys import KeyStore
    from storage.migrate import upgrade
    from storage.outcome_writer import OutcomeWriter
    from storage.teams import TeamStore

    engine = create_engine(url)
    upgrade(engine)
    team = TeamStore(engine).create("bench", budget_usd=BUDGET, budget_period="month")
    key_id, _ = KeyStore(engine).create("bench", budget_usd=BUDGET, budget_period="month", team_id=team.id)
    caller = Caller(key_id, budget_usd=BUDGET, budget_period="month",
                    team=TeamLimits(team.id, "bench", budget_usd=BUDGET, budget_period="month"))
    writer = OutcomeWriter(engine)  # as the gateway's (gateway/state.py), without a spool
    limiter = MemoryLimiter()
    counts = Counts(engine)

    async def run() -> dict:
        recorder = _recorder(writer, limiter, engine)
        await asyncio.to_thread(lambda: None)  # the default executor's first thread, before the clocks start
        poller = SpendPoller(url, key_id, requests * COST)
        loop_thread = threading.get_native_id()
        before_cpu, before = _thread_cpu_s(), counts.snapshot()
        started = time.monotonic()
        ended = await _requests(recorder, limiter, caller, requests, rate)
        answered_s = time.monotonic() - started
        await asyncio.to_thread(poller.thread.join)
        await recorder.drain()
        assert writer.flush(timeout=60)
        after_cpu, after = _thread_cpu_s(), counts.snapshot()
        off_loop = sum(cpu - before_cpu.get(tid, 0.0) for tid, cpu in after_cpu.items()
                       if tid not in (loop_thread, poller.native_id))
        lags = sorted(poller.durable_at((i + 1) * COST) - end for i, end in enumerate(ended))
        return {
            "tree": str(Path(gateway.__file__).resolve().parents[1]),
            "requests": requests, "rate_per_s": rate or None, "answered_per_s": requests / answered_s,
            "transactions_per_request": (after[0] - before[0]) / requests,
            "statements_per_request": (after[1] - before[1]) / requests,
            "spend_updates_per_request": (after[2] - before[2]) / requests,
            "off_loop_cpu_us_per_request": off_loop / requests * 1e6,
            "loop_cpu_us_per_request": (after_cpu[loop_thread] - before_cpu[loop_thread]) / requests * 1e6,
            "durable_ms": {"p50": statistics.median(lags) * 1e3, "p99": lags[int(0.99 * (len(lags) - 1))] * 1e3,
                           "max": lags[-1] * 1e3},
            "all_durable_after_last_ms": (poller.durable_at(requests * COST) - ended[-1]) * 1e3,
        }

    try:
        return asyncio.run(run())
    finally:
        writer.close()
        engine.dispose()


# ---- the parent: before and after, alternated ------------------------------------------------------------

def _one(tree: Path, requests: int, rate: float) -> dict:
    from bench.bench_db import BenchDatabase

    db = BenchDatabase.create()
    try:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", "--url", db.sqlalchemy_url,
             "--requests", str(requests), "--rate", str(rate)],
            cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"worker in {tree} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert Path(result["tree"]) == tree.resolve(), (result["tree"], tree)
        return result
    finally:
        db.drop()


def _median(runs: list[dict]) -> dict:
    out: dict[str, Any] = {}
    for name, value in runs[0].items():
        if isinstance(value, dict):
            out[name] = _median([run[name] for run in runs])
        elif isinstance(value, float):
            out[name] = statistics.median(run[name] for run in runs)
        else:
            out[name] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="a worktree of the commit to compare with (before)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0, help="the paced runs' requests a second")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, help="default bench/results/spend_batching.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.url, args.requests, args.rate)))
        return
    from bench.common import RESULTS, command, machine_info, write_report

    assert args.base is not None, "--base: a git worktree of the commit before"
    trees = {"before": args.base, "after": ROOT}
    runs: dict[str, dict[str, list[dict]]] = {mode: {"before": [], "after": []} for mode in MODES}
    for rep in range(args.reps):
        order = ["before", "after"] if rep % 2 == 0 else ["after", "before"]
        for mode in MODES:
            for name in order:
                result = _one(trees[name], args.requests, args.rate if mode == "paced" else 0.0)
                runs[mode][name].append(result)
                print(mode, name, json.dumps({k: v for k, v in result.items() if k != "tree"}), flush=True)
    summary = {mode: {name: _median(results) for name, results in by_name.items()} for mode, by_name in runs.items()}
    base_rev = subprocess.run(["git", "-C", str(args.base), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    path = write_report(args.out or RESULTS / "spend_batching.json", {
        "command": command("bench.spend_batching"), "machine": machine_info(), "before_commit": base_rev,
        "summary": summary, "runs": runs})
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
