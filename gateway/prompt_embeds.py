"""A completion's `prompt_embeds` as the gateway counts it, without torch: each payload's rows read from the
tensor's header, for the prompt's size that limits, ranking and billing estimate (a row a token, as the
engine's usage counts them). A `torch.save` file is a zip whose first entry is the pickle describing the
tensor (`_rebuild_tensor_v2(storage, offset, size, stride, ...)`): only the base64 of its first few KiB is
decoded, and the pickle is read by an unpickler that builds nothing (each global a stub that records its
arguments, any global but torch's tensor rebuilders refused). What the engine checks (dtype, hidden size,
values) stays the engine's: a payload whose header cannot be read is a 400 here already."""

from __future__ import annotations

import base64
import binascii
import io
import pickle
import struct
from typing import Any

from engine.server.errors import bad_request

_HEAD_CHARS = 8 << 10  # base64 of the first 6 KiB: a zip entry header and a tensor's pickle (a few hundred bytes)
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then the name's and the extra field's lengths
_REBUILDERS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")}
_ALLOWED_MODULES = {"torch", "collections"}  # storage types (torch.FloatStorage) and OrderedDict


class _Rebuilt:
    """What a tensor rebuilder was called with: its size is the third argument."""

    def __init__(self, *args: Any) -> None:
        self.args = args


class _Stub:
    def __init__(self, *args: Any) -> None:
        self.args = args


class _HeaderReader(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _REBUILDERS:
            return _Rebuilt
        if module in _ALLOWED_MODULES:
            return _Stub
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a tensor")

    def persistent_load(self, pid: Any) -> Any:
        return _Stub(pid)


def payload_rows(payload: str, param: str = "prompt_embeds") -> int:
    """The rows of one base64 payload: [n, hidden] or a batch of one [1, n, hidden]."""
    head = payload[:_HEAD_CHARS]
    try:
        raw = base64.b64decode(head[: len(head) // 4 * 4], validate=True)
        signature, name_len, extra_len = _LOCAL_HEADER.unpack_from(raw)
        if signature != b"PK\x03\x04":
            raise ValueError("not a zip")
        tensor = _HeaderReader(io.BytesIO(raw[_LOCAL_HEADER.size + name_len + extra_len:])).load()
        size = tuple(tensor.args[2])
    except (binascii.Error, ValueError, struct.error, pickle.UnpicklingError, EOFError, AttributeError, IndexError,
            TypeError):
        raise bad_request(f"'{param}' must be base64 of a tensor saved with torch.save", param,
                          "invalid_value") from None
    if len(size) == 3 and size[0] == 1:
        size = size[1:]
    if len(size) != 2 or not all(isinstance(n, int) for n in size):
        raise bad_request(f"'{param}' must be a tensor of shape [num_tokens, hidden_size], not {list(size)}", param,
                          "invalid_value")
    return size[0]


def prompt_embeds_rows(value: Any) -> int:
    """All rows of a request's `prompt_embeds` (one payload or a list of them); a 400 for anything else."""
    if isinstance(value, str) and value:
        return payload_rows(value)
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return sum(payload_rows(v, f"prompt_embeds[{i}]") for i, v in enumerate(value))
    raise bad_request("'prompt_embeds' must be a base64 string of a torch.save'd tensor, or a non-empty list of "
                      "them", "prompt_embeds", "invalid_type")
