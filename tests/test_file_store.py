"""The file store through a running server: live reload, last good version, lifecycle."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from extauthz.store.files import policy_files, read_directory
from tests.helpers import (
    REPO,
    ServerProcess,
    check_request,
    policy_yaml,
    serving,
    tenant_yaml,
    wait_for,
)

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


# -- a tenant is loaded whole or not at all -------------------------------------------------

DENY_ADMIN = policy_yaml(
    "no-admin", "shop", "  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [/admin]}"
)
DENY_SECRET = policy_yaml(
    "no-secret", "shop", "  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [/admin/x]}"
)
BROKEN_YAML = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nspec: [unclosed\n"
CATCH_ALL = tenant_yaml("everything")  # no policies: allows everything it decides


def meta_of(server: ServerProcess, **request: str) -> dict[str, str]:
    response = server.check(check_request(**request))  # type: ignore[arg-type]
    return {k: str(v) for k, v in json_format.MessageToDict(response.dynamic_metadata).items()}


def test_yaml_error_at_first_scan_is_not_ready(tmp_path: Path) -> None:
    """A file that does not parse at start (it may hold a DENY): not ready, never served in part."""
    (tmp_path / "tenant.yaml").write_text(tenant_yaml("shop", match="{hosts: [shop.test]}"))
    (tmp_path / "policy.yaml").write_text(ALLOW_ADMIN)
    deny = tmp_path / "deny.yaml"
    deny.write_text(DENY_ADMIN.replace("rules:", "rules: [unclosed"))
    server = ServerProcess(["--policies", str(tmp_path), "--poll-interval", "0.1"])
    try:
        wait_for(lambda: "not ready until it does" in server.logs(), 10, what="parse error")
        assert not server.serving()
        assert meta_of(server, host="shop.test", path="/admin")["reason"] == "not_ready"
        deny.write_text(DENY_ADMIN)
        server.wait_serving()
        assert meta_of(server, host="shop.test", path="/admin")["reason"] == "policy_denied"
    finally:
        server.stop()


def test_yaml_error_on_reload_holds_every_tenant(shop: tuple[ServerProcess, Path]) -> None:
    """While a file does not parse, a change to another file is not applied either."""
    server, policy = shop
    broken = policy.parent / "broken.yaml"
    broken.write_text(BROKEN_YAML)
    wait_for(lambda: "no change applied" in server.logs(), 10, what="parse error")
    policy.write_text(ALLOW_PUBLIC)
    wait_for(lambda: server.logs().count("no change applied") >= 2, 10, what="change held")
    assert decision(server, "/admin") == "allow"
    assert decision(server, "/public") == "deny"
    broken.unlink()
    wait_for(lambda: decision(server, "/public") == "allow", 10, what="change applied")
    assert decision(server, "/admin") == "deny"


def test_compile_error_on_reload_keeps_the_whole_tenant(shop: tuple[ServerProcess, Path]) -> None:
    """One of a tenant's files failing to compile keeps every file of its last good version."""
    server, policy = shop
    deny = policy.parent / "deny.yaml"
    deny.write_text(DENY_SECRET)
    wait_for(lambda: decision(server, "/admin/x") == "deny", 10, what="DENY served")
    deny.write_text(DENY_SECRET.replace("action: DENY", "action: CUSTOM"))
    wait_for(lambda: server.logs().count("CUSTOM") >= 1, 10, what="compile error")
    policy.write_text(ALLOW_PUBLIC)
    wait_for(lambda: server.logs().count("CUSTOM") >= 2, 10, what="second compile error")
    assert decision(server, "/admin") == "allow"
    assert decision(server, "/admin/x") == "deny"
    assert decision(server, "/public") == "deny"


