"""What budget holds cost a request's admission: one key's admit + (settle | record_spend), timed over
`--requests` requests, in process and on Redis, without holds (the spend added after the request) and
with them (the worst case held from admission and settled at the end), with `--in-flight` other holds
standing, as that many of the key's requests running elsewhere would leave; and with holds on a budget
for the calendar month (gateway/limits/periods.py: the period's own totals, its start looked up per
request); and with holds and a tokens-per-minute limit (each request's tokens recorded after it: the
window holds every request of the run, thousands). Interleaved, one at a time.

    .venv/bin/python -m bench.limits_holds [--requests 3000] [--in-flight 0,100]

Writes bench/results/limits_holds.json."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import redis
import redis.asyncio as aioredis

from bench.common import RESULTS, command, machine_info, pct, write_report
from gateway.auth import Caller
from gateway.limit_gate import LimitGate
from gateway.limits import Limiter, MemoryLimiter, RedisLimiter
from gateway.limits.base import Hold
from gateway.limits.periods import current_period
from gateway.spend_settling import SpendSettler, spend_periods
from gateway.team_limits import TeamLimits

OUT = RESULTS / "limits_holds.json"
REDIS_URL = "redis://127.0.0.1:6379/0"
BUDGET, COST = 1e9, 0.01  # a budget nothing here reaches


MODES = ("without_holds", "with_holds", "with_holds_monthly", "with_holds_and_tpm", "key_via_gate",
         "key_and_team_via_gate")
TPM, TOKENS = 10**12, 300  # a token rate nothing here reaches; each request's tokens
RPM = 10**9  # a request rate nothing here reaches (each admission still takes a slot in its window)


def _callers(key: str) -> dict[str, Caller]:
    """The gateway modes' callers: the key alone, and the key in a team (both with a rate and a budget)."""
    team = TeamLimits(f"{key}-team", "bench", rpm_limit=RPM, budget_usd=BUDGET)
    return {"key_via_gate": Caller(key, RPM, BUDGET), "key_and_team_via_gate": Caller(key, RPM, BUDGET, team=team)}


async def _through_gate(gate: LimitGate, settler: SpendSettler, caller: Caller) -> float:
    """One request as the gateway admits and settles it (gateway/proxy.py, gateway/outcomes.py)."""
    started = time.perf_counter()
    hold = Hold(uuid.uuid4().hex, COST)
    team_hold = Hold(hold.hold_id, COST) if caller.team is not None else None
    admission = await gate.admit(caller, hold, team_hold)
    assert admission is not None and admission.allowed, admission
    await asyncio.gather(*settler.settle(caller, COST, TOKENS, hold, team_hold,
                                                spend_periods(caller, hold, team_hold)))  # the answer waits for these
    return time.perf_counter() - started


async def _one(limiter: Limiter, key: str, mode: str) -> float:
    started = time.perf_counter()
    period = current_period("month") if mode == "with_holds_monthly" else None
    hold = Hold(uuid.uuid4().hex, COST, period=period) if mode != "without_holds" else None
    tpm = TPM if mode == "with_holds_and_tpm" else None
    admission = await limiter.admit(key, None, BUDGET, hold=hold, period=period, tpm_limit=tpm)
    assert admission.allowed, admission
    if hold is not None:
        await limiter.settle(key, hold.hold_id, COST, period)
    else:
        await limiter.record_spend(key, COST)
    if tpm is not None:  # its tokens, in the key's minute: the window holds every request of the run
        await limiter.record_tokens(key, TOKENS)
    return time.perf_counter() - started


async def _point(limiter: Limiter, requests: int, in_flight: int) -> dict:
    key = f"bench-{uuid.uuid4().hex[:8]}"
    month = current_period("month")
    callers = _callers(key)
    gate = LimitGate(limiter, set())
    settler = SpendSettler(limiter, None, asyncio.get_running_loop().create_task)
    for i in range(in_flight):  # other requests of the key (and of its team), running elsewhere
        assert (await limiter.admit(key, None, BUDGET, hold=Hold(f"standing-{i}", COST))).allowed
        assert (await limiter.admit(key, None, BUDGET, hold=Hold(f"standing-m{i}", COST, period=month),
                                    period=month)).allowed
        team = callers["key_and_team_via_gate"].team
        assert team is not None and (await limiter.admit(team.subject, None, BUDGET, hold=Hold(f"standing-{i}", COST))).allowed

    async def one(mode: str) -> float:
        if mode in callers:
            return await _through_gate(gate, settler, callers[mode])
        return await _one(limiter, key, mode)

    for _ in range(50):
        for mode in MODES:
            await one(mode)
    timed: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(requests):
        for mode in MODES:
            timed[mode].append(await one(mode))
    return {"in_flight_holds": in_flight, **{
        mode: {"median_us": statistics.median(s) * 1e6, "p99_us": pct(s, 99) * 1e6} for mode, s in timed.items()}}


async def _run(args: argparse.Namespace) -> list[dict]:
    runs = []
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    for name in ("memory", "redis"):
        limiter: Limiter = MemoryLimiter() if name == "memory" else RedisLimiter.from_url(REDIS_URL, prefix=prefix)
        try:
            if name == "redis":
                await limiter.spent("probe")
            points = [await _point(limiter, args.requests, int(n)) for n in args.in_flight.split(",")]
        except Exception as exc:  # noqa: BLE001  (Redis absent: say so, keep the in-process run)
            print(f"{name}: skipped ({exc})", flush=True)
            continue
        finally:
            if name == "redis":
                await _forget(prefix)
            await limiter.close()
        runs.append({"limiter": name, "points": points})
    return runs


async def _forget(prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"pitstop:{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--in-flight", default="0,100")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    runs = asyncio.run(_run(args))
    for run in runs:
        for p in run["points"]:
            without, with_, monthly = p["without_holds"], p["with_holds"], p["with_holds_monthly"]
            tpm = p["with_holds_and_tpm"]
            print(f"{run['limiter']:6s} {p['in_flight_holds']:4d} holds standing: admit + spend median "
                  f"{without['median_us']:7.1f} us (p99 {without['p99_us']:7.1f}) without holds, "
                  f"{with_['median_us']:7.1f} us (p99 {with_['p99_us']:7.1f}) with, "
                  f"{monthly['median_us']:7.1f} us (p99 {monthly['p99_us']:7.1f}) with a monthly budget, "
                  f"{tpm['median_us']:7.1f} us (p99 {tpm['p99_us']:7.1f}) with a token rate", flush=True)
            alone, teamed = p["key_via_gate"], p["key_and_team_via_gate"]
            print(f"{'':6s} {'':4s} through the gateway's admission and settling, a key with rpm + budget: "
                  f"{alone['median_us']:7.1f} us (p99 {alone['p99_us']:7.1f}) alone, {teamed['median_us']:7.1f} us "
                  f"(p99 {teamed['p99_us']:7.1f}) in a team with both: {teamed['median_us'] / alone['median_us']:.2f}x",
                  flush=True)
    write_report(args.out, {"command": command("bench.limits_holds", argv), "machine": machine_info(), "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
