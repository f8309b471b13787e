"""A key's tokens-per-minute limit through the gateway, over real sockets with the openai SDK: requests are
admitted while the tokens its requests used in the last minute are below `tpm_limit` (whole and streamed
answers counted alike), then refused with a 429 and a Retry-After; answers, refusals included, carry
OpenAI's `x-ratelimit-limit-tokens` / `-remaining-tokens`; two replicas on Redis share the window; the limit is set
over HTTP (`/v1/keys`), from the CLI and by default (`limits.default_tpm`); bad values are 400s."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import openai
import pytest

from storage.keys import KeyStore
from tests.gateway.harness import (
    Gateway,
    gateway_config,
    model_entry,
    run_cli,
    run_cli_here,
    running_gateway,
    write_config,
)
from tests.gateway.test_gateway_budget_periods import forget_limits
from tests.gateway.test_limits import REDIS_URL, needs_redis
from tests.gateway.upstream import UpstreamProcess

MASTER = "sk-master-tpm"
PROMPT = "[words:7] hello"  # 2 prompt tokens and 7 answer tokens: 9 a request, as the fake upstream counts


def config(tmp_path: Path, upstream: UpstreamProcess, **extra: Any) -> dict:
    return gateway_config(tmp_path, [model_entry("m", upstream.api_base)],
                          **{"auth": {"require_keys": True, "master_key": MASTER}, **extra})


@pytest.fixture
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(config(tmp_path, upstream_processes[0])) as gateway:
        yield gateway


def ask(gw: Gateway, secret: str, stream: bool = False) -> tuple[int, dict[str, str]]:
    """One request: its status and headers."""
    with gw.http(headers={"authorization": f"Bearer {secret}"}) as http:
        body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": PROMPT}]}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        response = http.post("/v1/chat/completions", json=body)
        return response.status_code, dict(response.headers)


def test_requests_stop_once_the_minutes_tokens_reach_the_limit(gw: Gateway) -> None:
    _, secret = KeyStore(gw.storage_url).create("t", tpm_limit=20)
    answers = [ask(gw, secret, stream=i == 1) for i in range(4)]
    assert [status for status, _ in answers] == [200, 200, 200, 429]
    assert [h.get("x-ratelimit-remaining-tokens") for _, h in answers[:3]] == ["20", "11", "2"]
    assert {h["x-ratelimit-limit-tokens"] for _, h in answers[:3]} == {"20"}
    refused = answers[3][1]
    assert 50 <= int(refused["retry-after"]) <= 60  # the first request's 9 tokens leave a minute after it
    assert (refused["x-ratelimit-limit-tokens"], refused["x-ratelimit-remaining-tokens"]) == ("20", "0")
    with gw.openai(api_key=secret) as client, pytest.raises(openai.RateLimitError, match="tpm_limit") as error:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPT}])
    assert error.value.code == "rate_limit_exceeded"
    rows = gw.rows()
    assert sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows if r["status"] == "ok") == 27


def test_a_key_without_a_token_limit_sends_no_token_headers(gw: Gateway) -> None:
    _, secret = KeyStore(gw.storage_url).create("r", rpm_limit=100)
    status, headers = ask(gw, secret)
    assert status == 200 and headers["x-ratelimit-limit-requests"] == "100"
    assert "x-ratelimit-limit-tokens" not in headers


def test_refusals_say_what_is_left_too(gw: Gateway) -> None:
    store = KeyStore(gw.storage_url)
    _, by_rate = store.create("rate", rpm_limit=1)
    _, by_budget = store.create("budget", budget_usd=0.0)
    (first, _), (second, rate_headers) = ask(gw, by_rate), ask(gw, by_rate)
    status, budget_headers = ask(gw, by_budget)
    assert (first, second, status) == (200, 429, 429)
    assert (rate_headers["x-ratelimit-limit-requests"], rate_headers["x-ratelimit-remaining-requests"]) == ("1", "0")
    assert float(budget_headers["x-pitstop-budget-remaining-usd"]) == 0.0


@needs_redis
def test_two_replicas_on_redis_share_the_token_window(
        upstream_processes: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> None:
    raw = config(tmp_path, upstream_processes[0], redis_url=REDIS_URL)
    with ExitStack() as stack:
        replicas = [stack.enter_context(running_gateway(raw)) for _ in range(2)]
        key_id, secret = KeyStore(replicas[0].storage_url).create("shared", tpm_limit=20)
        stack.callback(forget_limits, key_id)
        statuses = [ask(replicas[i % 2], secret)[0] for i in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


def test_the_limit_is_set_over_http_from_the_cli_and_by_default(
        upstream_processes: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> None:
    raw = config(tmp_path, upstream_processes[0], limits={"default_tpm": 10})
    path = write_config(tmp_path / "pitstop.yaml", raw)
    with running_gateway(raw) as gw, gw.http(headers={"authorization": f"Bearer {MASTER}"}) as admin:
        made = admin.post("/v1/keys", json={"name": "a", "tpm_limit": 1000}).json()
        assert made["tpm_limit"] == 1000 and ask(gw, made["secret"])[1]["x-ratelimit-limit-tokens"] == "1000"
        changed = admin.patch(f"/v1/keys/{made['id']}", json={"tpm_limit": 50}).json()
        assert changed["tpm_limit"] == 50 and ask(gw, made["secret"])[1]["x-ratelimit-remaining-tokens"] == "41"
        for value in (0, 1.5, "many"):
            refused = admin.post("/v1/keys", json={"name": "b", "tpm_limit": value})
            assert refused.status_code == 400 and refused.json()["error"]["param"] in ("tpm_limit", None), value
        plain = admin.post("/v1/keys", json={"name": "c"}).json()
        assert ask(gw, plain["secret"])[1]["x-ratelimit-limit-tokens"] == "10"  # limits.default_tpm
        created = run_cli("keys", "create", "--name", "cli", "--tpm", "300", "--config", str(path))
        assert created.returncode == 0, created.stderr
        listed = run_cli_here("keys", "list", "--config", str(path))
        assert "tpm=300" in listed.stdout and "tpm=50" in listed.stdout
