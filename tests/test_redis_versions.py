"""A served extauthz never goes back to an older version of a tenant held from Redis."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from google.protobuf import json_format
from google.rpc import code_pb2

from extauthz.cli import main
from tests.helpers import (
    RedisServer,
    ServerProcess,
    check_request,
    redis_cli,
    serving,
    tenant_documents,
    wait_for,
)

pytestmark = pytest.mark.redis

OK = code_pb2.OK
DENIED = code_pb2.PERMISSION_DENIED
CURRENT = "extauthz:{t1}:current"
HISTORY = "extauthz:{t1}:history"


def cli(args: list[str]) -> None:
    assert main(args) == 0


def apply(url: str, tmp_path: Path, paths: list[str]) -> None:
    path = tmp_path / "tenant.yaml"
    path.write_text(tenant_documents("t1", "a.test", paths))
    cli(["policy", "apply", "-f", str(path), "--redis-url", url])


def decide(server: ServerProcess, path: str) -> int:
    return int(server.check(check_request(host="a.test", path=path)).status.code)


def reason(server: ServerProcess, path: str) -> str:
    response = server.check(check_request(host="a.test", path=path))
    return str(json_format.MessageToDict(response.dynamic_metadata)["reason"])


def refused(server: ServerProcess, version: int) -> bool:
    logs = server.logs()
    return "refusing an older tenant version" in logs and f'"version": {version}' in logs


def test_restored_redis_with_older_versions_does_not_roll_back(
    redis: RedisServer, tmp_path: Path
) -> None:
    """Redis restarted empty and re-filled with older content: the newer version keeps deciding."""
    apply(redis.url, tmp_path, ["/old"])
    apply(redis.url, tmp_path, ["/new"])  # version 2
    with serving(["--redis-url", redis.url]) as server:
        assert (decide(server, "/new"), decide(server, "/old")) == (OK, DENIED)
        redis.stop()  # no persistence: it comes back empty
        redis.start()
        apply(redis.url, tmp_path, ["/old"])  # the older content again, as version 1
        wait_for(lambda: refused(server, 1), what="version 1 refused")
        assert (decide(server, "/new"), decide(server, "/old")) == (OK, DENIED)
        apply(redis.url, tmp_path, ["/second"])  # version 2: the one held, not newer
        apply(redis.url, tmp_path, ["/third"])  # version 3: newer, applied
        wait_for(lambda: decide(server, "/third") == OK, what="version 3 applied")
        assert (decide(server, "/new"), decide(server, "/second")) == (DENIED, DENIED)


def test_deleted_tenant_rewritten_at_an_older_version_stays_deleted(
    redis: RedisServer, tmp_path: Path
) -> None:
    """A tombstone's version holds: the record put back at its earlier version is refused."""
    apply(redis.url, tmp_path, ["/old"])
    apply(redis.url, tmp_path, ["/new"])  # version 2
    with serving(["--redis-url", redis.url]) as server:
        assert decide(server, "/new") == OK
        cli(["policy", "delete", "t1", "--redis-url", redis.url])  # tombstone, version 3
        wait_for(lambda: decide(server, "/new") == DENIED, what="tenant deleted")
        # What a replica that missed the delete, or an older backup, would hold: version 2.
        documents = redis_cli(redis.port, "HGET", HISTORY, "2").rstrip("\n")
        digest = hashlib.sha256(documents.encode()).hexdigest()
        redis_cli(
            redis.port,
            "HSET", CURRENT, "version", "2", "deleted", "0",
            "documents", documents, "digest", digest,
        )  # fmt: skip
        redis_cli(redis.port, "PUBLISH", "extauthz:changes", "t1 2")
        wait_for(lambda: refused(server, 2), what="version 2 refused")
        assert decide(server, "/new") == DENIED
        assert reason(server, "/new") == "tenant_unknown"  # deleted, not held unavailable
        # A restart is the explicit way back: it forgets the versions it had applied.
        with serving(["--redis-url", redis.url]) as fresh:
            assert decide(fresh, "/new") == OK


def test_rollback_is_a_newer_version_and_applies(redis: RedisServer, tmp_path: Path) -> None:
    """``policy rollback`` writes the earlier documents as the next version: it is served."""
    apply(redis.url, tmp_path, ["/old"])
    apply(redis.url, tmp_path, ["/new"])
    with serving(["--redis-url", redis.url]) as server:
        assert decide(server, "/old") == DENIED
        cli(["policy", "rollback", "t1", "--to", "1", "--redis-url", redis.url])
        wait_for(lambda: decide(server, "/old") == OK, what="rollback applied")
        assert "refusing an older tenant version" not in server.logs()
