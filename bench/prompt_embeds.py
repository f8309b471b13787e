"""Prompt embeddings (vLLM's `prompt_embeds`, engine/prompt_embeds.py) against the same prompts sent as token
ids, over HTTP to `pitstop engine serve --enable-prompt-embeds`, side by side in one run (alternating forms
each repeat, fresh prompts each repeat so no prompt is cached from an earlier one):

- time to first token: one request at a time, max_tokens 1 (the whole answer's time, with its one token);
- request throughput: all requests of a repeat at once, max_tokens 16;

for two workloads of 256-token prompts: every prompt distinct, and prompts that share a 224-token prefix (a
system prompt): token ids share its blocks through the prefix cache, and so do embeddings, whose blocks are
keyed by their rows' bytes (engine/prefix_match.py). Also the server's cost of one payload (base64 decode,
torch.load with weights_only, the checks) and the client's (torch.save, base64), timed apart in this process.

A random Llama-shaped model (4 layers, hidden 1024, 8 heads, 4 KV heads, vocab 8,192, float32) on this CPU, one
torch thread in the server. Writes bench/results/prompt_embeds.json.

    .venv/bin/python -m bench.prompt_embeds            # full run (about 4 minutes on 2 shared cores)
    .venv/bin/python -m bench.prompt_embeds --quick    # smaller, for a smoke test"""

from __future__ import annotations

import argparse
import base64
import io
import random
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.common import command, machine_info, write_report
from bench.procs import engine_serve, running

RESULTS = Path(__file__).parent / "results"
PROMPT_TOKENS = 256
SHARED_PREFIX = 224
VOCAB = 8192


def encode(rows: object) -> str:
    import torch

    buffer = io.BytesIO()
    torch.save(rows, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def make_prompts(count: int, seed: int, shared: bool) -> list[list[int]]:
    rng = random.Random(seed)
    prefix = [rng.randrange(1, VOCAB) for _ in range(SHARED_PREFIX)] if shared else []
    return [prefix + [rng.randrange(1, VOCAB) for _ in range(PROMPT_TOKENS - len(prefix))] for _ in range(count)]


def bodies(prompts: list[list[int]], weight: object, embeds: bool, max_tokens: int) -> list[dict]:
    base = {"model": "tiny", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    if not embeds:
        return [base | {"prompt": ids} for ids in prompts]
    return [base | {"prompt": "", "prompt_embeds": encode(weight[ids])} for ids in prompts]  # type: ignore[index]


def post(client: httpx.Client, url: str, body: dict) -> float:
    started = time.perf_counter()
    response = client.post(f"{url}/v1/completions", json=body)
    response.raise_for_status()
    return time.perf_counter() - started


def ttft_ms(client: httpx.Client, url: str, requests: list[dict]) -> float:
    """Median of one-token completions sent one at a time."""
    return statistics.median(post(client, url, body) for body in requests) * 1000


def throughput(client: httpx.Client, url: str, requests: list[dict]) -> float:
    """Requests a second with all of them in flight at once."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(requests)) as pool:
        list(pool.map(lambda body: post(client, url, body), requests))
    return len(requests) / (time.perf_counter() - started)


def payload_costs(weight: object, hidden: int, repeats: int) -> dict:
    """Client's encode and server's decode of one 256-row payload, medians in ms."""
    import torch

    from engine.prompt_embeds import decode_prompt_embeds

    rows = weight[list(range(1, PROMPT_TOKENS + 1))]  # type: ignore[index]
    encoded, decoded = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        payload = encode(rows)
        encoded.append(time.perf_counter() - started)
        started = time.perf_counter()
        decode_prompt_embeds(payload, hidden, torch.float32, 2047)
        decoded.append(time.perf_counter() - started)
    return {"payload_bytes": len(payload), "client_encode_ms": round(statistics.median(encoded) * 1000, 3),
            "server_decode_ms": round(statistics.median(decoded) * 1000, 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=8, help="requests a repeat, each form and workload")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "prompt_embeds.json")
    args = parser.parse_args(argv)
    import torch
    from safetensors.torch import load_file

    from engine.tiny_model import make_tiny_model

    torch.set_num_threads(1)
    if args.quick:
        args.requests, args.repeats = 4, 1
    work = Path(tempfile.mkdtemp(prefix="pitstop-prompt-embeds-"))
    model_dir = make_tiny_model(work / "model", layers=4, hidden=1024, heads=8, kv_heads=4, vocab_size=VOCAB,
                                max_position_embeddings=2048)
    weight = load_file(model_dir / "model.safetensors")["model.embed_tokens.weight"]
    service, url = engine_serve(model_dir, work, "engine", "--enable-prompt-embeds", "--max-model-len", "1024",
                                "--num-blocks", "2048", "--max-num-seqs", "64")
    service.env = {"OMP_NUM_THREADS": "1"}
    results: dict[str, dict[str, dict[str, list[float]]]] = {
        workload: {form: {"ttft_ms": [], "requests_per_s": []} for form in ("token_ids", "prompt_embeds")}
        for workload in ("distinct", "shared_prefix")}
    with running([service]), httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        post(client, url, bodies(make_prompts(1, 999, False), weight, True, 1)[0])  # warm up both paths
        for repeat in range(args.repeats):
            for w, (workload, forms) in enumerate(results.items()):
                order = list(forms) if repeat % 2 == 0 else list(forms)[::-1]
                for f, form in enumerate(order):
                    seed = 1000 * repeat + 100 * w + 10 * f
                    prompts = make_prompts(args.requests, seed, workload == "shared_prefix")
                    forms[form]["ttft_ms"].append(ttft_ms(client, url, bodies(prompts, weight, form != "token_ids", 1)))
                    prompts = make_prompts(args.requests, seed + 1, workload == "shared_prefix")
                    forms[form]["requests_per_s"].append(
                        throughput(client, url, bodies(prompts, weight, form != "token_ids", 16)))
    rows = {workload: {form: {name: round(statistics.median(values), 3) for name, values in measures.items()}
                       for form, measures in forms.items()} for workload, forms in results.items()}
    for workload, forms in rows.items():
        ids, embeds = forms["token_ids"], forms["prompt_embeds"]
        forms["embeds_over_ids"] = {"ttft": round(embeds["ttft_ms"] / ids["ttft_ms"], 3),
                                    "throughput": round(embeds["requests_per_s"] / ids["requests_per_s"], 3)}
        print(f"{workload:14s} ids {ids} embeds {embeds} ratio {forms['embeds_over_ids']}")
    costs = payload_costs(weight, 1024, 5 if args.quick else 20)
    print(f"payload: {costs}")
    report = {"command": command("bench.prompt_embeds", argv), "machine": machine_info(),
              "model": "random Llama-shaped: 4 layers, hidden 1024, 8 heads, 4 KV heads, vocab 8192, float32",
              "prompt_tokens": PROMPT_TOKENS, "shared_prefix_tokens": SHARED_PREFIX, "requests": args.requests,
              "repeats": args.repeats, "rows": rows, "payload": costs,
              "raw": results}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
