"""The semantic response cache (gateway/semantic_cache.py): how often it would serve a different
question's answer, how often it serves a genuine re-ask, and what it adds to a request.

1. False hits on real distinct questions (../shared/data; skipped, said so, where it is absent): MMLU
   (routellm/mmlu), GSM8K (routellm/gsm8k), AlpacaEval instructions, RouterBench prompts (its few-shot
   prompts whole, as one user message) and MT-Bench first turns. Per data set, the distinct prompts
   shuffled (seed 0), the first half kept in one bucket and the second half asked: an answer served is
   always another question's, so the false-hit rate is the share of asked prompts served. Per threshold:
   the embedding alone, then the guard's parts added one at a time (numbers, quoted strings and code,
   number words, negations, the same words swapped: the gateway's guard), each with the gateway's
   `max_text_chars` bound; "as served" runs the gateway's own bucket search (gateway/semantic_index.py).
   GSM8K also says whether the served answer (GPT-4's, to the matched question) has another final
   number than GPT-4's to the question asked; MMLU's files hold no answer letters, so no such check.
2. Re-asks (no paraphrase set of real traffic is available offline): (a) the kept questions asked again
   with formatting changed (case, spacing, final punctuation) and with a lead-in ("Could you help me
   with this? ..."), per data set; (b) tests/gateway/semantic_paraphrases.json, a small set hand-written
   for this: questions, re-asks of them by kind (format, wording, rephrase) and near questions wanting
   another answer by kind (number, entity, antonym, role, ...).
3. Latency through `pitstop serve` in front of bench/mock_upstream.py (answers after --delay-ms), one
   request at a time, gateways and modes interleaved: the exact cache alone and with the semantic cache,
   both local and, where a Redis answers at 127.0.0.1:6379, both on Redis; a miss (a question never
   asked), an exact hit, a semantic hit (a kept question reworded, in a case never asked) and that
   request asked again (an exact hit on the copy the semantic hit kept under its key), each against the
   exact cache on the same store. Client-timed, with the gateway's CPU.

    .venv/bin/python -m bench.gateway_semantic_cache [--rounds 100] [--per-set 2000] [--encoders minilm,static]

Writes bench/results/gateway_semantic_cache.json."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import yaml

from bench.common import DATA, RESULTS, ROOT, command, machine_info, pct, write_report
from bench.procs import Service, mock_upstream, pitstop_serve
from gateway.semantic_config import SemanticCacheConfig
from gateway.semantic_encoders import TextEncoder, build_encoder
from gateway.semantic_index import Bucket
from gateway.semantic_text import compatible, embedded, fingerprint, literals, words

OUT = RESULTS / "gateway_semantic_cache.json"
REDIS_URL = "redis://127.0.0.1:6379/0"
PAIRS = ROOT / "tests" / "gateway" / "semantic_paraphrases.json"
THRESHOLDS = (0.80, 0.85, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98)
DEFAULTS = SemanticCacheConfig()
LEAD_IN = "Could you help me with this? "
# The guard, a part at a time: each step adds one kind of literal (the last is the gateway's guard).
STEPS = ("embedding only", "+ numbers", "+ quoted strings and code", "+ number words", "+ negations",
         "+ same words swapped")
_FINAL = re.compile(r"####\s*(-?[\d,.]+)|(-?\d[\d,]*\.?\d*)(?!.*\d)", re.DOTALL)


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def load_sets() -> dict[str, tuple[list[str], list[str] | None]]:
    """Per data set: its prompts, and (GSM8K) GPT-4's answers to them."""
    from routers.data.routerbench import _text  # noqa: PLC0415  (RouterBench cells are list literals)

    gsm = _read_csv(DATA / "routellm" / "gsm8k" / "gsm8k_responses.csv")
    alpaca = [json.loads(line) for line in (DATA / "alpaca_eval_outputs" / "outputs.jsonl").read_text().splitlines()
              if line.strip()]
    mt = [json.loads(line) for line in (DATA / "routellm" / "mt_bench" / "question.jsonl").read_text().splitlines()]
    return {
        "mmlu": ([r["prompt"] for p in sorted((DATA / "routellm" / "mmlu").glob("mmlu_*.csv")) for r in _read_csv(p)],
                 None),
        "gsm8k": ([r["prompt"] for r in gsm], [r["gpt-4-1106-preview_response"] for r in gsm]),
        "alpaca_eval": ([r["instruction"] for r in alpaca], None),
        "routerbench": ([_text(r["prompt"]) for p in sorted((DATA / "routerbench_subset").glob("*.csv"))
                         for r in _read_csv(p)], None),
        "mt_bench": ([q["turns"][0] for q in mt], None),
    }


