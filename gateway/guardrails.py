"""Guardrails on the calls the gateway makes (`guardrails:`; config in gateway/guardrails_config.py),
litellm's pre-call and post-call guardrails: personal data and secrets masked before a call to a model
that should not see them, and put back in its answer; requests refused that carry what must not leave.

They apply per call, where the dispatcher sends a body to a model (gateway/dispatch.py), so a fallback, a
verifying call or an agent's tool loop is checked against the model it really goes to. What a request sends
is checked in every message's text, text parts, tool results and earlier tool calls' arguments (an agent's
history holds the values its tools were given), a completion's prompt, an embeddings request's text inputs
and a rerank's query and documents and a moderation's inputs (read like embeddings' inputs, a moderation's
text parts too; their answers hold no text of the model's, so nothing is put back: a rerank's documents are
the gateway's copies of the client's). A moderation guardrail sends those texts to a moderation model
before the call (gateway/moderation_guardrail.py); a moderation call is never moderated. An answer's text,
reasoning and tool-call arguments get the values back: an agent's tool is called with the real address, not
its placeholder. A streamed answer holds back the few characters that may be the start of a placeholder
until the next chunk shows whether they are."""

from __future__ import annotations

import copy
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from engine.server.errors import APIError
from gateway.backends.base import CallContext
from gateway.guardrails_config import GuardrailConfig
from gateway.moderation_guardrail import Complete, moderate
from gateway.pii import KINDS, Masker, find
from gateway.wildcards import name_matches

Edit = Callable[[str], str]
# Requests whose body holds texts to read rather than a conversation (edit_inputs): their fields.
_INPUTS = {"embedding": ("input",), "rerank": ("query", "documents"), "moderation": ("input",),
           "classify": ("input",), "score": ("text_1", "text_2")}


def edit_request(body: dict, edit: Edit) -> dict:
    """A copy of a chat or completion body with `edit` applied to every text a model reads."""
    body = copy.deepcopy(body)
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = edit(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part["text"] = edit(part["text"])
        _edit_calls(message.get("tool_calls"), edit)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        body["prompt"] = edit(prompt)
    elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        body["prompt"] = [edit(p) for p in prompt]
    return body


def _edit_calls(calls: Any, edit: Edit) -> None:
    for call in calls or ():
        if not isinstance(call, dict):
            continue
        for field in ("function", "custom"):
            part = call.get(field)
            key = "arguments" if field == "function" else "input"
            if isinstance(part, dict) and isinstance(part.get(key), str):
                part[key] = edit(part[key])


def request_texts(body: dict) -> list[str]:
    texts: list[str] = []
    edit_request(body, lambda text: texts.append(text) or text)
    return texts


def _text_part(item: object) -> bool:
    return isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str)


def edit_inputs(kind: str, body: dict, edit: Edit) -> dict:
    """A copy of an embeddings, rerank or moderation body with `edit` applied to its texts: an embeddings
    request's string inputs (token ids are no text to read), a rerank's query and documents (strings, as
    gateway/rerank_request.py sends them), a moderation's inputs (strings, or text parts beside images)."""
    body = dict(body)
    for name in _INPUTS[kind]:
        value = body.get(name)
        if isinstance(value, str):
            body[name] = edit(value)
        elif isinstance(value, list):
            body[name] = [edit(item) if isinstance(item, str) else {**item, "text": edit(item["text"])}
                          if _text_part(item) else item for item in value]
    return body


def refused_input(exc: APIError, named: Callable[[int], str]) -> APIError:
    """A guardrail's refusal of an embeddings call's `input[i]`, renamed as the client knows that text
    (the call held only the inputs the cache lacked; a rerank's inputs are its query and documents)."""
    if exc.code == "guardrail_blocked" and exc.param and (found := re.fullmatch(r"input\[(\d+)\]", exc.param)):
        exc.param = named(int(found[1]))
    return exc


