"""OpenAI's `truncation: "auto"` for Responses turns: where the conversation a turn sends (its chain or its
conversation's items, then its own input) no longer fits the model's context, items in its middle are
dropped until it does, leaving room for the answer, as OpenAI drops input items in the middle of the
conversation. Only what goes upstream is cut: the stored chain and conversation keep every item.

What stays: the instructions (the system and developer messages the chat opens with), the first user
message (an agent's task), and as many of the latest messages as fit. The kept tail never opens with a
tool result, so no result goes without its call. Where even the task and the last exchange do not fit,
the task goes too, and the tail opens with a user message; where that cannot fit, the turn is a 400. Whether a chat fits is the
model's own count where its deployment counts (gateway/token_count.py), else a bound no tokenizer exceeds:
the chat's UTF-8 bytes as JSON (a token is at least one byte), which may drop more than needed, never too
little. The longest tail that fits is found by bisection: a few counts, not one per message.

The cut is kept stable from turn to turn, so the model's prefix cache (and a session's pinned KV) still
holds the kept start of the conversation: the longest tail that fits is rounded down to a checkpoint, a
cut where the bytes dropped pass a multiple of a stride (about a quarter of the context). A conversation
only grows at its end, so the checkpoints stay where they are, and the cut moves only once a stride's
worth more must go. Without `truncation` (or with `disabled`) a turn too long is refused by the model, as
at OpenAI."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from engine.server.errors import bad_request
from gateway.token_count import count_on_model

if TYPE_CHECKING:  # gateway.state builds what imports this module
    from gateway.state import GatewayState

ANSWER_RESERVE = 256  # tokens kept for the answer where the turn sets no max_output_tokens (at most a quarter)
STRIDE_SHARE = 0.25  # how far the cut moves at once, as a share of the budget (bench/truncation.py)
BYTES_PER_TOKEN = 4  # for the stride: about what the estimate takes (bench/token_counts.py)
_LEADING = ("system", "developer")


def checkpoints(messages: list[dict], head: int, cuts: list[int], stride: int) -> list[int]:
    """The `cuts` at which the bytes of the messages dropped after `head` first pass each multiple of
    `stride`: the same ones turn after turn, as a conversation only grows at its end."""
    marks, dropped, passed, position = [], 0, 0, head
    for cut in cuts:
        dropped += sum(len(json.dumps(m, ensure_ascii=False).encode()) for m in messages[position:cut])
        position = cut
        if dropped // stride > passed:  # one long message may pass several multiples: one mark
            marks.append(cut)
            passed = dropped // stride
    return marks


def byte_bound(body: dict) -> int:
    """More than the chat's prompt tokens on any tokenizer whose tokens are one byte or more."""
    return len(json.dumps({"messages": body["messages"], "tools": body.get("tools")}, ensure_ascii=False).encode())


async def model_window(state: GatewayState, model: str) -> int | None:
    """The most prompt tokens `model` takes: its config's `max_input_tokens`, else the least its
    deployments say (None where none says); kept in `state.windows` once known."""
    deployments = state.pool.by_model.get(model, [])
    configured = [d.info.max_input_tokens for d in deployments if d.info.max_input_tokens is not None]
    said = configured or [window for d in deployments if (window := await d.backend.context_window()) is not None]
    if not said:
        return None
    state.windows[model] = window = min(said)
    return window


async def fit_context(state: GatewayState, model: str, body: dict, stable: bool = True) -> int:
    """Drop messages from the middle of the chat `body` until it fits `model`'s context with room for the
    answer; how many went. A 400 where the last exchange alone does not fit. `stable`: round the cut to a
    checkpoint (False: the longest tail that fits, which moves every turn)."""
    window = await model_window(state, model)
    if window is None:
        return 0
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    reserve = limit if isinstance(limit, int) else min(ANSWER_RESERVE, window // 4)
    budget = window - reserve
    if budget <= 0 or byte_bound(body) <= budget:  # the first: the model refuses it, as it would anyway
        return 0
    messages = body["messages"]
    lead = 0
    while lead < len(messages) and messages[lead].get("role") in _LEADING:
        lead += 1
    task = lead + 1 if lead < len(messages) and messages[lead].get("role") == "user" else lead

    def kept(head: int, cut: int) -> dict:
        return {**body, "messages": messages[:head] + messages[cut:]}

    async def fits(head: int, cut: int) -> bool:
        candidate = kept(head, cut)
        if byte_bound(candidate) <= budget:
            return True
        counted = await count_on_model(state, model, candidate)
        return counted.counted_by is not None and counted.tokens <= budget

    if await fits(len(messages), len(messages)):
        return 0
    for head in dict.fromkeys((task, lead)):  # keep the task if that can fit, else let it go too
        # After the task, a tail may open with any message but a tool result; without it, with a user
        # message, as chat templates expect the first message after the instructions to be.
        opens = ("user",) if head < task else ("user", "assistant")
        cuts = [i for i in range(head, len(messages)) if messages[i].get("role") in opens]
        if not cuts or not await fits(head, cuts[-1]):
            continue
        low, high = 0, len(cuts) - 1  # the longest tail that fits: fitting only gets easier as it shortens
        while low < high:
            middle = (low + high) // 2
            if await fits(head, cuts[middle]):
                high = middle
            else:
                low = middle + 1
        cut = cuts[low]
        if stable:
            stride = int(budget * BYTES_PER_TOKEN * STRIDE_SHARE)
            cut = next((mark for mark in checkpoints(messages, head, cuts, stride) if mark >= cut), cut)
        body["messages"] = kept(head, cut)["messages"]
        return cut - head
    raise bad_request(f"the turn's last exchange does not fit the context of {model!r} ({window} tokens, {reserve} of "
                      "them kept for the answer), even with every earlier item dropped", "input",
                      "context_length_exceeded")
