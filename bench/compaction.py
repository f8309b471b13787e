"""What server-side compaction (`context_management` on a Responses turn, gateway/compaction.py) does to
the real SWE-agent trajectories (../shared/data/traces/swe_agent/): each trajectory's assistant turns
replayed through an in-process gateway as an agent sends them without stored responses (the whole
history each turn, the gateway's output items appended, the recorded assistant turns and tool results
after them), once without compaction and once with a threshold. The upstream is the tests' mock
(tests/gateway/upstream.py, answers of `--summary-words` words, so each summary is that long; the
replay goes on with the recorded answers, not the mock's); what it was sent is counted with the
project's counting tokenizer (routers/tokens.py, all-MiniLM-L6-v2's WordPiece).

Per mode: the prompt tokens of every model call (the turns, and the compaction passes), the largest
prompt, and the tokens a perfect prefix cache could not serve (each call's prompt past what it shares
with the previous call's, as an engine holding the agent's KV would compute). Beside it, the gateway's
CPU for a turn that carries a compaction item (decoding it and pruning the history before it) against
the same turn without, measured in process on each trajectory's longest history.

    .venv/bin/python -m bench.compaction [--threshold 8000] [--summary-words 300]

Writes bench/results/compaction.json."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, command, machine_info, write_report
from bench.token_counts import DATA, swe_agent_turns
from gateway.compaction_items import Compaction, item
from gateway.responses_api import chat_request, continued
from routers.tokens import counting_tokenizer

OUT = RESULTS / "compaction.json"


def responses_items(messages: list[dict]) -> list[dict]:
    """Chat messages (after the system prompt) as the Responses items an agent keeps."""
    items: list[dict] = []
    for message in messages:
        if message["role"] == "assistant":
            if message.get("content"):
                items.append({"type": "message", "role": "assistant",
                              "content": [{"type": "output_text", "text": message["content"]}]})
            for call in message.get("tool_calls") or ():
                items.append({"type": "function_call", "call_id": call["id"], "name": call["function"]["name"],
                              "arguments": call["function"]["arguments"]})
        elif message["role"] == "tool":
            items.append({"type": "function_call_output", "call_id": message["tool_call_id"],
                          "output": message["content"] or ""})
        else:
            items.append({"role": message["role"], "content": message["content"] or ""})
    return items


def rendered_ids(body: dict) -> list[int]:
    """A chat body's messages as one text's token ids (for counts and shared prefixes)."""
    parts = []
    for message in body["messages"]:
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        calls = json.dumps(message.get("tool_calls")) if message.get("tool_calls") else ""
        parts.append(f"<{message['role']}>{text or ''}{calls}")
    return counting_tokenizer().encode("".join(parts), add_special_tokens=False).ids


def shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def replay(client: Any, upstream: Any, contexts: list[dict], manage: list[dict] | None) -> dict:
    """One trajectory's turns sent as an agent without stored responses sends them."""
    system = contexts[0]["messages"][0]["content"]
    history: list[dict] = []
    seen = 1  # messages of the trajectory already in `history` (after its system prompt)
    calls: list[dict] = []
    for context in contexts:
        history += responses_items(context["messages"][seen:])
        seen = len(context["messages"])
        before = upstream.stats()["requests"]
        extra = {"context_management": manage} if manage else {}
        response = client.responses.create(model="up", instructions=system, input=history, store=False, **extra)
        bodies = upstream.stats()["bodies"][-(upstream.stats()["requests"] - before):]
        for body in bodies:
            calls.append({"ids": rendered_ids(body), "pass": body["messages"][-1]["role"] == "user"
                          and str(body["messages"][-1]["content"]).startswith("Your context is about to be")})
        history += [i.model_dump(exclude_none=True) for i in response.output if i.type == "compaction"]
    previous: list[int] = []
    uncached = 0
    turn_chain: list[int] = []
    for call in calls:
        uncached += len(call["ids"]) - shared_prefix(call["ids"], previous)
        previous = call["ids"] if not call["pass"] else previous  # a pass reads the turn's prefix, then is gone
        if not call["pass"]:
            turn_chain.append(len(call["ids"]))
    return {"turns": len(contexts), "passes": sum(c["pass"] for c in calls),
            "prompt_tokens": sum(len(c["ids"]) for c in calls),
            "pass_prompt_tokens": sum(len(c["ids"]) for c in calls if c["pass"]),
            "largest_prompt": max(turn_chain), "last_prompt": turn_chain[-1], "uncached_prompt_tokens": uncached}


