"""What the gateway adds to OpenAI's Videos API: a video job's create and a poll of it (the job's status, from
the deployment that holds it), and a 20 MiB video's download, sent to the fake OpenAI upstream of the tests
(tests/gateway/upstream_videos.py, its own process: a job moves on at each poll, its content is derived from
its prompt and streamed in 256 KiB chunks) directly and through `pitstop serve` (its own process, the model on
the direct transport, jobs and outcome rows in SQLite), one request at a time, the two ways interleaved
request by request in the same run.

    .venv/bin/python -m bench.gateway_videos [--requests 20]

Latency is the client's wall time to the answer's last byte (httpx, a kept-alive connection each way); the
added latency is the median over pairs of (through the gateway - direct). Each pair's poll is its job's first
(queued -> in_progress: the gateway writes the job's new status). A download's throughput is 20 MiB over its
time; the gateway's resident set (its process tree) is sampled while the downloads run, its peak against its
level before them: whether it holds a video rather than passing it on. Client, upstream and gateway share the
machine; the load average is recorded.

Writes bench/results/gateway_videos.json."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

if __package__ in (None, ""):  # run as a script: make `bench` and `gateway` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, command, machine_info, pct, write_report  # noqa: E402
from bench.gateway_audio_images import PeakRss  # noqa: E402
from bench.procs import pitstop_serve, rss_mib  # noqa: E402
from tests.gateway.upstream import UpstreamProcess  # noqa: E402
from tests.gateway.upstream_videos import video_bytes  # noqa: E402

OUT = RESULTS / "gateway_videos.json"
MIB = 1024 * 1024
BIG_PROMPT = "[mb:20] a long take of the pit lane"


def _write_config(work: Path, api_base: str) -> Path:
    model = {"model_name": "sora", "litellm_params": {"model": "openai/sora-2", "api_base": api_base, "api_key": "k"},
             "model_info": {"mode": "video_generation", "output_cost_per_video_per_second": 0.1}}
    config = {"model_list": [model], "ranking": {"enabled": False},
              "storage": {"url": f"sqlite:///{work / 'gateway.db'}", "spool_path": str(work / "spool.jsonl")}}
    path = work / "pitstop.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _timed(call: Callable[[], httpx.Response]) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = call()
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, (response.status_code, response.text[:300])
    return elapsed, response


def _summary(name: str, pairs: list[tuple[float, float]]) -> dict:
    direct_ms = [d * 1000 for d, _ in pairs]
    gateway_ms = [g * 1000 for _, g in pairs]
    added = [g - d for d, g in zip(direct_ms, gateway_ms, strict=True)]
    print(f"{name}: direct p50 {statistics.median(direct_ms):.1f} ms, gateway p50 {statistics.median(gateway_ms):.1f} "
          f"ms, added median {statistics.median(added):.1f} ms", flush=True)
    return {"requests": len(pairs), "direct_ms": {"p50": statistics.median(direct_ms), "p90": pct(direct_ms, 90)},
            "gateway_ms": {"p50": statistics.median(gateway_ms), "p90": pct(gateway_ms, 90)},
            "added_ms": {"median": statistics.median(added), "p90": pct(added, 90)}}


def _jobs(up: httpx.Client, gw: httpx.Client, requests: int) -> dict:
    """Create and first poll, each pair direct then through the gateway."""
    creates, polls = [], []
    body = {"prompt": "a pit stop in one take", "seconds": "4", "size": "1280x720"}
    for _ in range(requests):
        direct_s, direct = _timed(lambda: up.post("/v1/videos", json={**body, "model": "sora-2"}))
        gateway_s, made = _timed(lambda: gw.post("/v1/videos", json={**body, "model": "sora"}))
        creates.append((direct_s, gateway_s))
        direct_path, gateway_path = f"/v1/videos/{direct.json()['id']}", f"/v1/videos/{made.json()['id']}"
        direct_poll, _ = _timed(lambda: up.get(direct_path))  # noqa: B023 (called at once)
        gateway_poll, polled = _timed(lambda: gw.get(gateway_path))  # noqa: B023
        assert polled.json()["status"] == "in_progress"
        polls.append((direct_poll, gateway_poll))
    return {"create": _summary("create", creates), "retrieve": _summary("retrieve (first poll)", polls)}


def _downloads(up: httpx.Client, gw: httpx.Client, requests: int, gateway_pid: int) -> dict:
    made = gw.post("/v1/videos", json={"model": "sora", "prompt": BIG_PROMPT}).json()
    while gw.get(f"/v1/videos/{made['id']}").json()["status"] != "completed":
        pass
    expected = video_bytes(BIG_PROMPT)
    path = f"/v1/videos/{made['id']}/content"  # the gateway's id is the upstream's on the direct transport
    pairs = []
    before = rss_mib(gateway_pid) or 0.0
    with PeakRss(gateway_pid) as peak:
        for _ in range(requests):
            direct_s, direct = _timed(lambda: up.get(path))
            gateway_s, through = _timed(lambda: gw.get(path))
            assert direct.content == expected and through.content == expected
            pairs.append((direct_s, gateway_s))
    size_mib = len(expected) / MIB
    summary = _summary(f"content {size_mib:.0f} MiB", pairs)
    summary["throughput_mib_s"] = {"direct_p50": size_mib / statistics.median(d for d, _ in pairs),
                                   "gateway_p50": size_mib / statistics.median(g for _, g in pairs)}
    summary["gateway_rss_mib"] = {"before": before, "peak": peak.peak, "peak_over_before": peak.peak - before}
    print(f"throughput: direct {summary['throughput_mib_s']['direct_p50']:.0f} MiB/s, gateway "
          f"{summary['throughput_mib_s']['gateway_p50']:.0f} MiB/s; gateway RSS +{peak.peak - before:.1f} MiB",
          flush=True)
    return summary


def run(requests: int) -> dict:
    upstream = UpstreamProcess("bench")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            service, gateway_url = pitstop_serve(_write_config(work, upstream.api_base), work / "pitstop.log")
            service.start()
            try:
                with httpx.Client(base_url=upstream.url, timeout=120) as up, \
                        httpx.Client(base_url=gateway_url, timeout=120) as gw:
                    _jobs(up, gw, 3)  # warm: connections, the gateway's first-request paths
                    cases = _jobs(up, gw, requests)
                    cases["content_20mib"] = _downloads(up, gw, max(requests // 2, 3), service.pid)
                    return {"cases": cases}
            finally:
                service.stop()
    finally:
        upstream.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="pairs of creates and polls (downloads: half)")
    args = parser.parse_args()
    machine = machine_info()
    results = run(args.requests)
    report = {"command": command("bench.gateway_videos"), "machine": machine,
              "load_avg_1m_after": machine_info()["load_avg_1m"], **results}
    print(f"wrote {write_report(OUT, report)}")


if __name__ == "__main__":
    main()
