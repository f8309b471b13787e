"""What tool grammars cost: on Pitstop's engine, a custom tool's forced call held to its grammar and a strict
tool's calls held under "auto"; in the gateway, writing chats as functions for upstreams without custom
tools.

    .venv/bin/python -m bench.custom_tools [--reps 5] [--batch 16] [--threads N]

- engine: a random Llama (4 layers, hidden 256, a 32,000-token vocabulary) decodes `--batch` answers at
  once (128-token prompts, up to 64 new tokens), four ways, alternating within each repetition: free
  text (no grammar: the baseline); free text with a strict tool offered under `tool_choice: "auto"`
  (the lazy grammar of engine/held_calls.py armed at every step, waiting for a call that a random model
  almost never opens: what every answer of such a request pays); a forced call of Codex's
  `apply_patch` as a function (the JSON array of a call whose `input` is a string, as a custom tool was
  forced before it had its own grammar); and the same call as a custom tool held to an apply_patch Lark
  grammar (engine/forced_tools.py).
  Output tokens per second on this thread's CPU clock and the ratio to free text (medians of
  per-repetition ratios), and how many calls the model completed within the 64 tokens.
- gateway: CPU microseconds `gateway/dispatch.py` `as_sent` spends on a chat for an upstream without
  custom tools (litellm's, vLLM), median of 2,000 calls: a short chat with three functions and a
  200-message agent chat, both without custom tools (every chat pays this), and a 20-message chat
  with a custom tool and its calls replayed (written as functions); and per chunk, turning a streamed
  function call back into a custom call (`CustomCalls.chunk`).

Writes bench/results/custom_tools.json."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` and `engine` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, THREADS_HELP, CpuClock, command, machine_info, write_report  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from engine.custom_tools import CustomCalls, CustomTool, custom_tools, function_body  # noqa: E402
from engine.forced_tools import ForcedTools  # noqa: E402
from engine.held_calls import held_calls  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.sampling_params import SamplingParams  # noqa: E402
from engine.tiny_model import make_tiny_model  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402
from engine.torch_runner import TorchModelRunner  # noqa: E402
from gateway.dispatch import as_sent  # noqa: E402

OUT = RESULTS / "custom_tools.json"
BLOCK_SIZE, PROMPT_LEN, OUTPUT_LEN = 16, 128, 64

# The shape of Codex's apply_patch grammar (codex-rs), in the Lark subset llguidance reads.
APPLY_PATCH = r"""
start: begin_patch hunk+ end_patch
begin_patch: "*** Begin Patch" LF
end_patch: "*** End Patch" LF?
hunk: add_hunk | delete_hunk | update_hunk
add_hunk: "*** Add File: " filename LF add_line+
delete_hunk: "*** Delete File: " filename LF
update_hunk: "*** Update File: " filename LF change_move? change?
filename: /[^\n]+/
add_line: "+" /[^\n]*/ LF
change_move: "*** Move to: " filename LF
change: (change_context | change_line)+ eof_line?
change_context: ("@@" | "@@ " /[^\n]+/) LF
change_line: ("+" | "-" | " ") /[^\n]*/ LF
eof_line: "*** End of File" LF
LF: "\n"
"""
PATCH_TOOL = CustomTool("apply_patch", "Edit files", "lark", APPLY_PATCH)


def engine_variants(tokenizer: Tokenizer) -> dict[str, SamplingParams]:
    as_function = PATCH_TOOL.as_function()
    forced_function = ForcedTools(("apply_patch",), named=True, max_calls=1)
    forced_custom = ForcedTools(("apply_patch",), named=True, max_calls=1, custom={"apply_patch": PATCH_TOOL})
    base = {"temperature": 1.0, "seed": 7, "max_tokens": OUTPUT_LEN}
    weather = {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    held = held_calls([weather, as_function], "hermes", tokenizer.added_tokens, True)
    return {"free_text": SamplingParams(**base, ignore_eos=True),
            "free_text_strict_tool_offered": SamplingParams(**base, ignore_eos=True, constraint=held),
            "function_call": SamplingParams(**base, constraint=forced_function.constraint([as_function])),
            "custom_call_lark": SamplingParams(**base, constraint=forced_custom.constraint([as_function]))}


def run(runner: TorchModelRunner, config: EngineConfig, prompts: list[list[int]], params: SamplingParams,
        tokenizer: Tokenizer) -> dict:
    """All requests at once, stepped to the end: CPU seconds, tokens produced and each answer's text."""
    clock = CpuClock()
    engine = LLMEngine(config, runner, clock, tokenizer=tokenizer)
    start = clock.now()
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params, arrival_time=start)
    tokens, texts, whole = 0, [""] * len(prompts), 0
    while engine.has_unfinished():
        for out in engine.step():
            tokens += len(out.new_token_ids)
            texts[int(out.request_id[1:])] += out.text_delta
            whole += out.finish_reason == "stop"
    return {"cpu_s": clock.now() - start, "tokens": tokens, "texts": texts, "whole": whole}


