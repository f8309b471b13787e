"""A client-side agent loop over the openai SDK, as an agent framework runs one: each turn's reply is
followed by a tool call the agent decides on, a real tool (a sleep), and the tool's result sent back
in the next turn. The tiny model writes random text, so the tool call is the agent's decision; the
gateway reads tool names and durations from the messages, as it would from any framework."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import openai

TOOLS = [{"type": "function", "function": {
    "name": "bash", "description": "Run a shell command in the repository.",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}]
TASK = ("You are fixing a bug in a Python repository. The failing test is tests/test_money.py::test_disabled. "
        "Read the widget code, find why decompress breaks validation for disabled fields, and patch it. ")


@dataclass
class AgentRun:
    session_id: str
    messages: list[dict] = field(default_factory=list)
    usages: list = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)

    @property
    def cached_tokens(self) -> list[int]:
        return [u.prompt_tokens_details.cached_tokens for u in self.usages]


def start(session_id: str, task_repeats: int = 6) -> AgentRun:
    return AgentRun(session_id, [{"role": "system", "content": f"Agent {session_id}. You are a careful engineer."},
                                 {"role": "user", "content": TASK * task_repeats}])


def turn(client: openai.OpenAI, run: AgentRun, model: str = "tiny", max_tokens: int = 8,
         extra_body: dict | None = None) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=run.messages, tools=TOOLS, max_tokens=max_tokens,
        extra_headers={"x-session-id": run.session_id},
        extra_body={"metadata": {"agent": "swe-test"}, **(extra_body or {})})
    reply = raw.parse()
    run.usages.append(reply.usage)
    run.request_ids.append(raw.headers["x-pitstop-request-id"])
    return reply.choices[0].message.content or ""


def run_tool(run: AgentRun, reply: str, command: str, seconds: float) -> None:
    """The agent asks for `command` and runs it (a real sleep): the next turn sends the result back."""
    call_id = f"call_{len(run.messages)}"
    run.messages.append({"role": "assistant", "content": reply, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": "bash", "arguments": json.dumps({"command": command})}}]})
    time.sleep(seconds)
    run.messages.append({"role": "tool", "tool_call_id": call_id, "content": f"$ {command}\nok ({seconds:.1f}s)"})


def flood(client: openai.OpenAI, requests: int, words: int = 120, model: str = "tiny", seed: int = 0) -> None:
    """Other traffic: distinct long prompts, enough to cycle an unpinned cache several times."""
    for i in range(requests):
        text = " ".join(f"w{(seed * 7919 + i * 104729 + j * 31) % 99991}" for j in range(words))
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], max_tokens=2)
