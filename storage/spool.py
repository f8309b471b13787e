"""An append-only JSON-lines spool on disk, replayed in chunks; holds rows the memory buffer can't.

Appends go to `path`. Replay renames `path` to `path.replaying` and reads it chunk by chunk; a chunk
is committed only after the database took it, so a crash or outage mid-replay re-sends at most one
chunk (the writer's inserts are idempotent). Spool files left by a previous process are replayed too.
"""

from __future__ import annotations

import threading
from pathlib import Path


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.replay_path = path.with_name(path.name + ".replaying")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._offset = 0  # bytes of replay_path already committed
        self._chunk_end = 0
        self._chunk_lines = 0
        self.pending = _count_lines(self.path) + _count_lines(self.replay_path)

    def append(self, lines: list[str]) -> None:
        if not lines:
            return
        data = "".join(line + "\n" for line in lines)
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(data)
            self.pending += len(lines)

    def read_chunk(self, max_lines: int) -> list[str]:
        """The next uncommitted lines (possibly the same ones again if the last chunk wasn't committed)."""
        with self._lock:
            if not self.replay_path.exists():
                if not self.path.exists():
                    self.pending = 0
                    return []
                self.path.rename(self.replay_path)
                self._offset = 0
            lines: list[str] = []
            with self.replay_path.open("rb") as f:
                f.seek(self._offset)
                while len(lines) < max_lines:
                    raw = f.readline()
                    if not raw:
                        break
                    if raw.strip():
                        lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
                self._chunk_end = f.tell()
                at_end = not f.readline()
            self._chunk_lines = len(lines)
            if not lines and at_end:
                self._finish_replay_file()
            return lines

    def commit_chunk(self) -> None:
        """The last chunk read is in the database: never replay it again."""
        with self._lock:
            self._offset = self._chunk_end
            self.pending = max(0, self.pending - self._chunk_lines)
            self._chunk_lines = 0
            if self._offset >= self.replay_path.stat().st_size:
                self._finish_replay_file()

    def _finish_replay_file(self) -> None:
        self.replay_path.unlink(missing_ok=True)
        self._offset = 0
        self._chunk_end = 0
