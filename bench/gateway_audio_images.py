"""What the gateway adds to OpenAI's audio endpoints: a transcription of a 1 MB and a 10 MB WAV, and a speech
answer of about 200 KB, sent to the fake OpenAI upstream of the tests (tests/gateway/upstream.py, its own
process: it reads the whole upload, hashes it and answers its length and hash; a speech's audio is 1,000
bytes a character, streamed in 16 KiB chunks) directly and through `pitstop serve` (its own process, the
model on the direct transport, outcome rows to SQLite), one request at a time, the two ways interleaved
request by request in the same run.

    .venv/bin/python -m bench.gateway_audio_images [--requests 20]

Latency is the client's wall time to the answer's last byte (httpx, a kept-alive connection each way); the
added latency is the median over pairs of (through the gateway - direct). Memory: the gateway's resident set
(its process tree, /proc), sampled every 2 ms from a thread while the 10 MB uploads run, its peak against
its level before them: how many copies of an upload it holds at once. Client, upstream and gateway share the
machine; the load average is recorded.

Writes bench/results/gateway_audio_images.json."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

if __package__ in (None, ""):  # run as a script: make `bench` and `gateway` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, command, machine_info, pct, write_report  # noqa: E402
from bench.procs import pitstop_serve, rss_mib  # noqa: E402
from tests.gateway.media_helpers import media_models, wav_bytes  # noqa: E402
from tests.gateway.upstream import UpstreamProcess  # noqa: E402

OUT = RESULTS / "gateway_audio_images.json"
MIB = 1024 * 1024
SPEECH_TEXT = "Pit stop audio benchmark, two hundred characters of speech. " * 4  # 244 characters: 244,000 bytes


def _write_config(work: Path, api_base: str) -> Path:
    config = {"model_list": media_models(api_base),
              "storage": {"url": f"sqlite:///{work / 'gateway.db'}", "spool_path": str(work / "spool.jsonl")},
              "ranking": {"enabled": False}}
    path = work / "pitstop.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _timed(call: Callable[[], httpx.Response], expect: int) -> float:
    started = time.perf_counter()
    response = call()
    elapsed = time.perf_counter() - started
    assert response.status_code == 200 and len(response.content) >= expect, (response.status_code, response.text[:300])
    return elapsed


class PeakRss:
    """The peak of a process tree's resident set while the block runs, sampled every `interval_s`."""

    def __init__(self, pid: int, interval_s: float = 0.002) -> None:
        self.pid, self.interval_s, self.peak = pid, interval_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid) or 0.0)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _case(name: str, requests: int, direct: Callable[[], httpx.Response], gateway: Callable[[], httpx.Response],
          expect: int) -> dict:
    pairs = []
    for _ in range(requests):  # interleaved: the machine's noise falls on both alike
        pairs.append((_timed(direct, expect), _timed(gateway, expect)))
    direct_ms = [d * 1000 for d, _ in pairs]
    gateway_ms = [g * 1000 for _, g in pairs]
    added = [g - d for d, g in zip(direct_ms, gateway_ms, strict=True)]
    print(f"{name}: direct p50 {statistics.median(direct_ms):.1f} ms, gateway p50 {statistics.median(gateway_ms):.1f} "
          f"ms, added median {statistics.median(added):.1f} ms", flush=True)
    return {"requests": requests, "direct_ms": {"p50": statistics.median(direct_ms), "p90": pct(direct_ms, 90)},
            "gateway_ms": {"p50": statistics.median(gateway_ms), "p90": pct(gateway_ms, 90)},
            "added_ms": {"median": statistics.median(added), "p90": pct(added, 90)}}


def run(requests: int) -> dict:
    upstream = UpstreamProcess("bench")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            service, gateway_url = pitstop_serve(_write_config(work, upstream.api_base), work / "pitstop.log")
            service.start()
            try:
                return _measure(requests, upstream.url, gateway_url, service.pid)
            finally:
                service.stop()
    finally:
        upstream.close()


def _measure(requests: int, upstream_url: str, gateway_url: str, gateway_pid: int) -> dict:
    files = {"1mb": wav_bytes(1_000_000, seed=1), "10mb": wav_bytes(10_000_000, seed=2)}
    cases: dict[str, dict] = {}
    with httpx.Client(base_url=upstream_url, timeout=120) as up, httpx.Client(base_url=gateway_url, timeout=120) as gw:
        def transcribe(client: httpx.Client, model: str, audio: bytes) -> Callable[[], httpx.Response]:
            return lambda: client.post("/v1/audio/transcriptions", data={"model": model},
                                       files={"file": ("a.wav", audio, "audio/wav")})

        def speak(client: httpx.Client, model: str) -> Callable[[], httpx.Response]:
            return lambda: client.post("/v1/audio/speech", json={"model": model, "input": SPEECH_TEXT,
                                                                  "voice": "alloy"})

        for _ in range(3):  # warm: connections, the gateway's first-request paths
            transcribe(gw, "whisper", files["1mb"])()
            speak(gw, "tts")()
        cases["transcription_1mb"] = _case("transcription 1 MB", requests, transcribe(up, "whisper-1", files["1mb"]),
                                           transcribe(gw, "whisper", files["1mb"]), 10)
        cases["speech_244kb"] = _case("speech 244 KB", requests, speak(up, "tts-1"), speak(gw, "tts"),
                                      1000 * len(SPEECH_TEXT))
        before = rss_mib(gateway_pid) or 0.0
        with PeakRss(gateway_pid) as peak:
            cases["transcription_10mb"] = _case("transcription 10 MB", max(requests // 2, 3),
                                                transcribe(up, "whisper-1", files["10mb"]),
                                                transcribe(gw, "whisper", files["10mb"]), 10)
    upload_mib = len(files["10mb"]) / MIB
    memory = {"upload_mib": upload_mib, "rss_before_mib": before, "rss_peak_mib": peak.peak,
              "peak_over_before_mib": peak.peak - before, "uploads_held": (peak.peak - before) / upload_mib}
    print(f"10 MB uploads: RSS {before:.1f} -> peak {peak.peak:.1f} MiB (+{peak.peak - before:.1f} MiB, "
          f"{memory['uploads_held']:.2f} uploads of {upload_mib:.1f} MiB)", flush=True)
    return {"cases": cases, "memory_10mb": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="requests each way a case (10 MB: half)")
    args = parser.parse_args()
    machine = machine_info()
    results = run(args.requests)
    report = {"command": command("bench.gateway_audio_images"), "machine": machine,
              "load_avg_1m_after": machine_info()["load_avg_1m"], **results}
    print(f"wrote {write_report(OUT, report)}")


if __name__ == "__main__":
    main()