def distinct_sample(texts: list[str], answers: list[str] | None, limit: int) -> tuple[list[str], list[str] | None]:
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        first.setdefault(text, i)
    order = list(first.values())
    random.Random(0).shuffle(order)
    order = order[:limit]
    return [texts[i] for i in order], None if answers is None else [answers[i] for i in order]


def encode(encoder: TextEncoder, texts: list[str]) -> tuple[np.ndarray, float]:
    """Unit rows of the texts as the gateway embeds them, and the mean ms a text."""
    async def run() -> list[np.ndarray]:
        return [await encoder.encode(embedded(t), None) for t in texts]

    started = time.perf_counter()
    rows = asyncio.run(run())
    return np.stack(rows), (time.perf_counter() - started) * 1000 / max(1, len(texts))


def guard_keys(text: str) -> list[object]:
    """Per step, what two texts must share to pass it (the swap step is checked pairwise)."""
    parts = literals(text)
    keys: list[object] = [()]
    shared: list[tuple[str, ...]] = []
    for kind in ("numbers", "quoted", "number_words", "negations"):
        shared.append(tuple(parts[kind]))
        keys.append(tuple(shared))
    in_order = words(text)
    keys.append((keys[-1], tuple(sorted(in_order)), tuple(in_order)))
    return keys


def passes(step: int, a: list[object], b: list[object]) -> bool:
    if step < len(STEPS) - 1:
        return a[step] == b[step]
    (la, bag_a, seq_a), (lb, bag_b, seq_b) = a[step], b[step]  # type: ignore[misc]
    return la == lb and (seq_a == seq_b or bag_a != bag_b)


def served(sims: np.ndarray, threshold: float, allowed: Callable[[int], bool]) -> int | None:
    """The entry the gateway would serve: the most similar at or above the threshold that passes."""
    above = np.flatnonzero(sims >= threshold)
    for j in above[np.argsort(-sims[above], kind="stable")]:
        if allowed(int(j)):
            return int(j)
    return None


def final_number(answer: str) -> str | None:
    found = _FINAL.findall(answer)
    if not found:
        return None
    value = found[-1][0] or found[-1][1]
    return value.replace(",", "").rstrip(".") or None


def false_hits(texts: list[str], vectors: np.ndarray, answers: list[str] | None, max_chars: int) -> dict:
    half = len(texts) // 2
    kept, asked = list(range(half)), list(range(half, len(texts)))
    eligible = [len(t) <= max_chars for t in texts]
    keys = [guard_keys(t) for t in texts]
    sims = vectors[asked] @ vectors[kept].T
    bucket = Bucket(vectors.shape[1])  # as the gateway's index holds the kept half: the texts it compares
    for i in (i for i in kept if eligible[i]):
        bucket.append(str(i), vectors[i], fingerprint(texts[i]), time.time() + 3600)
    report: dict = {"kept": half, "asked": len(asked), "asked_within_max_text_chars": sum(eligible[i] for i in asked),
                    "false_hit_rate": {}, "no_length_bound": {}}
    for t in THRESHOLDS:
        rates: dict[str, float] = {}
        unbounded: dict[str, float] = {}
        served_rows: dict[str, list[int | None]] = {}
        for step, name in enumerate(STEPS):
            hits = [served(sims[q], t, lambda j, i=i, s=step: eligible[j] and passes(s, keys[i], keys[j]))
                    if eligible[i] else None for q, i in enumerate(asked)]
            rates[name] = sum(h is not None for h in hits) / len(asked)
            served_rows[name] = hits
        for step in (0, len(STEPS) - 1):
            hits = [served(sims[q], t, lambda j, i=i, s=step: passes(s, keys[i], keys[j])) for q, i in enumerate(asked)]
            unbounded[STEPS[step]] = sum(h is not None for h in hits) / len(asked)
        # The gateway's own search must serve what the last step served.
        gateway = [bucket.search(vectors[i], fingerprint(texts[i]), t).candidates if eligible[i] else []
                   for i in asked]
        as_served = [int(c[0].key) if c else None for c in gateway]
        assert as_served == served_rows[STEPS[-1]], "the bench's guard and the gateway's disagree"
        rates["as served"] = sum(h is not None for h in as_served) / len(asked)
        report["false_hit_rate"][f"{t:.2f}"] = rates
        report["no_length_bound"][f"{t:.2f}"] = unbounded
        if answers is not None:  # GSM8K: a served answer whose final number is not the one asked for
            for name, rows in (("embedding only", served_rows[STEPS[0]]), ("as served", as_served)):
                wrong = [final_number(answers[j]) != final_number(answers[i])
                         for i, j in zip(asked, rows, strict=True) if j is not None]
                rates[f"{name}: served answer's final number differs"] = sum(wrong) / len(asked)
        if abs(t - DEFAULTS.similarity_threshold) < 1e-9 or t == 0.90:  # what was served, to read
            for name, rows in (("embedding_only", served_rows[STEPS[0]]), ("as_served", as_served)):
                examples = sorted(((float(sims[q][j]), texts[i][:200], texts[kept[j]][:200])
                                   for q, (i, j) in enumerate(zip(asked, rows, strict=True)) if j is not None),
                                  reverse=True)[:5]
                report[f"examples_{name}_at_{t:.2f}"] = [{"similarity": s, "asked": a, "served_the_answer_to": b}
                                                         for s, a, b in examples]
    return report