def located_texts(kind: str, body: dict) -> list[tuple[str, str]]:
    """(the request field a refusal names, text) of each text a model reads in a `kind` request."""
    if kind not in _INPUTS:
        return [("messages", text) for text in request_texts(body)]
    texts: list[tuple[str, str]] = []
    for name in _INPUTS[kind]:
        value = body.get(name)
        if isinstance(value, str):
            texts.append((name, value))
        elif isinstance(value, list):
            texts += [(f"{name}[{i}]", item if isinstance(item, str) else item["text"]) for i, item in enumerate(value)
                      if isinstance(item, str) or _text_part(item)]
    return texts


def restore_answer(answer: dict, masker: Masker) -> dict:
    """A whole chat or completion answer with the placeholders' values put back: a plain dict (an answer
    kept as its upstream's bytes, gateway/backends/answers.py, is written out again)."""
    answer = dict(answer)
    for choice in answer.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            choice["text"] = masker.restore(choice["text"])
        message = choice.get("message")
        if isinstance(message, dict):
            for key in ("content", "reasoning_content"):
                if isinstance(message.get(key), str):
                    message[key] = masker.restore(message[key])
            _edit_calls(message.get("tool_calls"), masker.restore)
    return answer


class StreamRestorer:
    """Puts values back in a stream's chunks. Each text field of each choice (content, reasoning, a tool
    call's arguments) keeps back its tail while it may be a placeholder's start; what is kept is sent with
    the next piece of that field, or on its own before the stream ends."""

    def __init__(self, masker: Masker) -> None:
        self.masker = masker
        self.pending: dict[tuple, str] = {}
        self.last: dict | None = None

    def _piece(self, key: tuple, text: str) -> str:
        text = self.pending.pop(key, "") + text
        keep = self.masker.held_back(text)
        if keep:
            self.pending[key] = text[-keep:]
            text = text[:-keep]
        return self.masker.restore(text)

    def chunk(self, chunk: dict) -> dict:
        self.last = chunk
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            if isinstance(choice.get("text"), str):
                choice["text"] = self._piece((index, "text"), choice["text"])
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for key in ("content", "reasoning_content"):
                    if isinstance(delta.get(key), str):
                        delta[key] = self._piece((index, key), delta[key])
                for call in delta.get("tool_calls") or ():
                    if isinstance(call, dict):
                        where = (index, "call", call.get("index", 0))
                        _edit_calls([call], lambda text, where=where: self._piece(where, text))
            if choice.get("finish_reason"):  # nothing more comes for this choice: what it kept goes now
                self._flush_into(choice, index)
        return chunk

    def _flush_into(self, choice: dict, index: int) -> None:
        for key in [k for k in self.pending if k[0] == index]:
            text = self.masker.restore(self.pending.pop(key))
            if key[1] == "text":
                choice["text"] = (choice.get("text") or "") + text
                continue
            delta = choice.setdefault("delta", {})
            if key[1] == "call":
                delta.setdefault("tool_calls", []).append({"index": key[2], "function": {"arguments": text}})
            else:
                delta[key[1]] = (delta.get(key[1]) or "") + text

    def rest(self) -> dict | None:
        """A last chunk with whatever is still kept (a stream that ended without a finish reason)."""
        if not self.pending or self.last is None:
            return None
        envelope = {k: v for k, v in self.last.items() if k not in ("choices", "usage")}
        completion = any(key[1] == "text" for key in self.pending)
        choices = []
        for index in sorted({k[0] for k in self.pending}):
            choice: dict = {"index": index, "finish_reason": None, **({} if completion else {"delta": {}})}
            self._flush_into(choice, index)
            choices.append(choice)
        return {**envelope, "choices": choices}


async def restored(chunks: AsyncIterator[dict], masker: Masker) -> AsyncIterator[dict]:
    restorer = StreamRestorer(masker)
    try:
        async for chunk in chunks:
            yield restorer.chunk(chunk)
        if (last := restorer.rest()) is not None:
            yield last
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass
class Guarded:
    """One call's guarding: the body to send, and the masker whose values go back in the answer."""

    body: dict
    masker: Masker | None


