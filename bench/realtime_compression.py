"""Whether the gateway should take permessage-deflate on realtime WebSockets (uvicorn accepts it from any client
that offers it unless `ws_per_message_deflate` is off; the Agents SDK and browsers offer it, the openai SDK does
not; `server.websocket_deflate` decides): one `pitstop serve` with it on (a subprocess, as deployed) relaying the tests' mock realtime upstream (a thread of
this process; the gateway's own upstream leg never compresses), two clients side by side in one run, one
offering deflate and one not, their bursts interleaved:

- `burst`: the upstream sends `--burst` audio deltas of `--delta-chars` characters at once (`mock.burst` with
  `audio`: base64 pcm16 of a voice-like tone, 64 distinct chunks; 6,400 characters: 100 ms of 24 kHz audio):
  events a second the client receives, and the gateway process's CPU time a thousand events (user + system,
  from /proc: the compression is the gateway's work);
- `round trip`: a small event echoed (`mock.echo`), p50 / p99;
- `wire`: the bytes deflate leaves of those deltas (zlib on the same frames, raw deflate with context
  takeover, as permessage-deflate sends them).

    .venv/bin/python -m bench.realtime_compression [--rounds 200] [--burst 3000] [--delta-chars 6400]

Writes bench/results/realtime_compression.json."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import zlib
from contextlib import ExitStack
from pathlib import Path

from websockets.sync.client import connect

from bench.common import RESULTS, command, machine_info, pct, write_report
from bench.realtime_relay import round_trips

OUT = RESULTS / "realtime_compression.json"
MODES = {"plain": None, "deflate": "deflate"}  # what the client offers


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def audio_burst(ws: object, count: int, chars: int, gateway_pid: int) -> tuple[float, float]:
    """(events a second received, the gateway's CPU seconds a thousand events) for one burst."""
    cpu, started = cpu_seconds(gateway_pid), time.perf_counter()
    ws.send(json.dumps({"type": "mock.burst", "count": count, "size": chars, "audio": True}))  # type: ignore[attr-defined]
    for _ in range(count):
        ws.recv(timeout=30)  # type: ignore[attr-defined]
    rate = count / (time.perf_counter() - started)
    return rate, (cpu_seconds(gateway_pid) - cpu) * 1000 / count


def wire_ratio(chars: int) -> float:
    """Deflated bytes over plain bytes for the burst's frames, one compressor across them (context takeover)."""
    from tests.gateway.realtime_upstream import audio_chunks

    frames = [json.dumps({"type": "response.output_audio.delta", "response_id": "resp_b", "delta": chunk}).encode()
              for chunk in audio_chunks(chars)]
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    sent = sum(len(compressor.compress(frame) + compressor.flush(zlib.Z_SYNC_FLUSH)) - 4 for frame in frames)
    return sent / sum(len(frame) for frame in frames)


def measure(url: str, gateway_pid: int, rounds: int, burst: int, chars: int, repeats: int = 5) -> dict[str, dict]:
    with ExitStack() as stack:
        sockets = {mode: stack.enter_context(connect(url, compression=offer, max_size=None))  # type: ignore[arg-type]
                   for mode, offer in MODES.items()}
        for mode, ws in sockets.items():
            json.loads(ws.recv(timeout=10))  # session.created
            assert bool(ws.protocol.extensions) == (MODES[mode] is not None), "deflate not negotiated as offered"
            round_trips(ws, 50)
            audio_burst(ws, burst // 4, chars, gateway_pid)  # warm-up (and the mock's audio made)
        trips: dict[str, list[float]] = {mode: [] for mode in MODES}
        rates: dict[str, list[float]] = {mode: [] for mode in MODES}
        cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(repeats):  # interleaved: the machine's noise falls on both alike
            for mode, ws in sockets.items():
                trips[mode] += round_trips(ws, rounds // repeats)
                rate, cpu_ms = audio_burst(ws, burst, chars, gateway_pid)
                rates[mode].append(rate)
                cpu[mode].append(cpu_ms)
    return {mode: {"round_trip_p50_s": pct(trips[mode], 50), "round_trip_p99_s": pct(trips[mode], 99),
                   "burst_events_per_s": statistics.median(rates[mode]), "burst_events_per_s_all": rates[mode],
                   "gateway_cpu_s_per_1000_events": statistics.median(cpu[mode]),
                   "gateway_cpu_s_per_1000_events_all": cpu[mode]} for mode in MODES}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--burst", type=int, default=3000)
    parser.add_argument("--delta-chars", type=int, default=6400)  # 100 ms of 24 kHz pcm16, base64
    args = parser.parse_args(argv)
    from tests.gateway.harness import gateway_config, gateway_processes, write_config
    from tests.gateway.realtime_upstream import realtime_upstream

    with realtime_upstream() as mock, tempfile.TemporaryDirectory() as tmp:
        entry = {"model_name": "voice", "litellm_params": {"model": "openai/gpt-realtime", "api_base": mock.url + "/v1",
                                                           "api_key": "sk-bench"}, "model_info": {"mode": "realtime"}}
        raw = gateway_config(Path(tmp), [entry], server={"websocket_deflate": True})  # taken where offered
        config = write_config(Path(tmp) / "gateway.yaml", raw)
        with gateway_processes(config) as (gateway,):
            url = gateway.url.replace("http://", "ws://") + "/v1/realtime?model=voice"
            modes = measure(url, gateway.proc.pid, args.rounds, args.burst, args.delta_chars)
    plain, deflate = modes["plain"], modes["deflate"]
    report = {"command": command("bench.realtime_compression", argv), "machine": machine_info(),
              "settings": vars(args), "modes": modes, "wire_bytes_ratio_deflate_to_plain": wire_ratio(args.delta_chars),
              "events_per_s_ratio_deflate_to_plain": deflate["burst_events_per_s"] / plain["burst_events_per_s"],
              "gateway_cpu_ratio_deflate_to_plain":
                  deflate["gateway_cpu_s_per_1000_events"] / plain["gateway_cpu_s_per_1000_events"]}
    print(json.dumps({k: v for k, v in report.items() if k not in ("machine", "command")}, indent=2))
    print("wrote", write_report(OUT, report))


if __name__ == "__main__":
    main()