def reask_rates(encoder: TextEncoder, texts: list[str], vectors: np.ndarray, sample: int, max_chars: int) -> dict:
    """The kept half's questions asked again, reformatted and with a lead-in: hit (its own answer served),
    wrong (another's)."""
    half = len(texts) // 2
    chosen = [i for i in range(half) if len(texts[i]) + len(LEAD_IN) <= max_chars][:sample]
    variants = {"format (case, spacing, final punctuation)":
                [" ".join(texts[i].split()).lower().rstrip("?.!") + "  " for i in chosen],
                "lead-in": [LEAD_IN + texts[i] for i in chosen]}
    keys = [fingerprint(t) for t in texts[:half]]
    report: dict = {"asked": len(chosen)}
    for name, asked in variants.items():
        asked_vectors, _ = encode(encoder, asked)
        sims = asked_vectors @ vectors[:half].T
        per_t = {}
        asked_prints = [fingerprint(text) for text in asked]
        for t in THRESHOLDS:
            got = [served(sims[q], t, lambda j, p=p: compatible(keys[j], p)) for q, p in enumerate(asked_prints)]
            per_t[f"{t:.2f}"] = {"hit": sum(g == i for g, i in zip(got, chosen, strict=True)) / len(chosen),
                                 "wrong": sum(g is not None and g != i for g, i in zip(got, chosen, strict=True))
                                 / len(chosen)}
        report[name] = per_t
    return report


def handwritten(encoder: TextEncoder) -> dict:
    groups = json.loads(PAIRS.read_text())["groups"]
    questions = [g["q"] for g in groups]
    kept, _ = encode(encoder, questions)
    prints = [fingerprint(q) for q in questions]
    report: dict = {"questions": len(groups), "source": str(PAIRS.relative_to(ROOT)),
                    "note": "hand-written for this benchmark, not real traffic: an indication only"}
    for side in ("same", "different"):
        items = [(i, item["text"], item["kind"]) for i, g in enumerate(groups) for item in g[side]]
        vectors, _ = encode(encoder, [text for _, text, _ in items])
        sims = vectors @ kept.T
        per_t: dict = {}
        for t in THRESHOLDS:
            rows: dict[str, dict[str, list[bool]]] = {"guard": {}, "no guard": {}}
            for q, (i, text, kind) in enumerate(items):
                p = fingerprint(text)
                for mode, allowed in (("guard", lambda j, p=p: compatible(prints[j], p)), ("no guard", lambda j: True)):
                    got = served(sims[q], t, allowed)
                    ok = got == i if side == "same" else got is not None
                    rows[mode].setdefault(kind, []).append(ok)
                    rows[mode].setdefault("all", []).append(ok)
            per_t[f"{t:.2f}"] = {mode: {kind: sum(v) / len(v) for kind, v in kinds.items()}
                                 for mode, kinds in rows.items()}
        report["re-asks served their answer" if side == "same" else "near questions served a wrong answer"] = {
            "items": len(items), "by_threshold": per_t}
    return report


