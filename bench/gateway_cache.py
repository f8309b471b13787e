"""What the response cache costs and saves (gateway/response_cache.py): the same requests sent to three
`pitstop serve` processes in front of one mock upstream (bench/mock_upstream.py, `--delay-ms` before each
answer, 10 chunks 5 ms apart when streamed): without a cache, with the local cache, and with the Redis
cache (where a Redis answers at 127.0.0.1:6379).

1. One request at a time, gateways and modes interleaved, client-timed, with the gateway's CPU (its
   process tree, /proc: 10 ms ticks, so a mode's mean over its requests): a temperature-0 chat, whole
   and streamed, and an embeddings request of 32 inputs, each as a miss (a prompt never sent before:
   what a cache adds to a request it cannot serve) and as a hit (one it has kept).
2. An evaluation run twice: `--eval-prompts` distinct temperature-0 chats, 8 at a time, then the same
   again: wall time of each pass, and the upstream calls the second made.
3. A burst of duplicates: `--burst-prompts` distinct prompts, each sent `--copies` times, shuffled, all
   at once: how many reached the upstream (identical requests in flight share one call).
4. Re-indexing: `--passages` passages embedded in batches of 50, then again after 5% of them changed,
   batched from another offset (so no batch is the same as before): the inputs the upstream was sent
   on the second pass (embeddings are kept per input), and its wall time.

    .venv/bin/python -m bench.gateway_cache [--rounds 200] [--delay-ms 20]

Writes bench/results/gateway_cache.json."""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import yaml

from bench.common import RESULTS, command, machine_info, pct, write_report
from bench.procs import Service, mock_upstream, pitstop_serve

OUT = RESULTS / "gateway_cache.json"
REDIS_URL = "redis://127.0.0.1:6379/0"
EMBED_INPUTS = 32  # 1,536 floats each: about 1 MB of JSON, under cache.max_entry_bytes


def redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping())
    except Exception:
        return False


def gateway_config(work: Path, name: str, mock_url: str) -> Path:
    models = [{"model_name": "m", "litellm_params": {"model": "hosted_vllm/mock", "api_base": f"{mock_url}/v1"},
               "model_info": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}},
              {"model_name": "e", "litellm_params": {"model": "hosted_vllm/mock-embed", "api_base": f"{mock_url}/v1"},
               "model_info": {"mode": "embedding", "input_cost_per_token": 1e-8}}]
    config: dict = {"model_list": models, "ranking": {"enabled": False},
                    "storage": {"url": f"sqlite:///{work / f'{name}.db'}", "spool_path": str(work / f"{name}.spool")}}
    if name == "local":
        config["cache"] = {}
    elif name == "redis":
        config |= {"cache": {"backend": "redis"}, "redis_url": REDIS_URL}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def chat(prompt: str) -> dict:
    return {"model": "m", "temperature": 0, "max_tokens": 64,
            "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": prompt}]}


def embeddings(prompt: str) -> dict:
    return {"model": "e", "input": [f"{prompt} passage {i}" for i in range(EMBED_INPUTS)]}


MODES = {  # name: (path, body maker, streamed)
    "chat whole": ("/v1/chat/completions", chat, False),
    "chat stream": ("/v1/chat/completions", chat, True),
    "embeddings 32": ("/v1/embeddings", embeddings, False),
}


def cache_counts(http: httpx.Client) -> dict[str, float]:
    text = http.get("/metrics").text
    return {m[0]: float(m[1]) for m in re.findall(r'pitstop_response_cache_total\{outcome="(\w+)"\} ([0-9.e+]+)', text)}


def one_at_a_time(gateways: dict[str, tuple[Service, str]], rounds: int, nonce: str) -> dict:
    ms: dict[str, list[float]] = defaultdict(list)
    cpu_ms: dict[str, list[float]] = defaultdict(list)
    clients = {name: httpx.Client(base_url=url, timeout=60) for name, (_, url) in gateways.items()}
    try:
        for round_ in range(rounds + 5):  # the first 5: warm-up
            for mode, (path, body_of, stream) in MODES.items():
                for name, (service, _) in gateways.items():
                    kinds = ("miss",) if name == "off" else ("miss", "hit")
                    for kind in kinds:
                        prompt = f"{nonce} {name} {mode} round {round_}" if kind == "miss" else f"{nonce} kept {mode}"
                        body = {**body_of(prompt), **({"stream": True} if stream else {})}
                        cpu, started = service.cpu_seconds(), time.perf_counter()
                        response = clients[name].post(path, json=body)
                        elapsed = time.perf_counter() - started
                        response.raise_for_status()
                        seen = response.headers.get("x-pitstop-cache", "-")
                        if round_ >= 5:
                            assert name == "off" or seen == kind, (name, mode, kind, seen)
                            key = f"{name} {mode} {kind}"
                            ms[key].append(elapsed * 1000)
                            cpu_ms[key].append((service.cpu_seconds() - cpu) * 1000)
    finally:
        for client in clients.values():
            client.close()
    results = {key: {"requests": len(values), "median_ms": statistics.median(values), "p90_ms": pct(values, 90),
                     "gateway_cpu_ms_mean": statistics.fmean(cpu_ms[key])} for key, values in ms.items()}
    for key, r in results.items():
        name, rest = key.split(" ", 1)
        base = results[f"off {rest.rsplit(' ', 1)[0]} miss"]
        r["vs_no_cache_median"] = r["median_ms"] / base["median_ms"]
        print(f"{key:28s} median {r['median_ms']:7.2f} ms ({r['vs_no_cache_median']:.2f}x no cache)  p90 "
              f"{r['p90_ms']:7.2f} ms  gateway CPU {r['gateway_cpu_ms_mean']:5.2f} ms", flush=True)
    return results


