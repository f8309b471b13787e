"""Fixtures shared across the test packages."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.storage.pg_cluster import ThrowawayPostgres, find_pg_bin

# Under pytest-xdist (`make test`) every worker gets one core's worth of threads: N workers on N cores, and
# torch's, BLAS's and OpenMP's pools (default: a thread per core) would otherwise oversubscribe the machine N
# times over, in the workers and in the gateways, engines and ranks they start (which inherit the
# environment). Pools that ask for more threads anyway (LightGBM's num_threads=2) wait passively: spinning
# for a descheduled thread cost one tiny training 14 s of CPU. Set here, before any test package imports
# torch; a value set by the caller is kept.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _variable, _value in (("OMP_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1"),
                              ("OMP_WAIT_POLICY", "PASSIVE")):
        os.environ.setdefault(_variable, _value)


@pytest.fixture
def cluster() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL server of this test's own, to stop and start: the outage tests' database."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; set PITSTOP_PG_BIN")
    pg = ThrowawayPostgres(bin_dir)
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.destroy()
