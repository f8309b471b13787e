"""Session state in Redis going away mid-program: every turn is still served (without affinity or a
learned TTL while Redis is down), `GET /v1/sessions/{id}` says the store is unavailable (503, not "no
such session"), no outcome row is lost, and sessions are kept again once Redis is back."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.agent_sessions import agent_loop
from tests.agent_sessions.agent_loop import run_tool, turn
from tests.agent_sessions.test_agent_loop_e2e import config
from tests.gateway.harness import running_gateway
from tests.throwaway_redis import ThrowawayRedis

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")


def test_turns_are_served_while_the_session_store_is_down(tmp_path: Path, tiny_model_dir: Path) -> None:
    redis_server = ThrowawayRedis()
    redis_server.start()
    raw = config(tmp_path, tiny_model_dir) | {"redis_url": redis_server.url}
    try:
        with running_gateway(raw) as gw:
            run = agent_loop.start("agent-outage")
            url = f"{gw.url}/v1/sessions/agent-outage"
            with gw.openai() as client:
                run_tool(run, turn(client, run), "pytest tests/", 0.1)
                assert httpx.get(url, timeout=10).json()["turns"] == 1

                redis_server.kill()
                run_tool(run, turn(client, run), "pytest tests/", 0.1)  # served without its state
                down = httpx.get(url, timeout=10)
                assert down.status_code == 503
                assert down.json()["error"]["code"] == "session_store_unavailable"

                redis_server.start()  # empty: Redis ran without persistence
                turn(client, run)
                assert httpx.get(url, timeout=10).json()["turns"] == 1  # kept again from here on

            rows = gw.rows(run.request_ids)
            # Every turn has its row; without the stored state each one counted as its program's first.
            assert [(r["status"], r["http_status"], r["turn"]) for r in rows] == [("ok", 200, 1), ("ok", 200, 1), ("ok", 200, 1)]
    finally:
        redis_server.kill()
