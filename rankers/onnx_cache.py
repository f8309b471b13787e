"""A disk cache of the serialized ONNX graphs rankers/onnx_bert.py builds, so that a start loads the
bytes straight into ONNX Runtime instead of importing `onnx` (about a second) and building the graph.

A file is named by a key over everything that changes the graph: the weights it is built from (names,
dtypes, shapes, bytes; the word table stays outside the graph and the key), the layer count, int8, the
builder's own source, and the onnx and onnxruntime versions. Its body is guarded by a sha256: a missing,
unreadable, truncated or corrupt file, or one holding another key, is rebuilt and written again, never
used. Writes go to a temporary file in the same folder renamed into place, so processes starting at once
never read half a file (each may build; the last rename wins, with the same bytes). The folder keeps the
`KEEP` most recently used graphs (training and evaluation build many). Where: `$PITSTOP_ONNX_CACHE`, else
var/rankers/onnx/ under the repository (ignored by git, as the distilled router encoder beside it);
`PITSTOP_ONNX_CACHE=off` turns it off."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

MAGIC = b"pitstop-onnx/1\n"
KEEP = 8  # graphs kept: the ranker's and the in-process encoder's, and a few more for training runs
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "var" / "rankers" / "onnx"
BUILDER = Path(__file__).resolve().with_name("onnx_bert.py")
log = logging.getLogger("pitstop.rankers")


def cache_dir() -> Path | None:
    setting = os.environ.get("PITSTOP_ONNX_CACHE")
    if setting is None:
        return DEFAULT_DIR
    return None if setting.strip().lower() in ("", "off", "0", "none") else Path(setting)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version(package)  # the installed distribution's metadata: `onnx` itself is not imported
    except PackageNotFoundError:
        return "absent"


def graph_key(weights: Mapping[str, np.ndarray], layers: int, int8: bool, skip: str = "") -> str:
    digest = hashlib.sha256()
    header = {"layers": layers, "int8": int8, "onnx": _version("onnx"), "onnxruntime": _version("onnxruntime"),
              "builder": hashlib.sha256(BUILDER.read_bytes()).hexdigest()}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name in sorted(weights):
        if name == skip:
            continue
        array = np.ascontiguousarray(weights[name])
        digest.update(f"\n{name}:{array.dtype.str}:{array.shape}\n".encode())
        digest.update(memoryview(array.reshape(-1)).cast("B"))
    return digest.hexdigest()


def _read(path: Path, key: str) -> tuple[bytes, list[str]] | None:
    """The graph and its op types stored at `path` under `key`, or None where the file is not sound."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    start = len(MAGIC) + 32
    if not data.startswith(MAGIC) or len(data) < start + 4:
        return None
    body = memoryview(data)[start:]
    if hashlib.sha256(body).digest() != data[len(MAGIC):start]:
        return None
    size = struct.unpack("<I", body[:4])[0]
    try:
        header = json.loads(bytes(body[4:4 + size]))
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("key") != key:
        return None
    return bytes(body[4 + size:]), list(header.get("op_types", []))


def _write(folder: Path, key: str, graph: bytes, op_types: list[str]) -> None:
    header = json.dumps({"key": key, "op_types": sorted(op_types)}).encode()
    body = struct.pack("<I", len(header)) + header + graph
    folder.mkdir(parents=True, exist_ok=True)
    # A unique name per writer (processes and threads), renamed into place: readers see all or nothing.
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key[:16]}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(MAGIC + hashlib.sha256(body).digest() + body)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep other users' gateways on this checkout rebuilding
        os.replace(tmp, folder / f"{key}.onnx")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _prune(folder)


def _prune(folder: Path) -> None:
    entries = []
    for path in folder.glob("*.onnx"):
        try:
            entries.append((path.stat().st_mtime_ns, path))
        except OSError:  # removed by another process meanwhile
            continue
    for _, path in sorted(entries, reverse=True)[KEEP:]:
        path.unlink(missing_ok=True)


def cached_graph(key: str, build: Callable[[], tuple[bytes, list[str]]]) -> tuple[bytes, list[str], bool]:
    """(serialized graph, its op types, whether it came from the cache): the cached file under `key`
    where it is sound, else `build()`'s, stored for the next start. A cache that cannot be written is
    logged and skipped: the graph is still served."""
    folder = cache_dir()
    if folder is not None:
        path = folder / f"{key}.onnx"
        found = _read(path, key)
        if found is not None:
            with contextlib.suppress(OSError):
                os.utime(path)  # most recently used: pruning keeps it
            return *found, True
        if path.exists():
            log.warning("ONNX graph cache %s is stale or corrupt: rebuilding it", path)
    graph, op_types = build()
    if folder is not None:
        try:
            _write(folder, key, graph, op_types)
        except OSError as error:
            log.warning("ONNX graph cache %s not written (%s): the next start builds the graph again", folder, error)
    return graph, op_types, False


def drop(key: str) -> None:
    """Forget `key`'s file (ONNX Runtime refused it): the next `cached_graph` builds and stores it again."""
    folder = cache_dir()
    if folder is not None:
        (folder / f"{key}.onnx").unlink(missing_ok=True)
