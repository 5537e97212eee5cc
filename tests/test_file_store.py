"""The file store through a running server: live reload, last good version, lifecycle."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from tests.helpers import ServerProcess, check_request, policy_yaml, serving, tenant_yaml, wait_for

ALLOW_ADMIN = policy_yaml("p", "shop", "  rules:\n  - to:\n    - operation: {paths: [/admin]}")
ALLOW_PUBLIC = policy_yaml("p", "shop", "  rules:\n  - to:\n    - operation: {paths: [/public]}")


def decision(server: ServerProcess, path: str) -> str:
    response = server.check(check_request(host="shop.test", path=path))
    return str(json_format.MessageToDict(response.dynamic_metadata)["decision"])


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    (tmp_path / "tenant.yaml").write_text(tenant_yaml("shop", match="{hosts: [shop.test]}"))
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_ADMIN)
    with serving(["--policies", str(tmp_path), "--poll-interval", "0.1"]) as server:
        yield server, policy


def test_change_is_served_without_restart(shop: tuple[ServerProcess, Path]) -> None:
    """Rewriting a policy file changes decisions while the server keeps running."""
    server, policy = shop
    assert decision(server, "/admin") == "allow"
    policy.write_text(ALLOW_PUBLIC)
    wait_for(lambda: decision(server, "/public") == "allow", 10, what="reload")
    assert decision(server, "/admin") == "deny"


@pytest.mark.parametrize(
    ("broken", "expect"),
    [
        ("spec: [unclosed\n", "invalid YAML"),
        (ALLOW_PUBLIC.replace("paths:", "pathz:"), "pathz"),
        (ALLOW_PUBLIC.replace("rules:", "action: CUSTOM\n  rules:"), "CUSTOM"),
    ],
    ids=["yaml", "unknown-field", "custom"],
)
def test_broken_file_keeps_last_good_version(
    shop: tuple[ServerProcess, Path], broken: str, expect: str
) -> None:
    """A file that fails to parse or compile is logged with its place; the old rules serve."""
    server, policy = shop
    policy.write_text(broken)
    wait_for(lambda: expect in server.logs(), 10, what="rejection in the logs")
    assert f"{policy}:" in server.logs()
    assert decision(server, "/admin") == "allow"
    assert decision(server, "/public") == "deny"


def test_deleted_tenant_is_unknown(shop: tuple[ServerProcess, Path]) -> None:
    """Removing a tenant's files removes the tenant: its requests are denied as unknown."""
    server, policy = shop
    policy.unlink()
    (policy.parent / "tenant.yaml").unlink()
    wait_for(lambda: decision(server, "/admin") == "deny", 10, what="tenant removal")
    meta = json_format.MessageToDict(server.check(check_request(host="shop.test")).dynamic_metadata)
    assert meta["reason"] == "tenant_unknown"


def test_sigterm_drains_and_exits_cleanly(tmp_path: Path) -> None:
    """SIGTERM drains (health NOT_SERVING, in-flight calls finish) and the process exits 0."""
    (tmp_path / "t.yaml").write_text(tenant_yaml("shop"))
    server = ServerProcess(["--policies", str(tmp_path), "--grace-period", "2"])
    try:
        server.wait_serving()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=15) == 0
        assert '"draining"' in server.logs()
    finally:
        server.stop()
