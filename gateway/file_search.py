"""The Responses API's `file_search` tool, run by the gateway: the turn's new user message is the query,
the tool's vector stores are searched (gateway/vector_stores.py) before the model is called, and the
best chunks go to the model in its system message, each with its file's name. The Response then opens
with a `file_search_call` item (its `queries`; its `results` too when `include` asks for
`file_search_call.results`), streamed as OpenAI streams one. Where the answer names a file the search
gave it (the model is asked to), the mention carries a `file_citation` annotation, as OpenAI's do.

OpenAI's models choose whether to search and write their own queries; here every turn that offers the
tool and brings a user message searches with that message as the query (`tool_choice: "none"` does
not search), so a model without tool training gets the files' text all the same."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.server.errors import bad_request
from gateway.vector_search import Filter, Ranking, filter_of, max_results_of, ranking_of

RESULTS_INCLUDE = "file_search_call.results"
DEFAULT_RESULTS = 10
_TOOL_FIELDS = {"type", "vector_store_ids", "max_num_results", "ranking_options", "filters"}


@dataclass(frozen=True)
class FileSearch:
    store_ids: list[str]
    limit: int
    ranking: Ranking
    filters: Filter | None
    include_results: bool


def file_search_of(raw: dict) -> FileSearch | None:
    """The request's file_search tool, checked (a 400 naming the field otherwise); None when it offers
    none, or `tool_choice` is "none"."""
    tools = raw.get("tools")
    if not isinstance(tools, list):
        return None
    found = [(i, tool) for i, tool in enumerate(tools) if isinstance(tool, dict) and tool.get("type") == "file_search"]
    if not found:
        return None
    if len(found) > 1:
        raise bad_request("at most one file_search tool", f"tools[{found[1][0]}]", "invalid_value")
    i, tool = found[0]
    where = f"tools[{i}]"
    unknown = sorted(set(tool) - _TOOL_FIELDS)
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}", f"{where}.{unknown[0]}", "unknown_field")
    store_ids = tool.get("vector_store_ids")
    if not isinstance(store_ids, list) or not store_ids or not all(isinstance(s, str) for s in store_ids):
        raise bad_request(f"'{where}.vector_store_ids' must list the vector stores to search",
                          f"{where}.vector_store_ids", "invalid_value")
    search = FileSearch(list(dict.fromkeys(store_ids)),
                        max_results_of(tool.get("max_num_results"), f"{where}.max_num_results", DEFAULT_RESULTS),
                        ranking_of(tool.get("ranking_options"), f"{where}.ranking_options"),
                        filter_of(tool.get("filters"), f"{where}.filters"),
                        RESULTS_INCLUDE in (raw.get("include") or ()))
    return None if raw.get("tool_choice") == "none" else search


def query_of(raw: dict) -> str | None:
    """The text of the last user message in the request's own input (not the chain it continues)."""
    items = raw.get("input")
    if isinstance(items, str):
        return items.strip() or None
    for item in reversed(items if isinstance(items, list) else []):
        if isinstance(item, dict) and item.get("type", "message") == "message" and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict)
                                   and isinstance(p.get("text"), str))
            return content.strip() or None if isinstance(content, str) else None
    return None


def context_text(query: str, results: list[dict]) -> str:
    """What the model is told: the excerpts found, each under its file's name."""
    if not results:
        return f'Searching the user\'s files for "{query}" found nothing relevant.'
    excerpts = "\n\n".join(
        f'<excerpt file="{r["filename"] or r["file_id"]}" score="{r["score"]:.3f}">\n'
        f'{r["content"][0]["text"]}\n</excerpt>' for r in results)
    return (f'Excerpts from the user\'s files, found by searching them for "{query}". Answer from them where '
            f"they help, and name the files you use.\n\n{excerpts}")


def with_context(chat: dict, text: str) -> None:
    """The search's excerpts in the chat's leading system message (made when it has none): every chat
    template takes one there."""
    messages = chat["messages"]
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}
    else:
        messages.insert(0, {"role": "system", "content": text})


def call_item(response_id: str, query: str, results: list[dict] | None) -> dict:
    """The Response's `file_search_call` item."""
    return {"type": "file_search_call", "id": "fs_" + response_id.removeprefix("resp_"), "status": "completed",
            "queries": [query],
            "results": None if results is None else [
                {"file_id": r["file_id"], "filename": r["filename"], "score": r["score"],
                 "text": r["content"][0]["text"], "attributes": r["attributes"]} for r in results]}


def cited_files(results: list[dict]) -> list[tuple[str, str]]:
    """(file id, filename) of the files the excerpts came from, once each, in the order found."""
    return list(dict.fromkeys((r["file_id"], r["filename"]) for r in results if r["filename"]))


def citations(text: str, files: Sequence[tuple[str, str]]) -> list[dict]:
    """A `file_citation` annotation at the end of each mention of a searched file's name in the answer
    (longer names first, so `notes.md` is not also cited as `s.md`), in the text's order."""
    claimed: list[tuple[int, int]] = []
    found = []
    for file_id, filename in sorted(files, key=lambda f: -len(f[1])):
        start = text.find(filename)
        while start >= 0:
            end = start + len(filename)
            if not any(start < e and s < end for s, e in claimed):
                claimed.append((start, end))
                found.append({"type": "file_citation", "file_id": file_id, "filename": filename, "index": end})
            start = text.find(filename, end)
    return sorted(found, key=lambda annotation: annotation["index"])


def without_file_search(tools: Any) -> Any:
    return [t for t in tools if not (isinstance(t, dict) and t.get("type") == "file_search")] \
        if isinstance(tools, list) else tools