def test_first_load_compile_error_is_unavailable_despite_a_catch_all(tmp_path: Path) -> None:
    """A tenant that never compiled denies its own traffic (tenant_unavailable), even with {}."""
    (tmp_path / "everything.yaml").write_text(CATCH_ALL)
    (tmp_path / "shop.yaml").write_text(
        tenant_yaml("shop", match="{hosts: [shop.test]}") + "---\n" + DENY_ADMIN
    )
    broken = tmp_path / "shop-policy.yaml"
    broken.write_text(ALLOW_PUBLIC.replace("paths:", "pathz:"))
    payments_policy = DENY_ADMIN.replace("namespace: shop", "namespace: payments")
    (tmp_path / "payments.yaml").write_text(payments_policy.replace("DENY", "PERMIT"))
    with serving(["--policies", str(tmp_path), "--poll-interval", "0.1"]) as server:
        got = meta_of(server, host="shop.test", path="/public")
        assert (got["decision"], got["reason"], got["tenant"]) == (
            "deny",
            "tenant_unavailable",
            "shop",
        )
        payments = "spiffe://cluster.local/ns/payments/sa/api"
        got = meta_of(server, host="other.test", destination_principal=payments)
        assert (got["reason"], got["tenant"]) == ("tenant_unavailable", "payments")
        assert meta_of(server, host="other.test")["decision"] == "allow"
        broken.write_text(ALLOW_PUBLIC)
        wait_for(lambda: decision(server, "/public") == "allow", 10, what="fixed tenant served")
        assert decision(server, "/admin") == "deny"


# -- a Kubernetes ConfigMap volume ----------------------------------------------------------


def configmap_volume(root: Path, stamp: str, files: dict[str, str]) -> None:
    """Lay out ``files`` as the kubelet does: ``..<stamp>/``, ``..data`` and top-level links."""
    data = root / f"..{stamp}"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
    (root / "..data").symlink_to(data.name)
    for name in files:
        (root / name).symlink_to(f"..data/{name}")


def swap_configmap(root: Path, old: str, new: str, files: dict[str, str]) -> None:
    """The kubelet's atomic update: new directory, ``..data`` renamed over, old one removed."""
    data = root / f"..{new}"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
    (root / "..data_tmp").symlink_to(data.name)
    os.replace(root / "..data_tmp", root / "..data")
    shutil.rmtree(root / f"..{old}")


SHOP_FILES = {"tenant.yaml": tenant_yaml("shop", match="{hosts: [shop.test]}")}


def test_configmap_layout_lists_each_file_once(tmp_path: Path) -> None:
    """Only the top-level names are policy files: ``..data`` and ``..<stamp>`` are skipped."""
    configmap_volume(tmp_path, "2026_11_27_old", {**SHOP_FILES, "policy.yml": ALLOW_ADMIN})
    assert policy_files(tmp_path) == [tmp_path / "policy.yml", tmp_path / "tenant.yaml"]
    docs, errors = read_directory(tmp_path)
    assert (len(docs), errors) == (2, [])


def test_configmap_volume_serves_and_follows_the_swap(tmp_path: Path) -> None:
    """A kubelet-laid ConfigMap serves, and an atomic ``..data`` swap changes decisions."""
    configmap_volume(tmp_path, "2026_11_27_old", {**SHOP_FILES, "policy.yaml": ALLOW_ADMIN})
    with serving(["--policies", str(tmp_path), "--poll-interval", "0.1"]) as server:
        assert decision(server, "/admin") == "allow"
        swap_configmap(
            tmp_path,
            "2026_11_27_old",
            "2026_11_27_new",
            {**SHOP_FILES, "policy.yaml": ALLOW_PUBLIC},
        )
        wait_for(lambda: decision(server, "/public") == "allow", 10, what="swap served")
        assert decision(server, "/admin") == "deny"
        assert "defined twice" not in server.logs()


def test_shipped_configmap_serves_in_kubelet_layout(tmp_path: Path) -> None:
    """deploy/'s policies ConfigMap, laid out as the kubelet mounts it, is decided by its tenant."""
    configmap = yaml.safe_load((REPO / "deploy/base/policies-configmap.yaml").read_text())
    configmap_volume(tmp_path, "2026_11_27_old", dict(configmap["data"]))
    with serving(["--policies", str(tmp_path)]) as server:
        got = meta_of(server, principal="spiffe://cluster.local/ns/web/sa/frontend")
        assert (got["reason"], got["tenant"]) == ("no_allow_match", "default")
