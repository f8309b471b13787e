"""Process plumbing for the gateway benchmark: start a server, wait until it answers, read its memory
and CPU from /proc (process tree, so workers a server forks are counted too), stop it."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[1]


def probe(url: str, timeout_s: float = 5.0) -> bool:
    """GET url, True on 200. stdlib http.client: an httpx client costs ~45 ms to build (SSL context),
    which would swamp the fast-probe test in `Service.settle`."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout_s)
    try:
        conn.request("GET", parts.path or "/")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_quiet(max_s: float, busy_below: float = 0.35, window_s: float = 0.5) -> tuple[float, float]:
    """Wait (at most max_s) until the whole host is mostly idle between points, since other tenants may
    share it; returns (seconds waited, busy share of the last window)."""
    t0 = time.monotonic()
    while True:
        busy0, total0 = host_cpu()
        time.sleep(window_s)
        busy1, total1 = host_cpu()
        share = (busy1 - busy0) / max(total1 - total0, 1e-9)
        if share < busy_below or time.monotonic() - t0 >= max_s:
            return round(time.monotonic() - t0, 2), round(share, 3)


def free_port() -> int:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the test suite's worker: its own block of ports (tests/ports.py)
        from tests.ports import free_port as worker_port

        return worker_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def module_server(module: str, path: str = "/") -> Iterator[int]:
    """`python -m module --serve PORT` (a benchmark's own HTTP server, in a process of its own so it does not
    share the measured loop), waited for until `path` answers: yields the port; stopped after."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", module, "--serve", str(port)])
    try:
        deadline = time.monotonic() + 30
        while not probe(f"http://127.0.0.1:{port}{path}", 1.0):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"{module}'s HTTP server did not start")
            time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait(10)


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(_children(p))
    return tree


def rss_mib(pid: int) -> float | None:
    """Resident memory of the process and its descendants, MiB."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1) if total else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process and its descendants so far."""
    ticks = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def host_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


@dataclass
class Service:
    """A server process under test, its output going to `log_path`."""

    name: str
    argv: list[str]
    ready_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    proc: subprocess.Popen | None = None
    started_s: float | None = None

    def start(self, timeout_s: float = 120.0) -> None:
        env = {**os.environ, **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        t0 = time.perf_counter()
        # Own session: stop() can signal the whole group, whatever the server forks.
        self.proc = subprocess.Popen(self.argv, env=env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} during start-up; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            if probe(self.ready_url, timeout_s=2.0):
                self.started_s = round(time.perf_counter() - t0, 2)
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not ready at {self.ready_url} after {timeout_s}s; log:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_mib(self) -> float | None:
        return rss_mib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def settle(self, max_s: float = 30.0, quiet_ms: float = 20.0) -> float:
        """Wait until the server answers its probe fast three times in a row (an overloaded point can
        leave a backlog behind); returns the seconds waited."""
        t0, fast = time.monotonic(), 0
        while time.monotonic() - t0 < max_s and fast < 3:
            t = time.perf_counter()
            ok = probe(self.ready_url)
            fast = fast + 1 if ok and (time.perf_counter() - t) * 1000 < quiet_ms else 0
            time.sleep(0.1)
        return round(time.monotonic() - t0, 2)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)


@contextlib.asynccontextmanager
async def healthz_lags(url: str, interval_s: float = 0.01) -> AsyncIterator[list[float]]:
    """Round trips of GET `url`/healthz, one every `interval_s`, while the block runs: the longest is
    how long the server's event loop kept every other request waiting."""
    import httpx

    lags: list[float] = []
    stop = asyncio.Event()

    async def ping() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            while not stop.is_set():
                started = time.perf_counter()
                await client.get("/healthz")
                lags.append(time.perf_counter() - started)
                await asyncio.sleep(interval_s)

    pinger = asyncio.create_task(ping())
    try:
        yield lags
    finally:
        stop.set()
        await pinger