def redis_up() -> bool:
    try:
        import redis  # noqa: PLC0415

        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping())
    except Exception:
        return False


def gateway_config(work: Path, name: str, mock_url: str, encoder: str) -> Path:
    models = [{"model_name": "m", "litellm_params": {"model": "hosted_vllm/mock", "api_base": f"{mock_url}/v1"},
               "model_info": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}}]
    config: dict = {"model_list": models, "ranking": {"enabled": False},
                    "storage": {"url": f"sqlite:///{work / f'{name}.db'}", "spool_path": str(work / f"{name}.spool")},
                    "cache": {} if name.startswith("exact") else {"semantic": {"encoder": encoder}}}
    if name.endswith("-redis"):
        config |= {"redis_url": REDIS_URL}
        config["cache"]["backend"] = "redis"
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


_VOCAB = re.findall(r"\w+", "river window garden silver market engine pocket thunder lantern harbor cotton violin meadow "
                    "castle pepper rocket velvet canyon marble feather anchor basket candle desert falcon glacier hammer "
                    "island jacket kettle ladder magnet needle orchard pillow quartz saddle tunnel umbrella valley walnut "
                    "yogurt zipper bridge cactus dragon ember forest goblet hollow igloo jungle kiosk lemon mirror noodle")


def latency(gateways: dict[str, tuple[Service, str]], rounds: int, nonce: str) -> dict:
    rng = random.Random(1)

    def body(text: str, stream: bool, gateway: str) -> dict:
        system = f"Answer briefly. Run {nonce}, {gateway}."  # keys and buckets of this run and gateway alone
        return {"model": "m", "temperature": 0, "max_tokens": 64, "stream": stream,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]}

    kept, reworded = "What is the capital of France?", "what's the capital of france"
    ms: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    clients = {name: httpx.Client(base_url=url, timeout=60) for name, (_, url) in gateways.items()}
    try:
        for name, client in clients.items():
            for stream in (False, True):
                client.post("/v1/chat/completions", json=body(kept, stream, name)).raise_for_status()
        for round_ in range(rounds + 5):  # the first 5: warm-up
            for stream in (False, True):
                fresh = " ".join(rng.sample(_VOCAB, 8))  # a question never asked (its words unlike any other's)
                # The rewording in a case never asked (its own key, embedded as the rewording: without case);
                # asked again, an exact hit on the answer the semantic hit kept under its key.
                recased = "".join(c.upper() if rng.random() < 0.5 else c for c in reworded)
                semantic = {"semantic hit": recased, "semantic hit asked again": recased}
                for name, (service, _) in gateways.items():
                    modes = {"miss": fresh, "exact hit": kept, **({} if name.startswith("exact") else semantic)}
                    for mode, text in modes.items():
                        started_cpu, started = service.cpu_seconds(), time.perf_counter()
                        response = clients[name].post("/v1/chat/completions", json=body(text, stream, name))
                        elapsed = time.perf_counter() - started
                        seen = response.headers.get("x-pitstop-cache")
                        expected = "semantic-hit" if mode == "semantic hit" else "miss" if mode == "miss" else "hit"
                        assert seen == expected, (name, mode, seen)
                        if round_ >= 5:
                            key = f"{name} | {'stream' if stream else 'whole'} | {mode}"
                            ms.setdefault(key, []).append(elapsed * 1000)
                            cpu.setdefault(key, []).append((service.cpu_seconds() - started_cpu) * 1000)
    finally:
        for client in clients.values():
            client.close()
    results = {key: {"requests": len(v), "median_ms": statistics.median(v), "p90_ms": pct(v, 90),
                     "gateway_cpu_ms_mean": statistics.fmean(cpu[key])} for key, v in ms.items()}
    for key, r in results.items():
        name, shape, mode = key.split(" | ")
        baseline = "exact-redis" if name.endswith("-redis") else "exact"  # the same store for the answers
        exact = results[f"{baseline} | {shape} | {'miss' if mode == 'miss' else 'exact hit'}"]
        r["added_median_ms_vs_exact"] = r["median_ms"] - exact["median_ms"]
        print(f"{key:38s} median {r['median_ms']:7.2f} ms ({r['added_median_ms_vs_exact']:+6.2f} vs exact cache's "
              f"{'hit' if mode != 'miss' else 'miss'})  p90 {r['p90_ms']:7.2f}  gateway CPU "
              f"{r['gateway_cpu_ms_mean']:5.2f} ms", flush=True)
    for name, (_, url) in gateways.items():
        text = httpx.get(f"{url}/metrics").text
        total, count = (re.search(rf"pitstop_semantic_cache_encode_seconds_{part} ([0-9.e+-]+)", text)
                        for part in ("sum", "count"))
        if total and count and float(count.group(1)):
            results[f"{name} encode_ms_mean"] = float(total.group(1)) * 1000 / float(count.group(1))
    return results


