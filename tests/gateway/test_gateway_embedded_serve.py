"""The embedded default's config under `pitstop serve`, in processes of their own: with `tiny-chat`, a
`pitstop-engine/` model served by a real `pitstop engine serve` process; and shut down by SIGTERM
mid-traffic, where requests in flight run to their end (or are cut, with OpenAI-shaped errors, past
`server.graceful_shutdown_s`) and every outcome row is written. The `embedded` fixture (conftest.py)
builds the tiny models these processes load."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.gateway.embedded_default import ENCODER_MODEL, NO_EOS, embedded_config
from tests.gateway.harness import (
    PITSTOP,
    REPO_ROOT,
    Gateway,
    gateway_processes,
    model_entry,
    read_outcomes,
    wait_until,
    write_config,
)
from tests.storage.pg_cluster import free_port


@contextmanager
def engine_process(model_dir: Path, name: str, log_path: Path, *options: str) -> Iterator[str]:
    """`pitstop engine serve` on a free port, with `options`; yields its OpenAI base URL (the caller waits
    until it lists its model: wait_for_models)."""
    port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen([PITSTOP, "engine", "serve", "--model", str(model_dir), "--port", str(port),
                                 "--served-model-name", name, "--num-blocks", "256", "--log-level", "warning",
                                 *options],
                                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            proc.terminate()
            proc.wait(30)


def wait_for_models(api_base: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(api_base + "/models", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{api_base} did not come up"
        time.sleep(0.1)


def test_pitstop_serve_with_a_pitstop_engine_process(embedded: tuple[Gateway, Path], tmp_path: Path) -> None:
    """`pitstop serve` on the embedded config plus `tiny-chat`, a `pitstop-engine/` model served by a real
    `pitstop engine serve` process (the direct HTTP backend). Both processes start in parallel."""
    _, root = embedded  # the models are built: the processes load them
    raw = embedded_config(root)
    url = f"sqlite:///{tmp_path / 'served.db'}"
    raw["storage"] |= {"url": url, "spool_path": str(tmp_path / "spool.jsonl")}
    with engine_process(root / "models" / "tiny-small", "tiny-chat", tmp_path / "engine.log") as engine:
        raw["model_list"].append(model_entry("tiny-chat", engine))
        with gateway_processes(write_config(tmp_path / "pitstop.yaml", raw)) as (process,):
            wait_for_models(engine)
            gw = process.gateway(url)
            with gw.openai() as client:
                routed = client.chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=3, extra_body=NO_EOS)
                direct = client.chat.completions.with_raw_response.create(
                    model="tiny-chat", messages=[{"role": "user", "content": "hello"}], max_tokens=5,
                    extra_headers={"x-session-id": "agent-7"}, extra_body=NO_EOS)
                chunks = list(client.chat.completions.create(
                    model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True,
                    stream_options={"include_usage": True}, extra_body=NO_EOS))
            with gw.http() as http:
                assert http.get("/readyz").json()["models"] == {"tiny-small": True, "tiny-large": True,
                                                                 ENCODER_MODEL: True, "tiny-chat": True}
    assert routed.parse().usage.completion_tokens == 3 and routed.headers["x-pitstop-route-group"] == "auto"
    assert direct.parse().usage.completion_tokens == 5 and direct.headers["x-pitstop-model"] == "tiny-chat"
    assert chunks[-1].usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    # SIGTERM ran the gateway's shutdown, which flushed the outcome writer.
    rows = {r["request_id"]: r for r in read_outcomes(url)}
    assert len(rows) == 3 and rows[routed.headers["x-pitstop-request-id"]]["route_group"] == "auto"
    row = rows[direct.headers["x-pitstop-request-id"]]
    assert (row["model"], row["session_id"], row["completion_tokens"], row["status"]) == \
        ("tiny-chat", "agent-7", 5, "ok")


def outstanding(url: str, deployment: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    line = next(ln for ln in text.splitlines() if ln.startswith(f'pitstop_outstanding_requests{{deployment="{deployment}"}}'))
    return float(line.rsplit(" ", 1)[1])


def sigterm_mid_traffic(root: Path, tmp_path: Path, max_tokens: int, **server: object
                        ) -> tuple[list[tuple[str | None, object, str]], dict[str, dict], int | None]:
    """Six requests (three streamed, three whole) in flight on the embedded engine when `pitstop serve`
    gets SIGTERM: what each client got, the rows by request id, and the exit status."""
    raw = embedded_config(root)
    url = f"sqlite:///{tmp_path / 'draining.db'}"
    raw["storage"] |= {"url": url, "spool_path": str(tmp_path / "spool.jsonl")}
    raw["server"] = server
    with gateway_processes(write_config(tmp_path / "pitstop.yaml", raw)) as (process,):
        def ask(i: int) -> tuple[str | None, object, str]:
            body = {"model": "tiny-large", "max_tokens": max_tokens, "ignore_eos": True, "stream": i % 2 == 0,
                    "messages": [{"role": "user", "content": f"a long story, number {i}"}]}
            try:
                response = httpx.post(process.url + "/v1/chat/completions", json=body, timeout=60)
            except httpx.HTTPError as exc:  # cut mid-answer
                return None, type(exc).__name__, ""
            return response.headers.get("x-pitstop-request-id"), response.status_code, response.text

        with ThreadPoolExecutor(6) as pool:
            calls = [pool.submit(ask, i) for i in range(6)]
            wait_until(lambda: outstanding(process.url, "tiny-large#0") == 6, timeout=30,
                       what="all six requests in flight")
            process.proc.terminate()
            answers = [call.result() for call in calls]
        status = process.proc.wait(60)
    return answers, {r["request_id"]: r for r in read_outcomes(url)}, status


def test_sigterm_lets_requests_in_flight_finish_and_logs_them(embedded: tuple[Gateway, Path], tmp_path: Path) -> None:
    """A deploy's SIGTERM lands mid-traffic: every request the engine is answering (streamed or whole)
    runs to its end, and each one's outcome row is written before the process exits."""
    _, root = embedded  # the models are built: the process loads them
    answers, rows, status = sigterm_mid_traffic(root, tmp_path, 800)
    assert status in (0, -signal.SIGTERM)  # uvicorn ends its graceful shutdown by re-raising the signal
    for i, (_, code, text) in enumerate(answers):
        assert code == 200
        assert text.rstrip().endswith("data: [DONE]") if i % 2 == 0 else json.loads(text)["usage"]["completion_tokens"] == 800
    assert all((rows[rid]["status"], rows[rid]["completion_tokens"]) == ("ok", 800) for rid, _, _ in answers)


def test_graceful_shutdown_s_cuts_what_runs_past_it_and_logs_why(embedded: tuple[Gateway, Path], tmp_path: Path) -> None:
    """With `server.graceful_shutdown_s`, requests still running when it runs out are cut by the
    gateway, each with an answer in OpenAI's shape (a whole answer a retryable 503, a stream an error
    event and no [DONE]) rather than uvicorn's plain-text 500, and their rows say why."""
    _, root = embedded
    answers, rows, status = sigterm_mid_traffic(root, tmp_path, 1900, graceful_shutdown_s=0.3)
    assert status in (0, -signal.SIGTERM)
    for i, (_, code, text) in enumerate(answers):
        if i % 2 == 0:  # streamed
            assert code == 200 and not text.rstrip().endswith("[DONE]")
            last = json.loads(text.rstrip().splitlines()[-1].removeprefix("data: "))
            assert last["error"]["code"] == "shutting_down"
        else:
            assert code == 503
            assert json.loads(text)["error"]["code"] == "shutting_down"
    assert len(rows) == 6
    for row in rows.values():
        assert (row["status"], row["http_status"]) == ("aborted", 503)
        assert "cut by the gateway's shutdown" in row["error"]