def pruning_cpu_us(contexts: list[dict], repeats: int) -> dict:
    """The gateway's CPU turning a turn's items into its chat, with a compaction item near the end of
    the history (decoded, everything before it pruned) and without, on the trajectory's longest history."""
    messages = contexts[-1]["messages"]
    items = responses_items(messages[1:])
    compaction = Compaction([m["content"] for m in messages if m["role"] == "user"], "w " * 300, [], "up")
    with_item = [*items, item("cmp_1", compaction), {"role": "user", "content": "go on"}]
    without = [*items, {"role": "user", "content": "w " * 300}, {"role": "user", "content": "go on"}]

    def timed(history: list[dict]) -> float:
        samples = []
        for _ in range(repeats):
            raw = {"model": "up", "instructions": messages[0]["content"], "input": history}
            started = time.perf_counter()
            continued(chat_request(raw), raw, [])
            samples.append((time.perf_counter() - started) * 1e6)
        return statistics.median(samples)

    plain, compacted = timed(without), timed(with_item)
    return {"items": len(with_item), "without_item_us": plain, "with_item_us": compacted,
            "item_bytes": len(with_item[-2]["encrypted_content"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=int, default=8000, help="compact_threshold (the gateway's estimate)")
    parser.add_argument("--summary-words", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    if not DATA.exists():
        sys.exit(f"skipped: {DATA} is absent (the SWE-agent trajectories live in ../shared/data)")
    from tests.gateway.harness import gateway_config, model_entry, running_gateway
    from tests.gateway.upstream import UpstreamProcess

    trajectories = swe_agent_turns()
    manage = [{"type": "compaction", "compact_threshold": args.threshold}]
    upstream = UpstreamProcess("a")
    per_trajectory = []
    try:
        upstream.set_words(args.summary_words)
        with tempfile.TemporaryDirectory() as work:
            raw = gateway_config(Path(work), [model_entry("up", upstream.api_base)], ranking={"enabled": False})
            with running_gateway(raw) as gateway, gateway.openai() as client:
                for contexts in trajectories:
                    runs = {"none": replay(client, upstream, contexts, None),
                            "compaction": replay(client, upstream, contexts, manage)}
                    per_trajectory.append({**runs, "pruning_cpu": pruning_cpu_us(contexts, args.repeats)})
    finally:
        upstream.close()

    def total(mode: str, key: str) -> int:
        return sum(t[mode][key] for t in per_trajectory)

    summary = {mode: {key: total(mode, key) for key in ("turns", "passes", "prompt_tokens", "pass_prompt_tokens",
                                                          "uncached_prompt_tokens")}
               for mode in ("none", "compaction")}
    for mode in summary:
        summary[mode]["largest_prompt"] = max(t[mode]["largest_prompt"] for t in per_trajectory)
    summary["ratios"] = {key: summary["compaction"][key] / summary["none"][key]
                         for key in ("prompt_tokens", "uncached_prompt_tokens", "largest_prompt")}
    summary["pruning_cpu_us_median"] = {
        "without_item": statistics.median(t["pruning_cpu"]["without_item_us"] for t in per_trajectory),
        "with_item": statistics.median(t["pruning_cpu"]["with_item_us"] for t in per_trajectory)}
    report = {"command": command("bench.compaction", argv), "machine": machine_info(),
              "threshold": args.threshold, "summary_words": args.summary_words,
              "tokens": "all-MiniLM-L6-v2 WordPiece over the rendered messages (routers/tokens.py)",
              "summary": summary, "trajectories": per_trajectory}
    write_report(OUT, report)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
