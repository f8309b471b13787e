"""The disk KV tier's index file: which block each slot of a rank's file holds (slot -> chain hash and token
ids, least recently used first), under a header that fingerprints what wrote it. A new engine on the same
folder takes the entries over only when its own fingerprint is the same (the model's files, dtypes,
kv_cache_dtype, block size, tensor-parallel rank and size, the Python whose hashes key the blocks) and the
payload's checksum holds; anything else is a reason to start empty, never an error.

The file is replaced whole (written to a temporary file, synced, then `os.replace`d), so a crash while
writing leaves the previous index."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zlib
from pathlib import Path

import numpy as np

from engine.disk_cache import DiskEntry

MAGIC = b"PITSTOP-DISK-KV-INDEX\n"
FORMAT_VERSION = 1
_SAMPLE_BYTES = 1 << 20  # of each weight file's head and tail: enough to tell checkpoints apart, cheap to read


class IndexUnusable(ValueError):
    """The index cannot be taken over (another fingerprint, a damaged file): start empty."""


def python_hash_fingerprint() -> list[int]:
    """What the chain hashes depend on: tuples of ints hash alike in every run of one Python version."""
    return [sys.version_info.major, sys.version_info.minor, sys.hash_info.width]


def model_files_digest(model_dir: Path) -> str:
    """A digest of a model folder's config and weights (each file's name, size, first and last MiB): a
    checkpoint with other weights but the same config, another seed of a tiny model say, differs."""
    digest = hashlib.sha256()
    files = [model_dir / "config.json", *sorted(model_dir.glob("*.safetensors"))]
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}\n".encode())
        with path.open("rb") as f:
            digest.update(f.read(_SAMPLE_BYTES))
            if size > 2 * _SAMPLE_BYTES:
                f.seek(size - _SAMPLE_BYTES)
                digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def normalized(fingerprint: dict) -> dict:
    """As it reads back from JSON (tuples become lists), so a comparison is exact."""
    return json.loads(json.dumps(fingerprint, sort_keys=True))


def write_index(path: Path, fingerprint: dict, entries: list[DiskEntry], block_size: int) -> None:
    """Replace the index at `path` with `entries` (least recent first), atomically."""
    n = len(entries)
    slots = np.fromiter((e.slot for e in entries), dtype=np.int64, count=n)
    hashes = np.fromiter((e.block_hash for e in entries), dtype=np.int64, count=n)
    tokens = np.array([e.token_ids for e in entries], dtype=np.int64).reshape(n, block_size)
    payload = slots.tobytes() + hashes.tobytes() + tokens.tobytes()
    header = {"version": FORMAT_VERSION, "fingerprint": normalized(fingerprint), "count": n,
              "block_size": block_size, "crc32": zlib.crc32(payload)}
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as f:
        f.write(MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    _sync_folder(path.parent)


def read_index(path: Path, fingerprint: dict, block_size: int) -> list[DiskEntry]:
    """The entries of the index at `path`, least recent first; [] when there is none. IndexUnusable says
    why one cannot be taken over."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise IndexUnusable("not a disk KV index (or a damaged one)")
    header_end = data.find(b"\n", len(MAGIC))
    if header_end < 0:
        raise IndexUnusable("its header is cut short")
    try:
        header = json.loads(data[len(MAGIC): header_end])
        count = int(header["count"])
        expected_crc = int(header["crc32"])
        version, their_fingerprint = header["version"], header["fingerprint"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexUnusable(f"its header does not read: {exc}") from None
    if version != FORMAT_VERSION:
        raise IndexUnusable(f"index format {version!r}, not {FORMAT_VERSION}")
    if their_fingerprint != normalized(fingerprint):
        changed = sorted(k for k in set(their_fingerprint) | set(fingerprint)
                         if their_fingerprint.get(k) != normalized(fingerprint).get(k))
        raise IndexUnusable(f"it was written by another configuration ({', '.join(changed)} differ)")
    payload = data[header_end + 1:]
    if len(payload) != count * 8 * (2 + block_size) or zlib.crc32(payload) != expected_crc:
        raise IndexUnusable("its entries are truncated or damaged (length or checksum)")
    slots = np.frombuffer(payload, dtype=np.int64, count=count)
    hashes = np.frombuffer(payload, dtype=np.int64, count=count, offset=8 * count)
    tokens = np.frombuffer(payload, dtype=np.int64, offset=16 * count).reshape(count, block_size)
    return [DiskEntry(s, h, tuple(row))
            for s, h, row in zip(slots.tolist(), hashes.tolist(), tokens.tolist(), strict=True)]


def _sync_folder(folder: Path) -> None:
    """The rename itself made durable (a crash right after leaves the new index, not none)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
