"""A stream whose client is gone by the time the gateway, holding its first chunk, starts the response.

ASGI 2.4 servers raise OSError from `send` on a closed connection: then the response's start fails and its
body (the events generator) never runs, so the body's own `finally`, which settles a stream its client left,
does not either. The response's close settles it instead: the engine request is aborted and the outcome row
written as aborted (499). Driven at the ASGI level, where that order is exact."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from engine.tiny_model import make_tiny_model
from gateway.app import create_app
from gateway.config import parse_settings
from tests.gateway.harness import gateway_config, read_outcomes

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a long story"}], "max_tokens": 400,
        "temperature": 0, "stream": True}


def scope(path: str) -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [(b"content-type", b"application/json"), (b"host", b"gateway")],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}


async def leave_before_the_first_event(app: object, body: bytes) -> list[dict]:
    """The request's body; the gateway's watcher hears nothing while the call starts; the connection is
    closed by the time the response starts: `send` raises, as an ASGI 2.4 server's does."""
    sent: list[dict] = []
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # cancelled once the first chunk is in
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        sent.append(message)
        raise ConnectionResetError("the client closed the connection")

    await app(scope("/v1/chat/completions"), receive, send)  # type: ignore[operator]  # no error: the client left
    return sent


def test_a_client_gone_before_the_first_event_aborts_the_engine_request_and_is_logged(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    raw = gateway_config(tmp_path, [{"model_name": "tiny", "litellm_params": {
        "model": "pitstop-local/tiny", "model_dir": str(model_dir), "num_blocks": 128, "max_model_len": 512}}])
    settings = parse_settings(raw)
    app = create_app(settings)

    async def run() -> tuple[list[dict], bool]:
        async with app.router.lifespan_context(app):
            state = app.state.pitstop
            engine = state.pool.deployments[0].backend.engine.engine
            sent = await leave_before_the_first_event(app, json.dumps(BODY).encode())
            for _ in range(200):  # the abort reaches the engine's loop within a step or two
                if not engine.has_unfinished():
                    break
                await asyncio.sleep(0.05)
            return sent, engine.has_unfinished()

    sent, still_running = asyncio.run(run())
    assert [m["type"] for m in sent] == ["http.response.start"], "the response should have failed at its start"
    assert not still_running, "the engine request went on generating for a client that left"
    rows = read_outcomes(settings.storage.url)  # the lifespan's end flushed the outcome writer
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["status"], row["http_status"]) == ("aborted", 499)
    assert "before the stream's first event" in row["error"]

