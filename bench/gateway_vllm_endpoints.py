"""What the gateway adds to vLLM's own endpoints (gateway/vllm_endpoints.py, gateway/vllm_tokenize.py): /classify
and /tokenize asked of `pitstop engine serve` directly and through `pitstop serve` in front of it, side by side.

    .venv/bin/python -m bench.gateway_vllm_endpoints [--requests 200] [--layers 2]

A tiny random Llama classifier of 3 labels (engine/tiny_classifier.py) and a tiny random chat model
(engine/tiny_model.py) are each served by `pitstop engine serve` in a process of its own; the gateway, a third
process, serves them as `pitstop-engine/` models `cls` (mode: classify) and `chat`, storing outcome rows in
SQLite. One request at a time from this client (one keep-alive connection each way), direct and through the
gateway interleaved, so drift in the machine's load hits both alike: a classification of 4 short texts and a
tokenization of a 2-message chat. Wall p50/p99 in ms, the median of each pair's gateway minus direct time (what
the gateway adds: its auth, limits, dispatch, the row for /classify), and their ratio; each answer is checked
equal to the engine's. This client and the servers share the machine; the load average is recorded.

Writes bench/results/gateway_vllm_endpoints.json."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

if __package__ in (None, ""):  # run as a script: make `bench` and `gateway` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, command, machine_info, pct, write_report  # noqa: E402
from bench.procs import engine_serve, pitstop_serve, running  # noqa: E402

OUT = RESULTS / "gateway_vllm_endpoints.json"
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "rain again today", "prices went up this week"]
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is the capital of France?"}]


def _config(work: Path, classifier: str, chat: str) -> Path:
    def model(name: str, base: str, mode: str | None) -> dict:
        info = {"input_cost_per_token": 1e-7, "output_cost_per_token": 0.0} | ({"mode": mode} if mode else {})
        return {"model_name": name, "litellm_params": {"model": "pitstop-engine/tiny", "api_base": f"{base}/v1"},
                "model_info": info}

    raw = {"model_list": [model("cls", classifier, "classify"), model("chat", chat, None)], "route_groups": [],
           "storage": {"url": f"sqlite:///{work / 'gateway.db'}", "spool_path": str(work / 'spool.jsonl')}}
    path = work / "pitstop.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _timed(client: httpx.Client, path: str, body: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    answer = client.post(path, json=body)
    elapsed = (time.perf_counter() - started) * 1000
    if answer.status_code != 200:
        raise RuntimeError(f"{path} answered {answer.status_code}: {answer.text[:500]}")
    return elapsed, answer.json()


def _same(path: str, direct: dict, through: dict) -> bool:
    if path == "/classify":  # ids and creation times differ; the classification must not
        return [(d["label"], d["probs"]) for d in direct["data"]] == [(d["label"], d["probs"]) for d in through["data"]] \
            and direct["usage"] == through["usage"]
    return direct == through


def measure(engine: httpx.Client, gateway: httpx.Client, path: str, body: dict, model: str, requests: int) -> dict:
    for _ in range(5):  # warm both ways: connections, the engine's first batches
        _timed(engine, path, body)
        _timed(gateway, path, {**body, "model": model})
    direct, through, added = [], [], []
    for _ in range(requests):
        d, direct_answer = _timed(engine, path, body)
        g, gateway_answer = _timed(gateway, path, {**body, "model": model})
        if not _same(path, direct_answer, gateway_answer):
            raise RuntimeError(f"{path}: the gateway's answer differs from the engine's")
        direct.append(d)
        through.append(g)
        added.append(g - d)
    return {"requests": requests,
            "direct_ms": {"p50": pct(direct, 50), "p99": pct(direct, 99)},
            "gateway_ms": {"p50": pct(through, 50), "p99": pct(through, 99)},
            "added_ms_median": statistics.median(added),
            "gateway_over_direct_p50": pct(through, 50) / pct(direct, 50)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    from engine.tiny_classifier import make_tiny_classifier
    from engine.tiny_model import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        work = Path(tmp)
        classifier_dir = make_tiny_classifier(work / "cls", "llama", 3, layers=args.layers)
        chat_dir = make_tiny_model(work / "chat", layers=args.layers)
        classifier, classifier_url = engine_serve(classifier_dir, work, "classifier")
        chat, chat_url = engine_serve(chat_dir, work, "chat")
        with running([classifier, chat]):
            gateway, gateway_url = pitstop_serve(_config(work, classifier_url, chat_url), work / "pitstop.log")
            with running([gateway]), httpx.Client(base_url=gateway_url, timeout=60) as through, \
                    httpx.Client(timeout=60) as direct:
                direct.base_url = httpx.URL(classifier_url)
                classify = measure(direct, through, "/classify", {"model": "tiny", "input": TEXTS}, "cls",
                                   args.requests)
                direct.base_url = httpx.URL(chat_url)
                tokenize = measure(direct, through, "/tokenize",
                                   {"model": "tiny", "messages": MESSAGES, "add_generation_prompt": True}, "chat",
                                   args.requests)
    report = {"command": command("bench.gateway_vllm_endpoints", argv), "machine": machine_info(),
              "load_average": os.getloadavg(),
              "settings": {"layers": args.layers, "classify_inputs": len(TEXTS), "chat_messages": len(MESSAGES)},
              "classify": classify, "tokenize": tokenize}
    write_report(OUT, report)
    print(f"wrote {OUT}")
    return report


if __name__ == "__main__":
    main()
