"""Helpers for the gateway tests: configs over the fake upstream, a gateway served by uvicorn on a real
socket (in this process, or as `pitstop serve` subprocesses), SDK clients, the outcome table, and a
webhook receiver."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import sqlalchemy as sa
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.app import create_app
from gateway.cli import main as cli_main
from gateway.config import load_settings, parse_settings
from gateway.state import GatewayState
from storage.db import create_engine
from storage.models import Feedback, Outcome
from tests.engine.serving import serve_in_thread
from tests.storage.pg_cluster import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
PITSTOP = str(Path(sys.executable).parent / "pitstop")
# Prices that make cost easy to check: prompt words x 1 µ$ + completion words x 2 µ$.
PRICE_IN, PRICE_OUT = 1e-6, 2e-6


def model_entry(name: str, api_base: str, provider: str = "pitstop-engine", tier: str = "medium",
                price_in: float = PRICE_IN, price_out: float = PRICE_OUT, **params: Any) -> dict:
    """A model entry served by an OpenAI-compatible server: `pitstop-engine/` is the direct HTTP backend,
    `hosted_vllm/` goes through litellm here (its `auto` transport would go direct)."""
    if provider == "hosted_vllm":
        params.setdefault("transport", "litellm")
    return {"model_name": name,
            "litellm_params": {"model": f"{provider}/{name}", "api_base": api_base, **params},
            "model_info": {"input_cost_per_token": price_in, "output_cost_per_token": price_out, "tier": tier}}


def gateway_config(tmp_path: Path, models: list[dict], route_groups: list[dict] | None = None,
                   storage_url: str | None = None, **sections: Any) -> dict:
    storage = {"url": storage_url or f"sqlite:///{tmp_path / 'gateway.db'}",
               "spool_path": str(tmp_path / "outcome-spool.jsonl")}
    return {"model_list": models, "route_groups": route_groups or [], "storage": storage, **sections}


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def request_id_of(response: httpx.Response) -> str:
    return response.headers["x-pitstop-request-id"]


@dataclass
class Gateway:
    """A gateway on a real socket; `request_ids` has the id of every response any of its clients got."""

    url: str
    storage_url: str
    state: GatewayState | None = None
    request_ids: list[str] = field(default_factory=list)

    def _record(self, response: httpx.Response) -> None:
        if "x-pitstop-request-id" in response.headers:
            self.request_ids.append(response.headers["x-pitstop-request-id"])

    def http(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, event_hooks={"response": [self._record]}, **kwargs)

    def openai(self, api_key: str = "none", **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0,
                             http_client=self.http(), **kwargs)

    def async_openai(self, api_key: str = "none") -> openai.AsyncOpenAI:
        async def record(response: httpx.Response) -> None:
            self._record(response)

        client = httpx.AsyncClient(timeout=30, event_hooks={"response": [record]})
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, http_client=client)

    def flush(self) -> None:
        assert self.state is not None, "flush() is for in-process gateways; poll rows() for subprocesses"
        recorder = self.state.recorder  # rows that wait for a rank scored beside their call go first
        wait_until(lambda: recorder.rows_waiting == 0, what="rows waiting for their rank were handed over")
        assert self.state.writer.flush(timeout=20), "the outcome writer did not flush in time"
        assert self.state.feedback.flush(timeout=20), "the feedback writer did not flush in time"

    def rows(self, ids: list[str] | None = None) -> list[dict]:
        if self.state is not None:
            self.flush()
        return read_outcomes(self.storage_url, ids)

    def row(self, request_id: str) -> dict:
        rows = self.rows([request_id])
        assert len(rows) == 1, f"expected one outcome row for {request_id}, found {len(rows)}"
        return rows[0]


def read_outcomes(url: str, ids: list[str] | None = None) -> list[dict]:
    engine = create_engine(url)
    try:
        query = sa.select(Outcome.__table__)
        if ids is not None:
            query = query.where(Outcome.__table__.c.request_id.in_(ids))
        with engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]
    finally:
        engine.dispose()


def read_feedback(url: str) -> list[dict]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [dict(row) for row in connection.execute(sa.select(Feedback.__table__)).mappings()]
    finally:
        engine.dispose()


@contextmanager
def running_gateway(raw: dict, config_path: Path | None = None) -> Iterator[Gateway]:
    """The app from `create_app(parse_settings(raw))`, under uvicorn in a thread of this process. With
    `config_path`, `raw` is written there and read back as `pitstop serve` reads its file (a reload of
    the config reads that file again)."""
    settings = load_settings(write_config(config_path, raw)) if config_path is not None else parse_settings(raw)
    app = create_app(settings)
    with serve_in_thread(app, timeout=60) as url:
        yield Gateway(url, settings.storage.url, app.state.pitstop)


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} not reached in {timeout:.0f}s"
        time.sleep(0.05)
    return value


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PITSTOP, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def run_cli_here(*args: str) -> subprocess.CompletedProcess[str]:
    """What `run_cli` gives, from `gateway.cli.main` in this process: the same parser and handlers without
    a new interpreter's seconds of imports, for a test that runs commands many times (a `run_cli` of its
    own still covers the console script). argparse's usage errors exit 2, as the script's do."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = cli_main(list(args))
        except SystemExit as exit_:  # as the interpreter ends: an int is the status, a message goes to stderr
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            if exit_.code is not None and not isinstance(exit_.code, int):
                print(exit_.code, file=sys.stderr)
    return subprocess.CompletedProcess([PITSTOP, *args], code, out.getvalue(), err.getvalue())


