"""Does the gateway hold on to memory across many requests? `pitstop serve` in front of the mock upstream
(bench/mock_upstream.py, 5 ms answers) takes `--rounds` rounds of `--requests` mixed requests, 24 at a
time: whole chats routed by a route group, streams, streams the client leaves after the first event,
embeddings, bad requests (400) and requests the client gives up on before the answer (2 ms timeout);
with `--sessions`, every whole chat also starts a new agent session (kept up to the sessions' idle
expiry and cap). The gateway's RSS after each round is the record.

    .venv/bin/python -m bench.gateway_soak [--rounds 12] [--requests 2000] [--sessions]   # ~1 min

Writes bench/results/gateway_soak.json (or `--out`)."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import yaml

from bench.common import RESULTS, command, machine_info, write_report
from bench.procs import mock_upstream, pitstop_serve

OUT = RESULTS / "gateway_soak.json"
KINDS = ("routed", "stream", "stream-left", "embeddings", "bad", "given-up")


def _config(mock_url: str, work: Path) -> Path:
    def model(name: str, tier: str, **info: object) -> dict:
        return {"model_name": name, "litellm_params": {"model": f"hosted_vllm/{name}", "api_base": f"{mock_url}/v1"},
                "model_info": {"tier": tier, "input_cost_per_token": 1e-7, **info}}

    config = {"model_list": [model("weak", "weak", max_concurrency=8), model("strong", "strong"),
                             model("embed", "weak", mode="embedding")],
              "route_groups": [{"name": "auto", "models": ["weak", "strong"], "router": "tier-prior"}],
              "storage": {"url": f"sqlite:///{work / 'outcomes.db'}", "spool_path": str(work / "spool.jsonl")}}
    path = work / "pitstop.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _one(client: httpx.AsyncClient, i: int, sessions: bool, rng: random.Random) -> None:
    kind = KINDS[i % len(KINDS)]
    messages = [{"role": "user", "content": f"question {i} " + "word " * rng.randint(1, 200)}]
    try:
        if kind == "routed":
            extra = {"session_id": uuid.uuid4().hex} if sessions else {}
            await client.post("/v1/chat/completions", json={"model": "auto", "messages": messages, **extra})
        elif kind in ("stream", "stream-left"):
            body = {"model": "auto" if kind == "stream" else "weak", "messages": messages, "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_bytes():
                    if kind == "stream-left":
                        break
        elif kind == "embeddings":
            await client.post("/v1/embeddings", json={"model": "embed", "input": ["x"] * 4})
        elif kind == "bad":
            await client.post("/v1/chat/completions", json={"model": "auto", "messages": "not a list"})
        else:
            await client.post("/v1/chat/completions", json={"model": "auto", "messages": messages}, timeout=0.002)
    except httpx.TimeoutException:
        pass


async def _round(url: str, requests: int, sessions: bool, seed: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=32)) as client:
        slots = asyncio.Semaphore(24)

        async def go(i: int) -> None:
            async with slots:
                await _one(client, i, sessions, rng)

        await asyncio.gather(*(go(i) for i in range(requests)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--sessions", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pitstop-bench-soak-"))
    mock, mock_url = mock_upstream(work, "--delay-ms", "5", "--chunks", "5", "--chunk-interval-ms", "1")
    gateway, gateway_url = pitstop_serve(_config(mock_url, work), work / "gateway.log")
    mock.start()
    rounds = []
    try:
        gateway.start(timeout_s=300)
        for r in range(args.rounds):
            started = time.perf_counter()
            asyncio.run(_round(gateway_url, args.requests, args.sessions, seed=r))
            rounds.append({"round": r, "requests": (r + 1) * args.requests, "seconds": time.perf_counter() - started,
                           "rss_mib": gateway.rss_mib()})
            print(f"after {(r + 1) * args.requests:6d} requests: RSS {rounds[-1]['rss_mib']:.1f} MiB "
                  f"({rounds[-1]['seconds']:.1f} s for the round)", flush=True)
    finally:
        gateway.stop()
        mock.stop()
    first, last = rounds[0]["rss_mib"], rounds[-1]["rss_mib"]
    per_request = (last - first) * 1024 * 1024 / max(1, (args.rounds - 1) * args.requests)
    print(f"RSS {first:.1f} -> {last:.1f} MiB after the first round: {per_request:.0f} bytes a request")
    write_report(args.out, {"command": command("bench.gateway_soak", argv), "machine": machine_info(),
                            "kinds": list(KINDS), "sessions": args.sessions, "rounds": rounds,
                            "bytes_per_request_after_round_1": per_request})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
