"""Agent programs built from real SWE-bench trajectories (../shared/data/traces/swe_agent/): per turn,
the tokens the context grows by (the tool result and the agent's own reply), the reply's length, the
tool it called and how long that tool ran (`execution_time_seconds`). Tokens are counted with the
project's counting tokenizer (routers/tokens.py). Programs are resampled from these templates, with
token ids unique to each program, and arrive over time; tool times can be scaled up (test runs of
tens of seconds), and background chat requests share the engine."""

from __future__ import annotations

import ast
import json
import random
from dataclasses import dataclass
from pathlib import Path

from routers.tokens import count_tokens

TRACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces" / "swe_agent" / "swe_trajectories_5.json"


@dataclass(frozen=True)
class TurnTemplate:
    new_prompt_tokens: int  # what the context grows by before this turn (first turn: the whole prompt)
    output_tokens: int
    tool: str | None  # the tool the reply calls (None: the program ends after this turn)
    tool_command: str
    tool_time_s: float


@dataclass(frozen=True)
class ProgramTemplate:
    name: str
    turns: list[TurnTemplate]


def message_text(content: object) -> str:
    if isinstance(content, str):
        try:
            parts = ast.literal_eval(content) if content.startswith("[{") else None
        except (ValueError, SyntaxError):
            parts = None
        content = parts if parts is not None else content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def tool_calls_of(message: dict) -> list[dict]:
    raw = message.get("tool_calls")
    if not raw:
        return []
    return ast.literal_eval(raw) if isinstance(raw, str) else raw


def load_templates(path: Path = TRACE) -> list[ProgramTemplate]:
    templates = []
    for trajectory in json.loads(path.read_text()):
        messages = json.loads(trajectory["messages"]) if isinstance(trajectory["messages"], str) \
            else trajectory["messages"]
        pending: list[str] = []  # texts added to the context since the last reply
        turns: list[tuple[str, str, list[dict]]] = []
        for message in messages:
            if message["role"] == "assistant":
                calls = tool_calls_of(message)
                reply = message_text(message.get("content")) + "".join(c["function"]["arguments"] for c in calls)
                turns.append(("\n".join(pending), reply, calls))
                pending = []
            else:
                pending.append(message_text(message.get("content")))
        counts = count_tokens([t for prompt, reply, _ in turns for t in (prompt, reply)])
        built = []
        for i, (_, _, calls) in enumerate(turns):
            last = i == len(turns) - 1
            call = calls[0] if calls and not last else None
            command = json.loads(call["function"]["arguments"]).get("command", "") if call else ""
            built.append(TurnTemplate(max(1, counts[2 * i]), max(1, counts[2 * i + 1]),
                                      call["function"]["name"] if call else None, str(command),
                                      float(sum(c.get("execution_time_seconds") or 0.0 for c in calls)) if call else 0.0))
        templates.append(ProgramTemplate(trajectory["instance_id"], built))
    return templates


@dataclass(frozen=True)
class ToolScaling:
    """Recorded tool times are a sandbox's (median 0.46 s); real agents also run test suites."""

    all_tools: float = 1.0
    test_runs: float = 1.0  # bash commands that run Python (reproduction scripts, tests)
    floor_s: float = 0.05  # editor calls recorded as 0 s still cost a round trip to the agent

    def __call__(self, turn: TurnTemplate) -> float:
        t = turn.tool_time_s * self.all_tools
        if turn.tool == "bash" and ("python" in turn.tool_command or "pytest" in turn.tool_command):
            t *= self.test_runs
        return max(self.floor_s, t)


@dataclass(frozen=True)
class Program:
    program_id: str
    arrival_s: float
    template: ProgramTemplate
    tool_times_s: list[float]
    token_base: int  # the program's token ids start here: no two programs share a prefix


def make_programs(templates: list[ProgramTemplate], num_programs: int, rate_per_s: float,
                  scaling: ToolScaling, seed: int = 0) -> list[Program]:
    rng = random.Random(seed)
    t = 0.0
    programs = []
    for i in range(num_programs):
        t += rng.expovariate(rate_per_s)
        template = rng.choice(templates)
        # Each instance of a template waits a little differently (x0.7 - x1.4): same shape, not a replay.
        jitter = [rng.uniform(0.7, 1.4) for _ in template.turns]
        programs.append(Program(f"p{i}", t, template, [scaling(turn) * j for turn, j in zip(template.turns, jitter, strict=True)],
                                1000 + i * 1_000_003))
    return programs


def token_ids(base: int, count: int, vocab_size: int, offset: int = 0) -> list[int]:
    """Deterministic ids for a program's new tokens: distinct from other programs' with high odds."""
    return [(base + (offset + k) * 7919) % (vocab_size - 2) + 1 for k in range(count)]