def engine_section(reps: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="pitstop-bench-") as folder:
        model_dir = make_tiny_model(Path(folder) / "model", layers=4, hidden=256, vocab_size=32_000)
        tokenizer = Tokenizer(model_dir)
        per_seq = -(-(PROMPT_LEN + OUTPUT_LEN) // BLOCK_SIZE)
        config = EngineConfig(block_size=BLOCK_SIZE, num_blocks=batch * per_seq + 8, max_num_seqs=batch,
                              max_num_batched_tokens=2048, enable_prefix_caching=False)
        runner = TorchModelRunner(model_dir, config.num_blocks, BLOCK_SIZE, device="cpu", dtype=torch.float32)
        rng = random.Random(1)
        prompts = [[rng.randrange(32_000) for _ in range(PROMPT_LEN)] for _ in range(batch)]
        variants = engine_variants(tokenizer)
        for params in variants.values():  # warm-up: allocations, llguidance's view of the vocabulary
            run(runner, config, prompts[:2], params, tokenizer)
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for rep in range(reps):
            for name in list(variants) if rep % 2 == 0 else list(reversed(variants)):
                runs[name].append(run(runner, config, prompts, variants[name], tokenizer))
            print(f"rep {rep + 1}/{reps}", file=sys.stderr)
        out = {}
        for name, measured in runs.items():
            out[name] = {
                "tokens_per_s_cpu": statistics.median(r["tokens"] / r["cpu_s"] for r in measured),
                "tokens_per_answer": statistics.median(r["tokens"] for r in measured) / batch,
                "speed_vs_free_text": statistics.median(
                    (r["tokens"] / r["cpu_s"]) / (b["tokens"] / b["cpu_s"])
                    for r, b in zip(measured, runs["free_text"], strict=True)),
            }
        for name in ("function_call", "custom_call_lark"):  # the rest were cut by max tokens
            out[name]["calls_completed"] = f"{runs[name][-1]['whole']}/{batch}"
            out[name]["example"] = runs[name][-1]["texts"][0][:160]
        return {"batch": batch, "prompt_len": PROMPT_LEN, "max_output_len": OUTPUT_LEN, "variants": out}


def _median_us(call, n: int = 2000) -> float:  # noqa: ANN001
    times = []
    for _ in range(n):
        start = time.thread_time_ns()
        call()
        times.append((time.thread_time_ns() - start) / 1000)
    return statistics.median(times)


class _Upstream:
    native_tools = False


def gateway_section() -> dict:
    functions = [{"type": "function", "function": {"name": f"tool_{k}", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}} for k in range(3)]
    short = {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Hello"}], "tools": functions}
    turns = []
    for k in range(66):
        turns += [{"role": "assistant", "content": None, "tool_calls": [{"id": f"c{k}", "type": "function",
                   "function": {"name": "tool_0", "arguments": '{"q": "x"}'}}]},
                  {"role": "tool", "tool_call_id": f"c{k}", "content": "result " * 20},
                  {"role": "user", "content": "go on"}]
    agent = {**short, "messages": [*short["messages"], *turns][:200]}
    patch = {"type": "custom", "custom": {"name": "apply_patch", "format": {"type": "grammar", "grammar": {
        "syntax": "lark", "definition": APPLY_PATCH}}}}
    replayed = [{"role": "user", "content": "fix it"}]
    for k in range(9):
        replayed += [{"role": "assistant", "content": None, "tool_calls": [{"id": f"p{k}", "type": "custom",
                      "custom": {"name": "apply_patch", "input": "*** Begin Patch\n*** End Patch\n"}}]},
                     {"role": "tool", "tool_call_id": f"p{k}", "content": "Done"}]
    custom = {"model": "m", "messages": [*replayed, {"role": "user", "content": "once more"}][:20],
              "tools": [*functions, patch]}
    upstream = _Upstream()
    pieces = [{"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": json.dumps("line of a patch\n")[1:-1]}}]}, "finish_reason": None}]}]

    def stream_chunk() -> None:
        calls = CustomCalls(frozenset({"apply_patch"}))
        calls.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "type": "function",
                     "function": {"name": "apply_patch", "arguments": ""}}]}, "finish_reason": None}]})
        for piece in pieces * 10:
            calls.chunk(piece)

    assert function_body(custom, custom_tools(custom["tools"]))["tools"][-1]["type"] == "function"
    return {
        "as_sent_us": {
            "short_chat_three_functions": _median_us(lambda: as_sent(upstream, "chat", short)),  # type: ignore[arg-type]
            "agent_chat_200_messages": _median_us(lambda: as_sent(upstream, "chat", agent)),  # type: ignore[arg-type]
            "custom_tool_20_messages_9_calls": _median_us(lambda: as_sent(upstream, "chat", custom)),  # type: ignore[arg-type]
        },
        "custom_calls_chunk_us_per_chunk": _median_us(stream_chunk, 500) / 11,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"command": command("bench.custom_tools", argv), "machine": machine_info(),
              "model": {"layers": 4, "hidden": 256, "vocab": 32_000, "threads": args.threads},
              "gateway": gateway_section(), "engine": engine_section(args.reps, args.batch)}
    write_report(OUT, report)
    print(json.dumps({"gateway": report["gateway"], "engine": report["engine"]["variants"]}, indent=2))
    return report


if __name__ == "__main__":
    main()
