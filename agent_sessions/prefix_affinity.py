"""Where a request that names no session goes among a model's instances: the one that served the longest
prefix of it lately, whose prefix cache likely still holds that prefix's KV (SGLang's cache-aware router,
llm-d's and Dynamo's KV-aware routing), unless that instance is down or far more loaded than another
(AffinityRule, the same rule that moves a session). Without it, a chat resent whole every turn, or an
agent framework that names no session, lands on any instance and recomputes its context there.

The gateway does not see the engines' caches, so it keeps its own approximate record: each request's text
is cut into chunks whose hashes chain (a chunk's hash covers everything before it), and each instance
remembers the chains it was sent, least recently used forgotten first, up to a bound that stands for its
cache. A request's match on an instance is the run of leading chunks it remembers. Text, not tokens: the
gateway routes before any tokenizer runs, and equal text prefixes are equal token prefixes on one model
(up to the last chunk, which the minimum match dwarfs). The simulator routes with this same class, one
character per token."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

from agent_sessions.affinity import Affinity, AffinityRule, InstanceLoad


def request_text(body: dict) -> str:
    """A chat or completion request's content in prompt order, as one string whose prefixes stand for the
    prefixes of what its model will read: the tools (a chat template renders them first), then each
    message's role, text, tool calls and tool call id; or a completion's prompt."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else ""
    tools = body.get("tools")
    parts = [json.dumps(tools, sort_keys=True, default=str) if tools else ""]
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        parts.append(f"\x1e{message.get('role')}\x1f")
        parts.append(content if isinstance(content, str) else json.dumps(content, sort_keys=True, default=str))
        for key in ("tool_calls", "tool_call_id"):
            if message.get(key):
                parts.append(json.dumps(message[key], sort_keys=True, default=str))
    return "".join(parts)


@dataclass(frozen=True)
class PrefixMatch:
    instance: str | None  # the instance with the longest remembered prefix; None: no instance has one
    matched_chars: int
    total_chars: int


class PrefixAffinity:
    def __init__(self, rule: AffinityRule, chunk_chars: int = 128, min_match_chars: int = 2048,
                 max_chunks_per_instance: int = 200_000, min_match_share: float = 0.0) -> None:
        assert chunk_chars > 0 and min_match_chars >= 0 and max_chunks_per_instance > 0 and 0 <= min_match_share <= 1
        self.rule = rule
        # A match must also cover this share of the request (SGLang's cache_threshold, 0.5 there): a common
        # system prompt alone then does not draw new conversations to one instance. 0: the length alone.
        self.min_match_share = min_match_share
        self.chunk_chars = chunk_chars
        self.min_match_chars = min_match_chars
        self.max_chunks = max_chunks_per_instance
        self._remembered: dict[str, OrderedDict[int, None]] = {}  # instance -> chain hashes, oldest first

    def chunk_hashes(self, text: str) -> list[int]:
        """Chained hashes of the text's whole chunks (a partial last chunk is not remembered)."""
        hashes, parent, size = [], 0, self.chunk_chars
        for start in range(0, len(text) - size + 1, size):
            parent = hash((parent, text[start : start + size]))
            hashes.append(parent)
        return hashes

    def match(self, hashes: list[int], instances: list[str], outstanding: dict[str, int] | None = None) -> PrefixMatch:
        """The instance holding the longest prefix; of several holding as much (a common system prompt
        every instance has served), the one with the fewest requests in flight."""
        loads = outstanding or {}
        best, best_len = None, 0
        for name in instances:
            remembered = self._remembered.get(name)
            if not remembered:
                continue
            length = 0
            for h in hashes:  # a chain hash covers its whole prefix: stop at the first one missing
                if h not in remembered:
                    break
                length += 1
            if length > best_len or (length == best_len > 0 and loads.get(name, 0) < loads.get(best or "", 0)):
                best, best_len = name, length
        return PrefixMatch(best, best_len * self.chunk_chars, len(hashes) * self.chunk_chars)

    def choose(self, hashes: list[int], instances: list[InstanceLoad]) -> Affinity:
        """The instance to try first for a request with these chunk hashes ("prefix"), or None ("new":
        the pool's least loaded) when none holds enough of it; AffinityRule's reasons otherwise."""
        ready = [i for i in instances if i.available]
        found = self.match(hashes, [i.name for i in ready], {i.name: i.outstanding for i in ready})
        if found.instance is None or found.matched_chars < max(self.min_match_chars,
                                                               self.min_match_share * found.total_chars):
            return Affinity(None, "new")
        affinity = self.rule.choose(found.instance, instances)
        return Affinity(affinity.prefer, "prefix") if affinity.reason == "home" else affinity

    def routed(self, instance: str, hashes: list[int], capacity_chars: int | None = None) -> None:
        """The request went to `instance`: it will hold these chunks' KV once it computes them. The
        instance remembers as many chunks as `capacity_chars` (its KV cache's size, in characters) holds."""
        remembered = self._remembered.setdefault(instance, OrderedDict())
        for h in hashes:
            remembered[h] = None
            remembered.move_to_end(h)
        bound = self.max_chunks if capacity_chars is None else max(1, capacity_chars // self.chunk_chars)
        while len(remembered) > bound:
            remembered.popitem(last=False)

    def forget(self, instance: str) -> None:
        """The instance lost its cache (it restarted, or failed): nothing of it can be counted on."""
        self._remembered.pop(instance, None)
