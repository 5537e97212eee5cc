"""Fixtures shared by the suite. Every server a test starts binds 127.0.0.1 and stops after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import (
    REDIS_HINT,
    REPO,
    ServerProcess,
    have_redis_server,
    redis_fixture,
    require,
    serving,
)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``redis`` skip without redis-server (and fail for it with CI=true)."""
    if item.get_closest_marker("redis") is not None:
        require(have_redis_server(), REDIS_HINT)


# A throwaway redis-server of each test's own (it may stop and restart it).
redis = redis_fixture("function")


@pytest.fixture(scope="module")
def example_server() -> Iterator[ServerProcess]:
    """extauthz serving the repository's example policies."""
    with serving(["--policies", str(REPO / "policies")]) as server:
        yield server
