"""Fixtures shared by the suite. Every server a test starts binds 127.0.0.1 and stops after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import (
    REDIS_HINT,
    REPO,
    RedisServer,
    ServerProcess,
    have_redis_server,
    require,
    serving,
)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``redis`` skip without redis-server (and fail for it with CI=true)."""
    if item.get_closest_marker("redis") is not None:
        require(have_redis_server(), REDIS_HINT)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A throwaway redis-server of this test's own (it may stop and restart it)."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def example_server() -> Iterator[ServerProcess]:
    """extauthz serving the repository's example policies."""
    with serving(["--policies", str(REPO / "policies")]) as server:
        yield server
