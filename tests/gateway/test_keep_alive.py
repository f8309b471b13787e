"""Idle connections, on both sides of the gateway: `pitstop serve` keeps a client's idle connection for
`server.keep_alive_s` (75 s by default, longer than clients keep theirs: uvicorn's own 5 s is shorter than
aiohttp's 15 s, so clients sent on connections being closed) and `pitstop engine serve` for
`--timeout-keep-alive`; towards its upstreams the gateway lets an idle connection go after
UPSTREAM_IDLE_S, before the 5 s a vLLM or uvicorn server keeps one, so it never sends on one the server
is closing. bench/keep_alive.py measures the failures either way."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.tiny_model import make_tiny_model
from gateway.backends import openai_http
from gateway.cli import build_parser
from gateway.config import parse_settings
from tests.gateway.harness import (
    gateway_config,
    gateway_processes,
    model_entry,
    running_gateway,
    write_config,
)
from tests.gateway.test_gateway_embedded_serve import engine_process, wait_for_models

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def _answer(sock: socket.socket) -> bytes:
    """One HTTP response's bytes (its body is small), or b"" where the server closed the connection."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(4096)
    return data


def still_open_after(url: str, idle_s: float) -> bool:
    """Whether a connection that was answered once answers again after `idle_s` without a byte sent."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(HEALTHZ)
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(idle_s)
        try:
            sock.sendall(HEALTHZ)
            return _answer(sock).startswith(b"HTTP/1.1 200")
        except OSError:  # reset: closed
            return False


def test_pitstop_serve_keeps_idle_client_connections_for_keep_alive_s(upstreams: tuple, tmp_path: Path) -> None:
    assert parse_settings(gateway_config(tmp_path, [model_entry("m", upstreams[0].api_base)])).server.keep_alive_s == 75
    configs = []
    for keep_alive_s in (0.3, 3.0):
        raw = gateway_config(tmp_path / str(keep_alive_s), [model_entry("m", upstreams[0].api_base)],
                             server={"keep_alive_s": keep_alive_s})
        (tmp_path / str(keep_alive_s)).mkdir()
        configs.append(write_config(tmp_path / str(keep_alive_s) / "pitstop.yaml", raw))
    with gateway_processes(*configs) as (short, long):
        assert not still_open_after(short.url, 1.0)
        assert still_open_after(long.url, 1.0)


def test_engine_serve_keeps_idle_connections_for_its_timeout_keep_alive(tmp_path: Path) -> None:
    assert build_parser().parse_args(["engine", "serve", "--model", "m"]).timeout_keep_alive == 75
    model_dir = make_tiny_model(tmp_path / "tiny")
    with engine_process(model_dir, "tiny", tmp_path / "engine.log", "--timeout-keep-alive", "0.3") as api_base:
        wait_for_models(api_base)
        assert not still_open_after(api_base.removesuffix("/v1"), 1.0)


class PortsSeen:
    """An OpenAI-compatible upstream (uvicorn, keeping idle connections 5 s as vLLM's does) that notes each
    request's client port: a new port is a new connection."""

    def __init__(self) -> None:
        self.ports: list[int] = []

    async def chat(self, request: Request) -> JSONResponse:
        await request.body()
        self.ports.append(request.scope["client"][1])
        return JSONResponse({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture
def ports_seen() -> Iterator[tuple[PortsSeen, str]]:
    seen = PortsSeen()
    app = Starlette(routes=[Route("/v1/chat/completions", seen.chat, methods=["POST"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield seen, f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server.should_exit = True
    thread.join(10)
    sock.close()


def test_the_gateway_lets_an_idle_upstream_connection_go_before_the_server_would(
        ports_seen: tuple[PortsSeen, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert openai_http.UPSTREAM_IDLE_S < 5  # under what uvicorn, vLLM and SGLang keep
    monkeypatch.setattr(openai_http, "UPSTREAM_IDLE_S", 0.4)  # the same rule, faster
    seen, base = ports_seen
    with running_gateway(gateway_config(tmp_path, [model_entry("m", base)])) as gw, gw.openai() as client:
        def ask() -> None:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])

        ask()
        ask()  # at once: the same connection
        time.sleep(1.2)  # idle past UPSTREAM_IDLE_S (aiohttp drops it at its next sweep): a new one
        ask()
    assert seen.ports[0] == seen.ports[1] and seen.ports[2] != seen.ports[1]
