"""The Redis store on a real 3-master Redis Cluster (``redis+cluster://``)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from extauthz.authn import JwksCache
from extauthz.cli import main
from extauthz.documents import load_documents
from extauthz.errors import ConflictError
from extauthz.registry import Registry
from extauthz.store.redis import RedisStore
from extauthz.store.redis_admin import PolicyAdmin
from extauthz.store.redis_client import connect, parse_url
from extauthz.store.redis_model import TenantRepo
from tests.helpers import RedisClusterServers, tenant_documents, until

pytestmark = pytest.mark.redis

TENANTS = [f"t{i}" for i in range(12)]  # enough names to land on every master


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
async def admin(cluster: RedisClusterServers) -> AsyncIterator[PolicyAdmin]:
    target = parse_url(cluster.url)
    client = connect(target)
    try:
        await client.flushall(target_nodes=client.PRIMARIES)  # type: ignore[call-arg,union-attr]
        yield PolicyAdmin(TenantRepo(client, target.prefix))
    finally:
        await client.aclose()


def keyslot(cluster: RedisClusterServers, key: str) -> str:
    port = str(cluster.nodes[0].port)
    return subprocess.run(
        ["redis-cli", "-p", port, "cluster", "keyslot", key],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_a_tenants_keys_share_one_slot(cluster: RedisClusterServers) -> None:
    """current, history and the DataSet keys of a tenant hash to the same slot (the {tenant}
    hash tag)."""
    for tenant in ("acme", "globex", "t7"):
        slots = {
            keyslot(cluster, f"extauthz:{{{tenant}}}:{suffix}")
            for suffix in ("current", "history", "sets", "set:a", "setlog:a", "staging:a:1")
        }
        assert len(slots) == 1


async def test_apply_spreads_tenants_over_masters_and_lists_them(
    admin: PolicyAdmin, cluster: RedisClusterServers
) -> None:
    """Tenants written through the cluster land on several masters and are all listed."""
    for i, tenant in enumerate(TENANTS):
        await admin.apply(load_documents(tenant_documents(tenant, f"h{i}.test"), "t.yaml"))
    listed = [t async for batch in admin.repo.tenants() for t in batch]
    assert sorted(listed) == sorted(TENANTS)
    owners = {keyslot(cluster, f"extauthz:{{{t}}}:current") for t in TENANTS}
    assert len(owners) > 1


async def test_stale_version_conflicts_on_cluster(admin: PolicyAdmin) -> None:
    """Optimistic concurrency holds in cluster mode."""
    await admin.apply(load_documents(tenant_documents("t1", "a.test"), "t.yaml"))
    await admin.apply(load_documents(tenant_documents("t1", "a.test", ["/b"]), "t.yaml"))
    with pytest.raises(ConflictError):
        await admin.apply(
            load_documents(tenant_documents("t1", "a.test", ["/c"]), "t.yaml"), expected=1
        )


async def test_rollback_on_cluster(admin: PolicyAdmin) -> None:
    """History and rollback work with the tenant's keys on one master."""
    await admin.apply(load_documents(tenant_documents("t2", "a.test", ["/one"]), "t.yaml"))
    await admin.apply(load_documents(tenant_documents("t2", "a.test", ["/two"]), "t.yaml"))
    restored, result = await admin.rollback("t2")
    assert (restored, result.version) == (1, 3)
    revision = await admin.get("t2")
    assert "/one" in str(revision.documents[1].body)


async def test_store_loads_and_follows_changes_on_cluster(
    admin: PolicyAdmin, cluster: RedisClusterServers
) -> None:
    """A replica on the cluster loads every tenant and sees an update and a delete."""
    for i, tenant in enumerate(TENANTS):
        await admin.apply(load_documents(tenant_documents(tenant, f"h{i}.test"), "t.yaml"))
    store = RedisStore.from_url(cluster.url)
    registry = Registry(JwksCache())
    task = asyncio.create_task(store.run(registry))
    try:
        await until(lambda: registry.ready)
        assert sorted(registry.snapshot.tenants) == sorted(TENANTS)
        await admin.apply(load_documents(tenant_documents("t5", "h5.test", ["/x"]), "t.yaml"))
        await admin.delete("t9")
        await until(lambda: "t9" not in registry.snapshot.tenants)
        await until(lambda: registry.snapshot.tenants["t5"].version == "2")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


def test_cli_against_cluster(
    cluster: RedisClusterServers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """policy apply and get work with a redis+cluster:// URL."""
    path = tmp_path / "t.yaml"
    path.write_text(tenant_documents("cli", "cli.test"))
    assert main(["policy", "apply", "-f", str(path), "--redis-url", cluster.url]) == 0
    capsys.readouterr()
    assert main(["policy", "get", "cli", "--redis-url", cluster.url]) == 0
    assert "cli.test" in capsys.readouterr().out


async def test_datasets_on_cluster(admin: PolicyAdmin, cluster: RedisClusterServers) -> None:
    """A DataSet applied with its tenant, added to and replaced on the cluster is followed by
    a replica."""
    dataset = (
        "---\napiVersion: extauthz.io/v1\nkind: DataSet\n"
        "metadata: {name: s, namespace: t3}\nspec: {values: [a]}\n"
    )
    await admin.apply(load_documents(tenant_documents("t3", "h3.test") + dataset, "t.yaml"))
    store = RedisStore.from_url(cluster.url)
    registry = Registry(JwksCache())
    task = asyncio.create_task(store.run(registry))
    try:
        await until(lambda: registry.ready)
        data = store.sets.of("t3")
        assert "a" in (data.get("s") or ())
        await admin.sets.add("t3", "s", ["b"])
        await until(lambda: "b" in (data.get("s") or ()))
        staging = await admin.sets.stage("t3", "s", [f"v{i}" for i in range(20_000)])
        await admin.sets.replace("t3", "s", staging)
        await until(lambda: len(data.get("s") or ()) == 20_000)
        assert "a" not in (data.get("s") or ())
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