class GatewayProcess:
    """`pitstop serve --config PATH --port P` as a subprocess; `wait_ready()` once /healthz answers.
    Start several, then wait for each: they import and start in parallel."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen([PITSTOP, "serve", "--config", str(config), "--port", str(self.port),
                                      "--log-level", "warning"], cwd=REPO_ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, env={**os.environ})

    def wait_ready(self, timeout_s: float = 60.0) -> GatewayProcess:
        deadline = time.monotonic() + timeout_s
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"pitstop serve did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def gateway(self, storage_url: str) -> Gateway:
        return Gateway(self.url, storage_url)

    def close(self) -> None:
        """SIGTERM: uvicorn runs the lifespan shutdown, which flushes the outcome writer."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@contextmanager
def gateway_processes(*configs: Path) -> Iterator[list[GatewayProcess]]:
    processes = [GatewayProcess(config, config.with_suffix(".log")) for config in configs]
    try:
        yield [process.wait_ready() for process in processes]
    finally:
        for process in processes:
            process.close()


class Receiver:
    """A webhook receiver (serve `app()` on a real socket): every POST's body and headers, in order, and
    those it took; it refuses (503) the first `refuse` posts, and answers the rest `status` (200)."""

    def __init__(self) -> None:
        self.posts: list[tuple[bytes, dict[str, str]]] = []
        self.taken: list[tuple[bytes, dict[str, str]]] = []
        self.refuse = 0
        self.status = 200
        self._lock = threading.Lock()

    async def receive(self, request: Request) -> JSONResponse:
        post = (await request.body(), dict(request.headers))
        with self._lock:
            self.posts.append(post)
            if self.refuse > 0:
                self.refuse -= 1
                return JSONResponse({"error": "busy"}, status_code=503)
            if self.status < 300:
                self.taken.append(post)
        return JSONResponse({"ok": self.status < 300}, status_code=self.status)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.receive, methods=["POST"])])

    @property
    def events(self) -> list[dict]:
        """The bodies it took, parsed."""
        with self._lock:
            return [json.loads(body) for body, _ in self.taken]

    def accepted(self) -> list[tuple[bytes, dict[str, str]]]:
        """What it took, one per `webhook-id` (as a receiver drops repeats)."""
        with self._lock:
            return list({headers["webhook-id"]: (body, headers) for body, headers in self.taken}.values())
