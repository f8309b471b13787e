"""Requests sent on a connection the server is closing: how often an HTTP client that keeps idle connections
longer than the server does fails, with the server's and the client's idle limits as uvicorn, aiohttp and
Pitstop set them.

    .venv/bin/python -m bench.keep_alive [--clients 200] [--rounds 3] [--idle 5.0]

A uvicorn server (a small Starlette app answering a POST) in a thread; `--clients` aiohttp sessions each
send `--rounds` requests, `--idle` seconds (+-20 ms) apart, so every request after the first goes on a
connection idle about as long as uvicorn's default keep-alive. Cases: uvicorn's default 5 s against
aiohttp's pool keeping connections 30 s (the gateway's upstream pool before) and 15 s (aiohttp's default,
as a client of the gateway), the gateway's `server.keep_alive_s` (75 s) against those, and the gateway's
upstream pool now (UPSTREAM_IDLE_S, 4 s) against a 5 s server (vLLM's, SGLang's). Counts the requests that
failed (ServerDisconnectedError and the like). Writes bench/results/keep_alive.json."""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import threading
import time
from pathlib import Path

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.common import RESULTS, save_runs
from gateway.backends.openai_http import UPSTREAM_IDLE_S

OUT = RESULTS / "keep_alive.json"
CASES = {  # name: (server keep-alive s, client keep-alive s)
    "uvicorn 5 s, client pool 30 s (the gateway's upstream pool before)": (5.0, 30.0),
    "uvicorn 5 s, aiohttp's default 15 s (a client of the gateway before)": (5.0, 15.0),
    "pitstop serve 75 s, aiohttp's default 15 s": (75.0, 15.0),
    f"uvicorn 5 s, the gateway's upstream pool now ({UPSTREAM_IDLE_S:g} s)": (5.0, UPSTREAM_IDLE_S),
}


async def _answer(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"ok": True})


class Server:
    def __init__(self, keep_alive_s: float) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/x"
        app = Starlette(routes=[Route("/x", _answer, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error", timeout_keep_alive=keep_alive_s))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


async def _client(url: str, keep_alive_s: float, rounds: int, idle_s: float, rng: random.Random,
                  errors: dict[str, int]) -> int:
    failed = 0
    connector = aiohttp.TCPConnector(keepalive_timeout=keep_alive_s)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(rounds):
            if i:
                await asyncio.sleep(idle_s + rng.uniform(-0.02, 0.02))
            try:
                async with session.post(url, json={}) as response:
                    await response.read()
            except (aiohttp.ClientError, OSError) as exc:
                failed += 1
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
    return failed


def run_case(name: str, server_s: float, client_s: float, args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    errors: dict[str, int] = {}
    with Server(server_s) as server:
        failed = sum(asyncio.run(_gather(server.url, client_s, args, rng, errors)))
    reused = args.clients * (args.rounds - 1)  # requests sent after an idle gap
    row = {"case": name, "server_keep_alive_s": server_s, "client_keep_alive_s": client_s,
           "requests_after_idle": reused, "failed": failed, "failed_share": round(failed / reused, 4),
           "errors": errors}
    print(f"{name:70s} failed {failed} of {reused} requests sent after {args.idle:g} s idle {errors}", flush=True)
    return row


async def _gather(url: str, client_s: float, args: argparse.Namespace, rng: random.Random,
                  errors: dict[str, int]) -> list[int]:
    return await asyncio.gather(*(_client(url, client_s, args.rounds, args.idle, rng, errors)
                                  for _ in range(args.clients)))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds between a client's requests")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rows = [run_case(name, server_s, client_s, args) for name, (server_s, client_s) in CASES.items()]
    settings = {"clients": args.clients, "rounds": args.rounds, "idle_s": args.idle, "jitter_s": 0.02}
    return save_runs("bench.keep_alive", argv, args.out, settings, rows)


if __name__ == "__main__":
    main()
