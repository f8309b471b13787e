"""OpenAI's `metadata`, wherever a request may attach it (conversations, stored chat completions): up to
16 pairs of strings, keys up to 64 characters, values up to 512."""

from __future__ import annotations

from typing import Any

from engine.server.errors import bad_request

MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


def checked_metadata(metadata: Any) -> dict[str, str]:
    """The metadata (None: none), or a 400 naming `metadata`."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_PAIRS or not all(
            isinstance(k, str) and len(k) <= MAX_METADATA_KEY and isinstance(v, str) and len(v) <= MAX_METADATA_VALUE
            for k, v in metadata.items()):
        raise bad_request(f"'metadata' must be at most {MAX_METADATA_PAIRS} pairs of strings (keys up to "
                          f"{MAX_METADATA_KEY} characters, values up to {MAX_METADATA_VALUE})", "metadata",
                          "invalid_value")
    return metadata
