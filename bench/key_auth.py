"""What a key's expiry and rotation cost authentication, which every request does (gateway/auth.py):
`Authenticator.authenticate` timed per call for a key without an expiry, one with an expiry (the check at
each request), and a rotated key's old secret within its grace and its new one; each cached (the usual
request: the lookup cached for 10 s, only the per-request checks run) and uncached (the cache dropped
before each call: the database lookup, run in a thread as the gateway runs it; an old secret takes a
second query, its hash not being the key's); and the store's lookup alone now beside the lookup as it was
before migration 0028 (the hash alone). Interleaved in rounds of one call a mode (shuffled), one call at a
time, on SQLite or a throwaway PostgreSQL database (--db).

    .venv/bin/python -m bench.key_auth [--calls 3000] [--db sqlite|postgresql]

Writes bench/results/key_auth.json (or --out)."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import select
from starlette.datastructures import Headers

from bench.bench_db import BenchDatabase
from bench.common import RESULTS, pct, save_runs
from gateway.access_config import AuthConfig, LimitsConfig
from gateway.auth import Authenticator
from storage.db import create_engine, session_factory
from storage.keys import KeyStore, hash_secret
from storage.migrate import upgrade
from storage.models import ApiKey
from storage.teams import TeamStore

OUT = RESULTS / "key_auth.json"


def _headers(secret: str) -> Headers:
    return Headers({"authorization": f"Bearer {secret}"})


def _modes(url: str) -> dict[str, Callable[[], Awaitable[object]]]:
    """Each mode's one call. Keys are made fresh in `url` (the database keeps the other keys it has)."""
    keys = KeyStore(url)
    # Two authenticators: the uncached modes drop their cache before each call, the cached keep theirs.
    auth, fresh = (Authenticator(AuthConfig(require_keys=True), LimitsConfig(), keys, TeamStore(url)) for _ in "ab")
    _, plain = keys.create("bench-plain")
    _, expiring = keys.create("bench-expiring", expires_at=int(time.time()) + 86400)
    rotated_id, old = keys.create("bench-rotated")
    _, new = keys.rotate(rotated_id, grace_period_s=86400)
    session = session_factory(create_engine(url))

    def lookup_before_0028() -> ApiKey | None:  # the query as it was: the hash alone
        with session() as s:
            return s.scalars(select(ApiKey).where(ApiKey.key_hash == hash_secret(plain),
                                                  ApiKey.revoked_at.is_(None))).one_or_none()

    def cached(secret: str) -> Callable[[], Awaitable[object]]:
        headers = _headers(secret)
        return lambda: auth.authenticate(headers)

    def uncached(secret: str) -> Callable[[], Awaitable[object]]:
        headers = _headers(secret)

        async def call() -> object:
            fresh._cache.clear()
            return await fresh.authenticate(headers)
        return call

    return {"cached_no_expiry": cached(plain), "cached_with_expiry": cached(expiring),
            "cached_rotated_old_secret": cached(old), "cached_rotated_new_secret": cached(new),
            "uncached_no_expiry": uncached(plain), "uncached_with_expiry": uncached(expiring),
            "uncached_rotated_old_secret": uncached(old), "uncached_rotated_new_secret": uncached(new),
            "lookup_now": lambda: asyncio.to_thread(keys.lookup, plain),
            "lookup_before_0028": lambda: asyncio.to_thread(lookup_before_0028)}


async def _run(url: str, calls: int) -> list[dict]:
    modes = _modes(url)
    times: dict[str, list[float]] = {name: [] for name in modes}
    for name, call in modes.items():  # warm: caches filled, connections open
        for _ in range(20):
            assert await call() is not None, name
    order, shuffle = list(modes.items()), random.Random(0).shuffle
    for _ in range(calls):
        shuffle(order)  # a new order each round: no mode always follows the same one (a thread hop, say)
        for name, call in order:
            started = time.perf_counter()
            await call()
            times[name].append(time.perf_counter() - started)
    return [{"mode": name, "calls": calls, "per_s": round(calls / sum(values), 1),
             "p50_us": pct(values, 50) * 1e6, "p99_us": pct(values, 99) * 1e6} for name, values in times.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    database = BenchDatabase.create() if args.db == "postgresql" else None  # a throwaway one, dropped after
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = database.sqlalchemy_url if database is not None else f"sqlite:///{tmp}/bench.db"
            upgrade(url)
            runs = asyncio.run(_run(url, args.calls))
    finally:
        if database is not None:
            database.drop()
    for run in runs:
        print(f"{run['mode']:30s} {run['per_s']:>10.1f}/s  p50 {run['p50_us']:8.1f} µs  p99 {run['p99_us']:8.1f} µs")
    save_runs("bench.key_auth", argv, args.out, {"calls": args.calls, "db": args.db}, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