def mock_upstream(work: Path, *options: str) -> tuple[Service, str]:
    """bench/mock_upstream.py on a free port with `options` (e.g. "--delay-ms", "5"), not yet started,
    and its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "bench.mock_upstream", "--port", str(port), *options]
    return Service("mock", argv, f"{url}/health", work / "mock.log", cwd=ROOT, env={"PYTHONPATH": str(ROOT)}), url


def pitstop_serve(config: Path, log_path: Path) -> tuple[Service, str]:
    """`pitstop serve --config config` on a free port, not yet started, and its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port),
            "--log-level", "warning"]
    return Service("pitstop", argv, f"{url}/readyz", log_path, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}), url


def engine_serve(model_dir: Path, work: Path, name: str, *options: str) -> tuple[Service, str]:
    """`pitstop engine serve --model model_dir` serving it as "tiny" on a free port with `options` (e.g.
    "--allow-weight-updates"), not yet started, and its base URL."""
    port = free_port()
    argv = [sys.executable, "-m", "gateway.cli", "engine", "serve", "--model", str(model_dir), "--port", str(port),
            "--served-model-name", "tiny", "--log-level", "warning", *options]
    base = f"http://127.0.0.1:{port}"
    return Service(name, argv, f"{base}/healthz", work / f"{name}.log"), base


def first_token(client: httpx.Client, base: str) -> list[int]:
    """A greedy one-token completion's token ids from the engine at `base` (an httpx.Client's): which
    weights it serves."""
    response = client.post(f"{base}/v1/completions", json={
        "model": "tiny", "prompt": "The weights", "max_tokens": 1, "temperature": 0, "return_token_ids": True})
    response.raise_for_status()
    return response.json()["choices"][0]["token_ids"]


@contextlib.contextmanager
def running(services: Sequence[Service], timeout_s: float = 120.0) -> Iterator[None]:
    """`services` started in order, and stopped in the reverse order after (also when one fails to start)."""
    try:
        for service in services:
            service.start(timeout_s)
        yield
    finally:
        for service in reversed(services):
            service.stop()


@contextlib.contextmanager
def gateway_on_mocks(work: Path, mock_options: Sequence[Sequence[str]],
                     write_config: Callable[[Path, list[str]], None]) -> Iterator[tuple[str, list[str]]]:
    """Mock upstreams, one for each list of bench/mock_upstream.py options, and `pitstop serve` on the config
    `write_config(path, mock_urls)` writes, all started: yields the gateway's URL and the mocks'."""
    mocks = []
    for i, options in enumerate(mock_options):
        (work / f"mock{i}").mkdir(exist_ok=True)
        mocks.append(mock_upstream(work / f"mock{i}", *options))
    write_config(work / "pitstop.yaml", [url for _, url in mocks])
    gateway, gateway_url = pitstop_serve(work / "pitstop.yaml", work / "pitstop.log")
    with running([*(service for service, _ in mocks), gateway]):
        yield gateway_url, [url for _, url in mocks]


@contextlib.contextmanager
def gateway_on_mock(name: str, delay_ms: float) -> Iterator[tuple[Service, str, str]]:
    """A mock upstream answering after `delay_ms` and `pitstop serve` over it (mock_model_config: model "m",
    outcomes in SQLite) in a new temporary folder, started: yields the gateway's Service (for its CPU seconds),
    its URL and the mock's."""
    work = Path(tempfile.mkdtemp(prefix=f"pitstop-bench-{name}-"))
    mock, mock_url = mock_upstream(work, "--delay-ms", str(delay_ms))
    gateway, url = pitstop_serve(mock_model_config(mock_url, f"sqlite:///{work / 'pitstop.db'}", work),
                                 work / "gateway.log")
    with running([mock, gateway], timeout_s=300):
        yield gateway, url, mock_url


def mock_model_config(mock_url: str, storage_url: str, work: Path, model_name: str = "m") -> Path:
    """A gateway config (`work/pitstop.yaml`) with one model on the mock upstream through the direct
    transport, outcomes logged to `storage_url`, ranking off."""
    import yaml

    config = {"model_list": [{"model_name": model_name,
                              "litellm_params": {"model": "hosted_vllm/mock", "api_base": f"{mock_url}/v1"},
                              "model_info": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}}],
              "storage": {"url": storage_url, "spool_path": str(work / "spool.jsonl")}, "ranking": {"enabled": False}}
    path = work / "pitstop.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
