"""Helpers for the serving tests: an app under uvicorn on a real socket (127.0.0.1, a free port) in a
background thread, `pitstop engine serve` as a subprocess, and a fake runner that takes time per step and can
crash."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import uvicorn
from starlette.applications import Starlette

from engine.batch import ScheduledBatch
from engine.build import build_engine
from engine.server.app import create_app
from tests.engine.fakes import CountingRunner
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def serve_in_thread(app: Starlette, timeout: float = 20.0, port: int = 0) -> Iterator[str]:
    """Yields the base URL (`http://127.0.0.1:PORT`, on `port`, else a free one); shuts the server (and its
    app's engine) down after."""
    # IPPROTO_TCP named, or asyncio leaves TCP_NODELAY off on the accepted connections (it checks the
    # protocol), and Nagle meets delayed ACKs: 40 ms a request.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


class SlowRunner(CountingRunner):
    """Takes `step_s` per step; raises on step number `crash_at` (1-based) when asked."""

    def __init__(self, step_s: float = 0.0, crash_at: int | None = None, vocab_size: int = 128) -> None:
        super().__init__(vocab_size=vocab_size)
        self.step_s = step_s
        self.crash_at = crash_at
        self.thread_ids: set[int] = set()

    def execute(self, batch: ScheduledBatch) -> list[int]:
        self.thread_ids.add(threading.get_ident())
        if self.crash_at is not None and len(self.batches) + 1 >= self.crash_at:
            raise RuntimeError("device lost")
        time.sleep(self.step_s)
        return super().execute(batch)


@contextmanager
def engine_server(model_dir: Path, model_name: str = "tiny", **engine: object) -> Iterator[str]:
    """`pitstop engine serve` in-thread on a model folder (256 blocks of 16, a 512-token context unless
    `engine` says otherwise): yields its base URL."""
    options: dict = {"num_blocks": 256, "block_size": 16, "max_model_len": 512} | engine
    with serve_in_thread(create_app(build_engine(model_dir, **options), model_name)) as url:
        yield url


def sdk(url: str, timeout: float = 60) -> openai.OpenAI:
    """The openai SDK on a served base URL, no retries (a test sees the first answer)."""
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=timeout)


@contextmanager
def engine_serve_process(*args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`pitstop engine serve ARGS` as a subprocess on a free port: yields its base URL and the process once
    /healthz answers; stops it after as Ctrl-C does (SIGINT), killed if it has not exited in 15 s."""
    port = free_port()
    command = [sys.executable, "-m", "gateway.cli", "engine", "serve", *args, "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
