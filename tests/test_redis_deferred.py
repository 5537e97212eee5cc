"""The Redis first load: records checked and routed at once, documents decoded when compiled.

Against a real redis-server: what ``read_record`` makes of good, damaged and hand-edited
records, and a store feeding a registry, whose tenants are all served (each decoded once)
and routed by their documents even where a record's stored ``match`` says otherwise.
"""

from __future__ import annotations

import asyncio

import pytest

from extauthz.authn import JwksCache
from extauthz.catalog import DeferredSource
from extauthz.documents import load_documents
from extauthz.model import RequestView
from extauthz.registry import Registry
from extauthz.sources import TenantSource
from extauthz.store.redis import RedisStore
from extauthz.store.redis_admin import PolicyAdmin
from extauthz.store.redis_client import connect, parse_url
from extauthz.store.redis_deferred import read_record
from extauthz.store.redis_model import RECORD_FIELDS, Rejected, TenantRepo
from tests.helpers import RedisServer, redis_cli, tenant_documents, until

pytestmark = pytest.mark.redis


async def written(redis: RedisServer, *texts: str) -> TenantRepo:
    target = parse_url(redis.url)
    repo = TenantRepo(connect(target), target.prefix)
    for text in texts:
        await PolicyAdmin(repo).apply(load_documents(text, "t.yaml"))
    return repo


async def read(repo: TenantRepo, tenant: str) -> object:
    (value,) = await repo.hmget_many([tenant], RECORD_FIELDS)
    return read_record(repo, tenant, value)


async def test_records_are_checked_now_and_decoded_later(redis: RedisServer) -> None:
    """A good record: deferred, routed by its stored match, decoded on demand. A damaged one:
    rejected at once. One whose match was edited into something no writer stores: decoded
    at once. A tombstone: its version, nothing to load."""
    repo = await written(
        redis,
        tenant_documents("t1", "a.test"),
        tenant_documents("t2", "b.test"),
        tenant_documents("t3", "c.test"),
        tenant_documents("t4", "d.test"),
    )
    try:
        good = await read(repo, "t1")
        assert isinstance(good, tuple)
        version, source = good
        assert version == 1
        assert isinstance(source, DeferredSource)
        assert source.routes.match.hosts == ("a.test",)
        decoded = source.decode()
        assert [d.kind for d in decoded.documents] == ["Tenant", "AuthorizationPolicy"]

        redis_cli(redis.port, "hset", "extauthz:{t2}:current", "documents", "[")
        assert isinstance(await read(repo, "t2"), Rejected)

        redis_cli(redis.port, "hset", "extauthz:{t3}:current", "match", '{"hosts":["C.TEST"]}')
        edited = await read(repo, "t3")
        assert isinstance(edited, tuple)
        assert isinstance(edited[1], TenantSource)

        await PolicyAdmin(repo).delete("t4")
        assert await read(repo, "t4") == (2, None)
        assert await read(repo, "t5") is None
    finally:
        await repo.client.aclose()


async def test_first_load_serves_every_tenant_by_its_documents(redis: RedisServer) -> None:
    """Through the store: every tenant compiled (by settle, or by a lookup first), and a
    tenant whose stored match was edited to another host routed by its documents."""
    texts = [tenant_documents(f"t{i}", f"h{i}.test") for i in range(40)]
    repo = await written(redis, *texts)
    await repo.client.aclose()
    edited = '{"hosts":["elsewhere.test"],"destinationNamespaces":[],"headers":{}}'
    redis_cli(redis.port, "hset", "extauthz:{t7}:current", "match", edited)
    store = RedisStore.from_url(redis.url)
    registry = Registry(JwksCache())
    task = asyncio.create_task(store.run(registry))
    try:
        await until(lambda: registry.ready, "first load")
        await until(lambda: registry.pending == 0, "every tenant compiled")
        assert len(registry.snapshot.tenants.compiled) == 40
        assert registry.stats.rejected == 0
        routing = registry.snapshot.route(RequestView(host="h7.test"), None)
        assert routing.tenant is not None
        assert (routing.tenant.name, routing.refusal) == ("t7", None)
        assert registry.snapshot.route(RequestView(host="elsewhere.test"), None).tenant is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
