"""Ports a test picks for a server it starts later (a `pitstop serve` or `engine serve` process, a throwaway
PostgreSQL or Redis), or for an address where nothing must listen.

A port found free by binding port 0 is free only until something else binds it: the kernel hands the
same ephemeral ports (32768 and up) to every bind to port 0, and under pytest-xdist the other workers'
servers and clients take them all the time, during the seconds a subprocess needs to import and listen.
So ports come from below the ephemeral range, which the kernel never hands out, and each xdist worker has
its own block there: no other worker, and no automatic bind, can take a port between its pick and its use."""

from __future__ import annotations

import os
import random
import socket

LOW, HIGH = 10_000, 32_768  # [LOW, HIGH): below Linux's default ip_local_port_range (32768-60999)


def _worker_block() -> range:
    """This process's block: the whole span outside xdist, else a 1/N share of it per worker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = (HIGH - LOW) // max(count, 1)
    start = LOW + (index % max(count, 1)) * size
    return range(start, start + size)


_block = _worker_block()
# Walked from a random place, so two test runs on one machine (developers share machines) seldom meet,
# and a port comes round again only after the whole block: long after its last user has exited.
_cursor = random.randrange(len(_block))


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, and that no other worker will be given."""
    global _cursor
    for _ in range(len(_block)):
        port = _block[_cursor % len(_block)]
        _cursor += 1
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:  # a service of the machine's, or a server of this run that still holds it
                continue
            return port
    raise RuntimeError(f"no free port in {_block.start}-{_block.stop - 1}")
