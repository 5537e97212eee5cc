"""A Redis tenant with no good version is unavailable: its requests never reach another tenant."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from extauthz.cli import main
from tests.helpers import (
    RedisServer,
    ServerProcess,
    check_request,
    policy_yaml,
    redis_cli,
    serving,
    tenant_documents,
    tenant_yaml,
    wait_for,
)

pytestmark = pytest.mark.redis

PAYMENTS = "spiffe://cluster.local/ns/payments/sa/api"
T1_FAILS_TO_COMPILE = json.dumps(
    [
        {
            "apiVersion": "extauthz.io/v1",
            "kind": "Tenant",
            "metadata": {"name": "t1"},
            "spec": {"match": {"hosts": ["a.test"]}},
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "t1"},
            "spec": {"action": "PERMIT"},
        },
    ]
)


def apply(url: str, tmp_path: Path, text: str) -> None:
    path = tmp_path / "tenant.yaml"
    path.write_text(text)
    assert main(["policy", "apply", "-f", str(path), "--redis-url", url]) == 0


def outcome(server: ServerProcess, **request: str) -> tuple[str, str, str]:
    response = server.check(check_request(**request))  # type: ignore[arg-type]
    meta = json_format.MessageToDict(response.dynamic_metadata)
    return str(meta["decision"]), str(meta["reason"]), str(meta.get("tenant", ""))


def test_tenants_that_never_loaded_are_unavailable(redis: RedisServer, tmp_path: Path) -> None:
    """At the first load, a record that fails to compile or to decode denies its own traffic
    (host or namespace) with tenant_unavailable; the catch-all never takes it over."""
    apply(redis.url, tmp_path, tenant_yaml("everything"))
    apply(redis.url, tmp_path, tenant_documents("t1", "a.test"))
    apply(redis.url, tmp_path, policy_yaml("p", "payments", "  rules:\n  - {}"))
    apply(redis.url, tmp_path, tenant_documents("t2", "b.test"))
    digest = hashlib.sha256(T1_FAILS_TO_COMPILE.encode()).hexdigest()
    current = "extauthz:{t1}:current"
    redis_cli(redis.port, "hset", current, "documents", T1_FAILS_TO_COMPILE, "digest", digest)
    redis_cli(redis.port, "hset", "extauthz:{payments}:current", "documents", "[")
    redis_cli(redis.port, "hset", "extauthz:{t2}:current", "documents", "[")
    with serving(["--redis-url", redis.url]) as server:
        assert outcome(server, host="a.test", path="/open/x") == (
            "deny",
            "tenant_unavailable",
            "t1",
        )
        assert outcome(server, host="x.test", destination_principal=PAYMENTS) == (
            "deny",
            "tenant_unavailable",
            "payments",
        )
        # undecodable: its hosts are those of the record's stored match
        assert outcome(server, host="b.test") == ("deny", "tenant_unavailable", "t2")
        assert outcome(server, host="x.test") == ("allow", "allowed", "everything")
        apply(redis.url, tmp_path, tenant_documents("t1", "a.test"))
        wait_for(
            lambda: outcome(server, host="a.test", path="/open/x")[0] == "allow",
            what="t1 served once it compiles",
        )
        # deleting an undecodable tenant ends its unavailability: its traffic routes as usual
        assert main(["policy", "delete", "t2", "--redis-url", redis.url]) == 0
        wait_for(
            lambda: outcome(server, host="b.test") == ("allow", "allowed", "everything"),
            what="t2 deleted",
        )


def test_new_tenant_that_fails_to_compile_is_unavailable(
    redis: RedisServer, tmp_path: Path
) -> None:
    """A tenant first written after the load and failing to compile holds its host: deny."""
    apply(redis.url, tmp_path, tenant_yaml("everything"))
    text = T1_FAILS_TO_COMPILE.replace("a.test", "c.test")
    digest = hashlib.sha256(text.encode()).hexdigest()
    with serving(["--redis-url", redis.url]) as server:
        assert outcome(server, host="c.test") == ("allow", "allowed", "everything")
        redis_cli(
            redis.port,
            "hset",
            "extauthz:{t1}:current",
            *("version", "1", "deleted", "0", "documents", text, "digest", digest),
        )
        redis_cli(redis.port, "publish", "extauthz:changes", "t1 1")
        wait_for(
            lambda: outcome(server, host="c.test")[1] == "tenant_unavailable",
            what="t1 unavailable",
        )
        assert outcome(server, host="c.test") == ("deny", "tenant_unavailable", "t1")
