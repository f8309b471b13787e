"""JSON out of the servers, in the shape Starlette's JSONResponse writes it, that cannot fail on a
string an upstream sent: JSON may escape a UTF-16 surrogate alone ("\\ud83d", e.g. half of an emoji
that a JavaScript server split between two stream chunks), Python decodes it to a str that UTF-8
cannot encode, and the answer would turn into a 500. Such an answer goes out escaped, as it came."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse


def json_bytes(data: Any, allow_nan: bool = True) -> bytes:
    text = json.dumps(data, ensure_ascii=False, allow_nan=allow_nan, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # rare: only then escape every non-ASCII character
        return json.dumps(data, ensure_ascii=True, allow_nan=allow_nan, separators=(",", ":")).encode("ascii")


class SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json_bytes(content, allow_nan=False)  # as JSONResponse: NaN is no JSON