async def _send_all(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[str]]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency + 8)) as client:
        async def one(body: dict) -> str:
            async with gate:
                response = await client.post("/v1/chat/completions", json=body)
                response.raise_for_status()
                return response.headers.get("x-pitstop-cache", "-")

        started = time.perf_counter()
        seen = await asyncio.gather(*(one(b) for b in bodies))
        return time.perf_counter() - started, list(seen)


def evaluation_twice(gateways: dict[str, tuple[Service, str]], prompts: int, nonce: str) -> dict:
    bodies = [chat(f"{nonce} evaluation question {i}") for i in range(prompts)]
    results = {}
    for name, (_, url) in gateways.items():
        first_s, _ = asyncio.run(_send_all(url, bodies, 8))
        second_s, seen = asyncio.run(_send_all(url, bodies, 8))
        upstream = prompts if name == "off" else sum(s != "hit" for s in seen)
        results[name] = {"first_pass_s": first_s, "second_pass_s": second_s, "second_pass_upstream_calls": upstream,
                         "second_vs_first": second_s / first_s}
        print(f"evaluation twice, {name:5s}: {first_s:6.2f} s then {second_s:6.2f} s "
              f"({second_s / first_s:.2f}x), second pass upstream calls {upstream}/{prompts}", flush=True)
    return results


def burst(gateways: dict[str, tuple[Service, str]], prompts: int, copies: int, nonce: str) -> dict:
    bodies = [chat(f"{nonce} burst question {i}") for i in range(prompts) for _ in range(copies)]
    random.Random(0).shuffle(bodies)
    results = {}
    for name, (_, url) in gateways.items():
        with httpx.Client(base_url=url) as http:
            before = cache_counts(http)
            wall_s, seen = asyncio.run(_send_all(url, bodies, len(bodies)))
            after = cache_counts(http)
        calls = len(bodies) if name == "off" else round(after.get("miss", 0) - before.get("miss", 0))
        results[name] = {"requests": len(bodies), "upstream_calls": calls, "wall_s": wall_s,
                         "answers": {s: seen.count(s) for s in sorted(set(seen))}}
        print(f"burst, {name:5s}: {len(bodies)} requests ({prompts} distinct) in {wall_s:5.2f} s, "
              f"{calls} upstream calls, {results[name]['answers']}", flush=True)
    return results


async def _embed_all(url: str, batches: list[list[str]], concurrency: int = 4) -> tuple[float, int]:
    """(wall seconds, inputs the upstream was sent: the mock bills 8 tokens an input)."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def one(batch: list[str]) -> int:
            async with gate:
                response = await client.post("/v1/embeddings", json={"model": "e", "input": batch})
                response.raise_for_status()
                return response.json()["usage"]["prompt_tokens"] // 8

        started = time.perf_counter()
        sent = await asyncio.gather(*(one(b) for b in batches))
        return time.perf_counter() - started, sum(sent)


def reindex(gateways: dict[str, tuple[Service, str]], passages: int, nonce: str) -> dict:
    size = 50
    texts = [f"{nonce} passage {i}: " + " ".join(f"w{(i * 7 + j) % 997}" for j in range(40)) for i in range(passages)]
    changed = list(texts)
    for i in random.Random(1).sample(range(passages), passages // 20):
        changed[i] = texts[i] + " (edited)"
    first = [texts[i:i + size] for i in range(0, passages, size)]
    second = [changed[:size // 2]] + [changed[i:i + size] for i in range(size // 2, passages, size)]
    results = {}
    for name, (_, url) in gateways.items():
        first_s, first_sent = asyncio.run(_embed_all(url, first))
        second_s, second_sent = asyncio.run(_embed_all(url, second))
        results[name] = {"passages": passages, "changed": passages // 20, "first_pass_s": first_s,
                         "first_pass_inputs_sent": first_sent, "second_pass_s": second_s,
                         "second_pass_inputs_sent": second_sent}
        print(f"re-indexing, {name:5s}: {first_s:5.2f} s ({first_sent} inputs sent), after 5% changed "
              f"{second_s:5.2f} s ({second_sent} inputs sent)", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--eval-prompts", type=int, default=400)
    parser.add_argument("--burst-prompts", type=int, default=20)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pitstop-bench-cache-"))
    mock, mock_url = mock_upstream(work, "--delay-ms", str(args.delay_ms))
    names = ["off", "local", *(["redis"] if redis_up() else [])]
    gateways = {name: pitstop_serve(gateway_config(work, name, mock_url), work / f"{name}.log") for name in names}
    nonce = f"run-{time.time_ns()}"  # a Redis shared with earlier runs holds none of these prompts
    mock.start()
    try:
        for service, _ in gateways.values():
            service.start(timeout_s=300)
        latency = one_at_a_time(gateways, args.rounds, nonce)
        evaluation = evaluation_twice(gateways, args.eval_prompts, nonce)
        duplicates = burst(gateways, args.burst_prompts, args.copies, nonce)
        indexing = reindex(gateways, args.passages, nonce)
    finally:
        for service, _ in gateways.values():
            service.stop()
        mock.stop()
    write_report(args.out, {"command": command("bench.gateway_cache", argv), "machine": machine_info(),
                            "delay_ms": args.delay_ms, "gateways": names, "one_at_a_time": latency,
                            "evaluation_twice": evaluation, "burst": duplicates,
                            "reindex": indexing})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
