"""The Redis store feeding a real registry, against real redis-server processes."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from extauthz.authn import JwksCache
from extauthz.documents import load_documents
from extauthz.registry import Registry
from extauthz.store.redis import RedisStore
from extauthz.store.redis_admin import PolicyAdmin
from extauthz.store.redis_client import connect, parse_url
from extauthz.store.redis_model import TenantRepo
from tests.helpers import RedisServer, redis_cli, tenant_documents, until

pytestmark = pytest.mark.redis


class Harness:
    """A RedisStore running into a Registry, and an admin that writes to the same Redis."""

    def __init__(self, url: str) -> None:
        target = parse_url(url)
        self.client = connect(target)
        self.admin = PolicyAdmin(TenantRepo(self.client, target.prefix))
        self.store = RedisStore.from_url(url)
        self.registry = Registry(JwksCache())
        self.task: asyncio.Task[None] | None = None

    async def apply(self, text: str) -> None:
        await self.admin.apply(load_documents(text, "test.yaml"))

    def start(self) -> None:
        self.task = asyncio.create_task(self.store.run(self.registry))

    def version(self, tenant: str) -> str | None:
        compiled = self.registry.snapshot.tenants.get(tenant)
        return None if compiled is None else compiled.version

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.store.close()
        await self.client.aclose()


@pytest.fixture
async def harness(redis: RedisServer) -> AsyncIterator[Harness]:
    h = Harness(redis.url)
    try:
        yield h
    finally:
        await h.close()


async def loaded(h: Harness, *texts: str) -> Harness:
    for text in texts:
        await h.apply(text)
    h.start()
    await until(lambda: h.registry.ready, "first load")
    return h


async def test_first_load_serves_every_tenant(harness: Harness) -> None:
    """The first full load brings every tenant at its version and marks the registry ready."""
    await loaded(
        harness, tenant_documents("t1", "a.test"), tenant_documents("t2", "b.test", ["/x"])
    )
    assert harness.version("t1") == "1"
    assert harness.version("t2") == "1"
    assert harness.registry.connected


async def test_update_replaces_only_that_tenant(harness: Harness) -> None:
    """A change notification recompiles the tenant that changed; the others stay as they are."""
    await loaded(harness, tenant_documents("t1", "a.test"), tenant_documents("t2", "b.test"))
    untouched = harness.registry.snapshot.tenants["t2"]
    await harness.apply(tenant_documents("t1", "a.test", ["/v2/*"]))
    await until(lambda: harness.version("t1") == "2", "t1 at version 2")
    assert harness.registry.snapshot.tenants["t2"] is untouched


async def test_delete_removes_tenant(harness: Harness) -> None:
    """A deleted tenant leaves the registry."""
    await loaded(harness, tenant_documents("t1", "a.test"), tenant_documents("t2", "b.test"))
    await harness.admin.delete("t2")
    await until(lambda: harness.version("t2") is None, "t2 gone")
    assert harness.version("t1") == "1"


async def test_new_tenant_is_added(harness: Harness) -> None:
    """A tenant created after the load is served."""
    await loaded(harness, tenant_documents("t1", "a.test"))
    await harness.apply(tenant_documents("t3", "c.test"))
    await until(lambda: harness.version("t3") == "1", "t3 added")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


BAD_RECORDS: dict[str, Callable[[str], list[str]]] = {
    "not json": lambda key: [
        "hset",
        key,
        "version",
        "9",
        "documents",
        "{{",
        "digest",
        _digest("{{"),
    ],
    "cut short": lambda key: ["hset", key, "version", "9", "documents", '[{"kind":'],
    "no documents": lambda key: ["hdel", key, "documents"],
    "no version": lambda key: ["hdel", key, "version"],
    "fails to compile": lambda key: [
        "hset",
        key,
        "version",
        "9",
        "documents",
        (
            doc := '[{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy",'
            '"metadata":{"name":"p","namespace":"t1"},"spec":{"action":"PERMIT"}}]'
        ),
        "digest",
        _digest(doc),
    ],
    "unknown kind": lambda key: [
        "hset",
        key,
        "version",
        "9",
        "documents",
        (doc := '[{"kind":"Secret","metadata":{"name":"x"}}]'),
        "digest",
        _digest(doc),
    ],
}


@pytest.mark.parametrize("damage", sorted(BAD_RECORDS))
async def test_bad_record_keeps_last_good_version(
    harness: Harness, redis: RedisServer, damage: str
) -> None:
    """A record that cannot be decoded or compiled is rejected; version 1 keeps serving."""
    await loaded(harness, tenant_documents("t1", "a.test"))
    good = harness.registry.snapshot.tenants["t1"]
    redis_cli(redis.port, *BAD_RECORDS[damage]("extauthz:{t1}:current"))
    redis_cli(redis.port, "publish", "extauthz:changes", "t1 9")
    await until(lambda: harness.registry.stats.rejected == 1, "rejection counted")
    assert harness.registry.snapshot.tenants["t1"] is good


async def test_wrong_type_key_keeps_last_good_version(harness: Harness, redis: RedisServer) -> None:
    """A key overwritten with a string (not a hash) is rejected, not fatal to the store."""
    await loaded(harness, tenant_documents("t1", "a.test"), tenant_documents("t2", "b.test"))
    redis_cli(redis.port, "set", "extauthz:{t1}:current", "garbage")
    redis_cli(redis.port, "publish", "extauthz:changes", "t1 2")
    await until(lambda: harness.registry.stats.rejected == 1, "rejection counted")
    assert harness.version("t1") == "1"
    await harness.apply(tenant_documents("t2", "b.test", ["/next"]))
    await until(lambda: harness.version("t2") == "2", "store still following changes")


async def test_bad_record_at_start_makes_only_that_tenant_unavailable(
    harness: Harness, redis: RedisServer
) -> None:
    """At the first load a broken tenant is held unavailable; every other tenant is served."""
    await harness.apply(tenant_documents("t1", "a.test"))
    await harness.apply(tenant_documents("t2", "b.test"))
    redis_cli(redis.port, "hset", "extauthz:{t1}:current", "documents", "[")
    harness.start()
    await until(lambda: harness.registry.ready, "first load")
    assert harness.registry.snapshot.tenants["t1"].unavailable
    assert harness.version("t2") == "1"
    assert not harness.registry.snapshot.tenants["t2"].unavailable
    assert harness.registry.stats.rejected == 1


async def test_fixed_record_replaces_rejected_one(harness: Harness, redis: RedisServer) -> None:
    """After a rejection, the next good write is served."""
    await loaded(harness, tenant_documents("t1", "a.test"))
    redis_cli(redis.port, "hset", "extauthz:{t1}:current", "documents", "[")
    redis_cli(redis.port, "publish", "extauthz:changes", "t1 1")
    await until(lambda: harness.registry.stats.rejected == 1, "rejection counted")
    await harness.apply(tenant_documents("t1", "a.test", ["/fixed"]))
    await until(lambda: harness.version("t1") == "2", "fixed version served")


async def test_unreachable_at_start_is_not_ready(redis: RedisServer) -> None:
    """With Redis down before the first load, the registry stays not ready, then loads."""
    redis.stop()
    h = Harness(redis.url)
    try:
        h.start()
        await until(lambda: not h.registry.connected, "disconnected")
        assert not h.registry.ready
        redis.start()
        await until(lambda: h.registry.ready, "loaded once redis is up")
        assert h.registry.connected
    finally:
        await h.close()


async def test_outage_marks_registry_stale_and_keeps_tenants(
    harness: Harness, redis: RedisServer
) -> None:
    """While Redis is down the registry reports disconnected and staleness, tenants stay."""
    await loaded(harness, tenant_documents("t1", "a.test"))
    redis.stop()
    await until(lambda: not harness.registry.connected, "disconnected")
    await until(lambda: harness.registry.stale_seconds > 0, "staleness grows")
    assert harness.version("t1") == "1"


async def test_emptied_redis_does_not_empty_the_registry(
    harness: Harness, redis: RedisServer
) -> None:
    """A Redis that comes back empty (no persistence) is not taken as deleting every tenant."""
    await loaded(harness, tenant_documents("t1", "a.test"))
    redis.stop()
    await until(lambda: not harness.registry.connected, "disconnected")
    redis.start()
    await until(lambda: harness.registry.connected, "reconnected")
    assert harness.version("t1") == "1"


async def test_update_made_during_outage_is_picked_up(tmp_path: Path) -> None:
    """A write whose notification the store never saw is found by the resync on reconnect."""
    persist = ("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    redis = RedisServer(*persist)
    h = Harness(redis.url)
    try:
        await loaded(h, tenant_documents("t1", "a.test"))
        redis.stop()
        await until(lambda: not h.registry.connected, "disconnected")
        # Write to the same data while the store cannot listen: through a second server
        # on another port over the same append-only file.
        side = RedisServer(*persist)
        side_h = Harness(side.url)
        try:
            await side_h.apply(tenant_documents("t1", "a.test", ["/during-outage"]))
        finally:
            await side_h.close()
            side.stop()
        redis.start()
        await until(lambda: h.version("t1") == "2", "missed update picked up")
        assert h.registry.connected
    finally:
        await h.close()
        redis.stop()
