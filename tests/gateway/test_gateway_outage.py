"""A database outage during traffic through the gateway: requests keep succeeding while the outcome
database is down (rows wait in memory, then in the disk spool), and once it is back every request's
row arrives exactly once. The database is a throwaway PostgreSQL cluster this test starts and stops."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from tests.gateway.harness import gateway_config, model_entry, read_outcomes, running_gateway, wait_until
from tests.gateway.upstream import UpstreamProcess
from tests.storage.pg_cluster import ThrowawayPostgres


class Traffic:
    """One client sending requests (every third one streamed) until stopped; every answer must be a 200."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.http = httpx.Client(base_url=url, timeout=30, headers=headers)
        self.ids: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            i = len(self.ids)
            body = {"model": "up", "messages": [{"role": "user", "content": f"request {i}"}], "stream": i % 3 == 0}
            response = self.http.post("/v1/chat/completions", json=body)
            if response.status_code != 200 or (body["stream"] and "[DONE]" not in response.text):
                self.failures.append(f"{response.status_code}: {response.text[:200]}")
            self.ids.append(response.headers["x-pitstop-request-id"])

    def wait_for(self, count: int) -> None:
        wait_until(lambda: len(self.ids) >= count or self.failures, what=f"{count} requests")
        assert not self.failures, self.failures[:3]

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join()
        self.http.close()
        return self.ids


def test_database_outage_mid_traffic_loses_no_row(upstreams: tuple[UpstreamProcess, UpstreamProcess],
                                                  cluster: ThrowawayPostgres, tmp_path: Path) -> None:
    raw = gateway_config(tmp_path, [model_entry("up", upstreams[0].api_base)], storage_url=cluster.url)
    raw["storage"]["max_buffer"] = 25  # small, so the outage overflows memory into the disk spool
    with running_gateway(raw) as gw:
        traffic = Traffic(gw.url)
        try:
            traffic.wait_for(20)
            cluster.stop("immediate")
            down_at = len(traffic.ids)
            traffic.wait_for(down_at + 80)  # all answered while the database is down
            stats = gw.state.writer.stats()
            assert stats.last_error is not None and stats.spooled > 0
            with httpx.Client(base_url=gw.url) as http:
                assert http.get("/readyz").json()["outcome_log"]["last_error"] is not None
            cluster.start()
            traffic.wait_for(len(traffic.ids) + 20)
        finally:
            ids = traffic.stop()
        assert not traffic.failures, traffic.failures[:3]
        gw.flush()
    rows = read_outcomes(cluster.url)
    assert len(ids) == len(set(ids)) >= 120
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    assert all(r["status"] == "ok" for r in rows)
