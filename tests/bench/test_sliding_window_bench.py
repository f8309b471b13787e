"""bench/sliding_window.py on a few long requests at a high rate: releasing slid-out blocks admits them
all at once where keeping every block preempts and queues them."""

from __future__ import annotations

from bench.sliding_window import make_requests, run


def test_releasing_slid_out_blocks_serves_long_requests_sooner() -> None:
    requests = make_requests(40, 20.0, seed=0)  # ~720k prompt tokens at once: past the 448k the KV holds
    kept, released = run(requests, release=False), run(requests, release=True)
    assert kept["completed"] == released["completed"] == 40
    assert released["preemptions"] < kept["preemptions"]
    assert released["latency_avg_s"] < kept["latency_avg_s"]