class Guardrails:
    def __init__(self, configs: list[GuardrailConfig], registry: CollectorRegistry | None = None) -> None:
        self.configs = configs
        self.actions = Counter("pitstop_guardrail_actions", "Values masked and requests blocked by guardrails",
                               ["guardrail", "action", "kind"], registry=registry)
        self._for_model: dict[str, list[GuardrailConfig]] = {}

    def __bool__(self) -> bool:
        return bool(self.configs)

    def applying(self, model: str) -> list[GuardrailConfig]:
        if (found := self._for_model.get(model)) is None:
            found = self._for_model[model] = [
                g for g in self.configs if g.models is None or any(name_matches(m, model) for m in g.models)]
        return found

    async def guard(self, model: str, kind: str, body: dict, ctx: CallContext, complete: Complete) -> Guarded:
        """`check`, then the moderation guardrails on `model` (a round trip each to its moderation model, made
        with `complete`): what to send, or the APIError (400, or 503 for a moderation model that failed)."""
        guarded = self.check(model, kind, body)  # the checks in process first: a request they refuse costs no call
        moderating = [g for g in self.applying(model) if g.kind == "moderation"]
        if moderating and kind != "moderation":  # a moderation call is the check itself
            await moderate(moderating, model, located_texts(kind, body), ctx, complete, self.actions)
        return guarded

    def check(self, model: str, kind: str, body: dict) -> Guarded:
        """What to send to `model`: `body` with its guardrails' masks; an APIError (400) where one blocks."""
        guards = self.applying(model)
        if not guards:
            return Guarded(body, None)
        texts = located_texts(kind, body)
        for guard in guards:
            if guard.kind == "blocklist":
                self._blocklist(guard, model, texts)
            elif guard.kind == "pii" and guard.action == "block":
                self._block_pii(guard, model, texts)
        masks = [g for g in guards if g.kind == "pii" and g.action == "mask"]
        if not masks:
            return Guarded(body, None)
        kinds = tuple(k for k in KINDS if any(g.entities is None or k in g.entities for g in masks))
        maskers = [Masker(kinds)]
        if kind == "embedding":
            # Each input is embedded alone: numbered alone too, so its vector (kept per input by the
            # response cache) is the same whatever else the call held.
            def mask_alone(text: str) -> str:
                maskers.append(Masker(kinds))
                return maskers[-1].mask(text)
            body = edit_inputs(kind, body, mask_alone)
        elif kind in ("rerank", "moderation", "classify", "score"):  # one numbering: a value in two of its texts gets one placeholder
            body = edit_inputs(kind, body, maskers[0].mask)
        else:
            body = edit_request(body, maskers[0].mask)
        for masker in maskers:
            for kind_name, count in masker.counts.items():
                for guard in masks:
                    if guard.entities is None or kind_name in guard.entities:
                        self.actions.labels(guard.name, "mask", kind_name).inc(count)
        masker = maskers[0]
        if kind in _INPUTS or not masker.values or not any(g.restore for g in masks):
            return Guarded(body, None)  # nothing to put back
        return Guarded(body, masker)

    def _blocklist(self, guard: GuardrailConfig, model: str, texts: list[tuple[str, str]]) -> None:
        for pattern in guard.patterns:
            for param, text in texts:
                if re.search(pattern, text):
                    self.actions.labels(guard.name, "block", "pattern").inc()
                    raise APIError(400, f"guardrail {guard.name!r} does not let this request through to "
                                        f"{model!r}: it matches a blocked pattern", param, "guardrail_blocked")

    def _block_pii(self, guard: GuardrailConfig, model: str, texts: list[tuple[str, str]]) -> None:
        kinds = tuple(guard.entities) if guard.entities is not None else KINDS
        for param, text in texts:
            spans = find(text, kinds)
            if spans:
                kind = spans[0][2]
                self.actions.labels(guard.name, "block", kind).inc()
                raise APIError(400, f"guardrail {guard.name!r} does not let {kind.replace('_', ' ')} values through "
                                    f"to {model!r}", param, "guardrail_blocked")
