"""Fixtures for the gateway tests: two fake upstream processes per session (reset around each test; the
first alone as `upstream`), the embedded default's gateway per module (`embedded`), the per-test
PostgreSQL databases of the storage tests, a webhook receiver, and an event loop backend for async
tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.serving import serve_in_thread
from tests.gateway.embedded_default import embedded_config
from tests.gateway.harness import Gateway, Receiver, running_gateway
from tests.gateway.upstream import UpstreamProcess

# The storage tests' PostgreSQL fixtures (per-test databases copied from a migrated template).
from tests.storage.conftest import pg_admin, pg_migrated_template, pg_migrated_url  # noqa: F401


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The gateway's outcome database on each backend: a SQLite file, or a migrated PostgreSQL database."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_migrated_url")
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture(scope="session")
def upstream_processes() -> Iterator[tuple[UpstreamProcess, UpstreamProcess]]:
    a = UpstreamProcess("a")
    try:
        b = UpstreamProcess("b")
    except BaseException:
        a.close()
        raise
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def upstreams(upstream_processes: tuple[UpstreamProcess, UpstreamProcess]) -> Iterator[
        tuple[UpstreamProcess, UpstreamProcess]]:
    """Both upstreams, healthy and with zeroed counters for this test."""
    for upstream in upstream_processes:
        upstream.reset()
    yield upstream_processes
    for upstream in upstream_processes:
        upstream.reset()


@pytest.fixture
def upstream(upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> UpstreamProcess:
    """The first upstream (`a`) alone, healthy and with zeroed counters, for tests that need one."""
    return upstreams[0]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    """The embedded default's gateway (tests/gateway/embedded_default.py) and its root, which holds the two
    tiny models it builds on its first start."""
    root = tmp_path_factory.mktemp("embedded")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("OPENAI_API_KEY", raising=False)  # the API model joins only with its key
        raw = embedded_config(root)
        assert not (root / "models").exists()
        with running_gateway(raw) as gateway:
            yield gateway, root


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def third_upstream() -> Iterator[UpstreamProcess]:
    """A third upstream (`c`) for the verify tests: pick, verifier, escalation."""
    c = UpstreamProcess("c")
    yield c
    c.close()


@pytest.fixture
def trio(upstreams: tuple[UpstreamProcess, UpstreamProcess],
         third_upstream: UpstreamProcess) -> Iterator[tuple[UpstreamProcess, UpstreamProcess, UpstreamProcess]]:
    third_upstream.reset()
    yield upstreams[0], upstreams[1], third_upstream
    third_upstream.reset()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    """A webhook receiver on a real socket, and its URL."""
    hook = Receiver()
    with serve_in_thread(hook.app()) as url:
        yield hook, url + "/hook"
