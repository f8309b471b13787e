"""What agent sessions cost as providers bill them (gateway/pricing.py) against the full-input-price billing the
gateway did before, on real models of litellm's bundled price map, and what resolving those prices adds to a
start (gateway/price_map.py).

Sessions: the 5 SWE-bench agent trajectories of ../shared/data/traces/swe_agent/swe_trajectories_5.json
(skipped with a message where that folder is absent: a synthetic session instead). Each assistant message is
one call: its prompt is every message before it, its answer the message (text and tool calls), counted with
tiktoken's o200k_base (GPT-4o's tokenizer; Claude's and Gemini's count somewhat differently). Each call's
prompt starts with the previous call's, so the provider's prompt cache holds that prefix:

  openai     automatic caching: the previous prompt, in 128-token steps from 1,024 tokens, read at its cache price
  anthropic  a cache breakpoint at each prompt's end: the previous prompt read, the rest written (at 1.25x input)
  gemini     implicit caching: the previous prompt read (from 1,024 tokens), nothing billed for writing

Long context: the same sessions behind a shared system prompt 20,000 tokens short of each tiered model's
long-context threshold (180,000 tokens for gemini-2.5-pro's 200k tier, 252,000 for gpt-5.4's 272k), cached
as above, so a session's later turns cross the threshold: billed with and without the tiers (a prompt above
it has all its tokens at the tier's prices: gateway/pricing.py `rates`).

    .venv/bin/python -m bench.cost_accounting [--repeats 7]

Writes bench/results/cost_accounting.json."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, command, machine_info, write_report
from gateway.model_list_config import ModelEntry
from gateway.pricing import TokenUsage, token_cost

OUT = RESULTS / "cost_accounting.json"
TRAJECTORIES = ROOT.parent / "shared" / "data" / "traces" / "swe_agent" / "swe_trajectories_5.json"
MODELS = {"openai/gpt-4o": "openai", "openai/gpt-4.1-mini": "openai", "anthropic/claude-sonnet-4-5": "anthropic",
          "gemini/gemini-2.5-pro": "gemini"}
# Models litellm's map tiers, and how their providers cache (as MODELS).
TIERED_MODELS = {"gemini/gemini-2.5-pro": "gemini", "openai/gpt-5.4": "openai"}
SHORT_OF_THRESHOLD = 20_000  # the long-context sessions' system prompt: this many tokens below the threshold
MIN_CACHED = 1_024  # OpenAI's and Gemini's smallest cached prefix
CACHE_STEP = 128  # OpenAI caches prefixes in steps of 128 tokens


def _encoder() -> Any:
    """o200k_base from litellm's bundled copy of tiktoken's files (no download; litellm is not imported)."""
    import tiktoken

    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations, "litellm is not installed"
    bundled = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(bundled))
    return tiktoken.get_encoding("o200k_base")


def _message_text(message: dict) -> str:
    """What the model reads of a message: its text and its tool calls (their names and arguments)."""
    content = message.get("content")
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    calls = json.dumps(message.get("tool_calls")) if message.get("tool_calls") else ""
    return f"{message.get('role', '')}: {content or ''} {calls}"


def sessions() -> tuple[str, list[list[tuple[int, int]]]]:
    """(where they come from, each session's calls as (prompt tokens, answer tokens))."""
    if not TRAJECTORIES.exists():
        print(f"{TRAJECTORIES} is absent: a synthetic session (a 3,000-token start, 30 turns of 1,500 tokens "
              "each, 200-token answers)")
        return "synthetic", [[(3_000 + 1_700 * turn, 200) for turn in range(30)]]
    encoder = _encoder()
    found = []
    for trajectory in json.loads(TRAJECTORIES.read_text()):
        messages = trajectory["messages"]
        messages = json.loads(messages) if isinstance(messages, str) else messages
        counts = [len(encoder.encode(_message_text(m), disallowed_special=())) for m in messages]
        found.append([(sum(counts[:i]), counts[i]) for i, m in enumerate(messages) if m.get("role") == "assistant"])
    return str(TRAJECTORIES.relative_to(ROOT.parent)), found


def billed_usage(kind: str, calls: list[tuple[int, int]]) -> list[TokenUsage]:
    """Each call's usage as the provider reports it: how much of its prompt the cache held or took."""
    usages, previous = [], 0
    for prompt, answer in calls:
        if kind == "anthropic":  # the previous prompt read; the rest written for the next call
            usages.append(TokenUsage(prompt, answer, previous, prompt - previous))
        else:
            cached = previous - previous % CACHE_STEP if kind == "openai" else previous
            usages.append(TokenUsage(prompt, answer, cached if previous >= MIN_CACHED else 0))
        previous = prompt
    return usages


def costs(source: str, found: list[list[tuple[int, int]]]) -> dict[str, dict]:
    by_model = {}
    for model, kind in MODELS.items():
        info = ModelEntry(model_name=model, litellm_params={"model": model}).model_info
        assert info.price_source == "litellm", f"{model}: litellm's map does not list it"
        usages = [u for calls in found for u in billed_usage(kind, calls)]
        before = sum(info.input_cost_per_token * u.prompt + info.output_cost_per_token * u.completion for u in usages)
        after = sum(token_cost(info, u) for u in usages)
        by_model[model] = {
            "prices_per_million": {k: round(v * 1e6, 4) if isinstance(v, float) else v for k, v in info.model_dump(
                include={"input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
                         "cache_creation_input_token_cost"}).items()},
            "calls": len(usages), "prompt_tokens": sum(u.prompt for u in usages),
            "cached_tokens": sum(u.cached for u in usages),
            "cache_creation_tokens": sum(u.cache_creation for u in usages),
            "completion_tokens": sum(u.completion for u in usages),
            "billed_before_usd": before, "billed_after_usd": after, "after_over_before": after / before}
        print(f"{model:38s} {len(usages):4d} calls  before ${before:8.4f}  after ${after:8.4f}  "
              f"({after / before:.2f}x)")
    return by_model


def long_context(found: list[list[tuple[int, int]]]) -> dict[str, dict]:
    """The sessions behind a system prompt SHORT_OF_THRESHOLD tokens short of each tiered model's threshold:
    billed before (cache prices, no tiers) and after (tiers too)."""
    by_model = {}
    for model, kind in TIERED_MODELS.items():
        info = ModelEntry(model_name=model, litellm_params={"model": model}).model_info
        assert info.price_source == "litellm" and info.price_tiers, f"{model}: litellm's map lists no tier for it"
        threshold = info.price_tiers[0].above_tokens
        system = threshold - SHORT_OF_THRESHOLD
        usages = [u for calls in found for u in billed_usage(kind, [(system + p, a) for p, a in calls])]
        untiered = info.model_copy(update={"price_tiers": ()})
        before = sum(token_cost(untiered, u) for u in usages)
        after = sum(token_cost(info, u) for u in usages)
        above = [u for u in usages if u.prompt > threshold]
        above_before, above_after = (sum(token_cost(i, u) for u in above) for i in (untiered, info))
        by_model[model] = {
            "threshold_tokens": threshold, "system_prompt_tokens": system, "calls": len(usages),
            "calls_above_threshold": len(above), "tier_per_million": {
                k: round(v * 1e6, 4) for k, v in info.price_tiers[0].model_dump(exclude_none=True).items()
                if k != "above_tokens"},
            "billed_before_usd": before, "billed_after_usd": after, "after_over_before": after / before,
            "above_threshold_before_usd": above_before, "above_threshold_after_usd": above_after,
            "above_threshold_after_over_before": above_after / above_before if above_before else None}
        print(f"{model:38s} {len(usages):4d} calls  no tiers ${before:8.4f}  tiered ${after:8.4f}  "
              f"({after / before:.2f}x); the {len(above)} above {threshold:,}: ${above_before:.4f} -> "
              f"${above_after:.4f}")
    return by_model


_RESOLVE = """
import time
t = time.perf_counter()
from gateway.model_list_config import ModelEntry
imported = time.perf_counter()
for model in {models!r}:
    ModelEntry(model_name=model, litellm_params={{"model": model}})
print(imported - t, time.perf_counter() - imported)
"""
_LITELLM = "import time\nt = time.perf_counter()\nimport litellm\nlitellm.get_model_info('gpt-4o')\n" \
           "print(time.perf_counter() - t)"


def _run(code: str) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, check=True)
    return [float(x) for x in done.stdout.split()]


def resolution_time(repeats: int) -> dict[str, float]:
    """Seconds a fresh process spends resolving the four models' prices (the first reads the map's JSON),
    and, for scale, importing litellm and asking it one model's prices (what wildcards did before)."""
    resolving = [_run(_RESOLVE.format(models=list(MODELS)))[1] for _ in range(repeats)]
    importing = [_run(_LITELLM)[0] for _ in range(max(1, repeats // 3))]
    return {"resolve_4_models_median_s": statistics.median(resolving), "resolve_4_models_max_s": max(resolving),
            "import_litellm_and_get_model_info_median_s": statistics.median(importing)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    source, found = sessions()
    by_model = costs(source, found)
    long = long_context(found)
    timing = resolution_time(args.repeats)
    print(json.dumps(timing))
    write_report(OUT, {"command": command("bench.cost_accounting"), "machine": machine_info(), "sessions": source,
                       "session_count": len(found), "cache_models": {m: k for m, k in MODELS.items()},
                       "by_model": by_model, "long_context": long, "start_up": timing})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
