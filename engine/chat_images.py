"""A chat's image parts: OpenAI's `{"type": "image_url", "image_url": {"url": ..., "detail": ...}}` content parts,
checked where the request is parsed, and the messages as the chat template sees them, each image a
`{"type": "image"}` part (as transformers' processors hand their templates), which a vision model's template
renders as its image token. A message without images keeps its text parts joined into a string."""

from __future__ import annotations

from typing import Any

from engine.server.errors import bad_request

DETAILS = ("auto", "low", "high")  # accepted; a LLaVA model sees every image at its processor's one size


def content_parts(parts: list[Any], param: str) -> str | list[dict]:
    """Text parts joined into a string; with an image among them, the checked parts in order."""
    checked: list[dict] = []
    for i, part in enumerate(parts):
        where = f"{param}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            checked.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            checked.append({"type": "image_url", "image_url": {"url": _image_url(part.get("image_url"), where)}})
        else:
            raise bad_request(f"'{where}' must be a text part or an image_url part", where, "unsupported")
    if all(part["type"] == "text" for part in checked):
        return "\n".join(part["text"] for part in checked)
    return checked


def _image_url(value: Any, where: str) -> str:
    if isinstance(value, str):  # a bare string, as some clients send
        return value
    if not isinstance(value, dict) or not isinstance(value.get("url"), str):
        raise bad_request(f"'{where}.image_url' must be {{\"url\": string}}", f"{where}.image_url", "invalid_type")
    if value.get("detail") is not None and value["detail"] not in DETAILS:
        raise bad_request(f"'{where}.image_url.detail' must be one of {', '.join(DETAILS)}",
                          f"{where}.image_url.detail", "invalid_value")
    return value["url"]


def image_urls(messages: list[dict]) -> list[tuple[str, str]]:
    """(url, its parameter path) of every image part, in the order the template renders them."""
    return [(part["image_url"]["url"], f"messages[{i}].content[{j}].image_url")
            for i, message in enumerate(messages) if isinstance(message.get("content"), list)
            for j, part in enumerate(message["content"]) if part["type"] == "image_url"]


def template_messages(messages: list[dict]) -> list[dict]:
    """The messages with each image part as `{"type": "image"}`."""
    return [message if not isinstance(message.get("content"), list) else
            {**message, "content": [{"type": "image"} if part["type"] == "image_url" else part
                                    for part in message["content"]]} for message in messages]