def encoder_report(encoder: TextEncoder, sets: dict | None, per_set: int, reask_sample: int) -> dict:
    report: dict = {"name": encoder.name, "hand_written": handwritten(encoder)}
    if sets is None:
        report["false_hits"] = report["re_asks"] = f"skipped: {DATA} is absent"
        return report
    report["false_hits"], report["re_asks"], report["encode_ms_per_prompt"] = {}, {}, {}
    for name, (texts, answers) in sets.items():
        texts, answers = distinct_sample(texts, answers, per_set)
        vectors, ms = encode(encoder, texts)
        report["encode_ms_per_prompt"][name] = ms
        report["false_hits"][name] = false_hits(texts, vectors, answers, DEFAULTS.max_text_chars)
        report["re_asks"][name] = reask_rates(encoder, texts, vectors, reask_sample, DEFAULTS.max_text_chars)
        at = report["false_hits"][name]["false_hit_rate"][f"{DEFAULTS.similarity_threshold:.2f}"]
        print(f"{encoder.name}: {name:12s} {len(texts)} prompts, {ms:5.1f} ms each: false hits at the default "
              f"threshold {at['embedding only']:.2%} by the embedding, {at['as served']:.2%} as served", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="latency rounds (each: every gateway and mode)")
    parser.add_argument("--per-set", type=int, default=2000,
                        help="distinct prompts a data set at most (half kept: a full bucket at max_entries 1000)")
    parser.add_argument("--reask-sample", type=int, default=200)
    parser.add_argument("--encoders", default="minilm,static",
                        help="what parts 1 and 2 embed with (static: the routers' distilled table, where it was built); "
                             "the latency part uses the first")
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--sets", default="mmlu,gsm8k,alpaca_eval,routerbench,mt_bench", help="data sets of parts 1-2")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    names = args.encoders.split(",")
    report: dict = {"command": command("bench.gateway_semantic_cache", argv), "machine": machine_info(),
                    "defaults": DEFAULTS.model_dump(), "thresholds": list(THRESHOLDS), "encoders": {}}
    sets = {name: data for name, data in load_sets().items() if name in args.sets.split(",")} if DATA.is_dir() else None
    if sets is None:
        print(f"{DATA} is absent: false hits and re-asks on real data skipped (the shared data folder holds them)")
    for name in names:
        encoder = build_encoder(name)
        if encoder is None:
            report["encoders"][name] = "skipped: not available on this machine"
            continue
        encoder.warm()
        report["encoders"][name] = encoder_report(encoder, sets, args.per_set, args.reask_sample)
    if not args.skip_latency:
        work = Path(tempfile.mkdtemp(prefix="pitstop-bench-semantic-"))
        mock, mock_url = mock_upstream(work, "--delay-ms", str(args.delay_ms))
        gateways = {gateway: pitstop_serve(gateway_config(work, gateway, mock_url, names[0]), work / f"{gateway}.log")
                    for gateway in ["exact", "semantic", *(["exact-redis", "semantic-redis"] if redis_up() else [])]}
        mock.start()
        try:
            for service, _ in gateways.values():
                service.start(timeout_s=300)
            report["latency"] = latency(gateways, args.rounds, f"{time.time_ns():x}")
        finally:
            for service, _ in gateways.values():
                service.stop()
            mock.stop()
        report["latency_delay_ms"] = args.delay_ms
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
