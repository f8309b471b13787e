"""What the address check (engine/net_guard.py, engine/net_transport.py) costs an engine's image fetch: the engine's
own fetch (engine/image_fetch.py image_bytes, a new client a request as engine/openai_images.py makes one) of a
PNG from a local HTTP server (aiohttp, in another process), with the guarded client (`media_client`) and a plain
httpx one, interleaved in rounds, for `127.0.0.1` (a literal: no lookup) and `localhost` (a lookup).

    .venv/bin/python -m bench.media_fetch_guard      # ~20 s; bench/results/media_fetch_guard.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from typing import Any

import httpx
import numpy as np
from aiohttp import web
from PIL import Image

from bench.common import RESULTS, command, machine_info, pct, write_report
from bench.procs import module_server
from engine.config import ImageLimits
from engine.image_fetch import image_bytes, media_client

LIMITS = ImageLimits()  # the flags' defaults: private addresses allowed, so the fetches go through (and are checked)


def picture_png(side: int = 336) -> bytes:
    """A noisy RGB square (LLaVA-1.5's 336 pixels): a PNG of about 340 KB, as a photo's would be."""
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def server_main(port: int) -> None:
    body = picture_png()

    async def png(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="image/png")

    app = web.Application()
    app.router.add_get("/cat.png", png)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


async def _timed_fetches(url: str, guarded: bool, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client = media_client(LIMITS) if guarded else httpx.AsyncClient(trust_env=False)
        async with client:
            data = await image_bytes(url, "messages[0].content[0].image_url", LIMITS, client)
        times.append(time.perf_counter() - start)
        assert data.startswith(b"\x89PNG")
    return times


async def measure(port: int, fetches: int, rounds: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {}
    for _ in range(rounds):  # interleaved: a noisy neighbour slows every variant alike
        for host in ("127.0.0.1", "localhost"):
            for guarded in (False, True):
                name = f"{host}, {'guarded' if guarded else 'plain'}"
                times.setdefault(name, []).extend(await _timed_fetches(f"http://{host}:{port}/cat.png", guarded,
                                                                        fetches))
    summary = {name: {"n": len(t), "median_ms": pct(t, 50) * 1e3, "p90_ms": pct(t, 90) * 1e3}
               for name, t in times.items()}
    overhead = {host: summary[f"{host}, guarded"]["median_ms"] - summary[f"{host}, plain"]["median_ms"]
                for host in ("127.0.0.1", "localhost")}
    return {"fetches": summary, "overhead_ms": overhead}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetches", type=int, default=100, help="fetches per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "media_fetch_guard.json"))
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server process
    args = parser.parse_args(argv)
    if args.serve:
        return server_main(args.serve)
    with module_server("bench.media_fetch_guard", "/cat.png") as port:
        results = asyncio.run(measure(port, args.fetches, args.rounds))
    report = {"command": command("bench.media_fetch_guard", argv), "machine": machine_info(),
              "settings": {"fetches": args.fetches, "rounds": args.rounds, "png_bytes": len(picture_png()),
                           "rules": "the flags' defaults (private addresses allowed)"}, **results}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    for host, overhead in report["overhead_ms"].items():
        print(f"{host}: {overhead:+.3f} ms a fetch")


if __name__ == "__main__":
    main()
