"""The Redis store: load every tenant, then follow the change channel; resync on reconnect.

One session, top to bottom: SUBSCRIBE to the change channel first (so nothing published
during the load is missed), then load (the first time: everything, ``Sink.replace_all``,
each record checked and routed but its documents decoded only when the sink compiles the
tenant, on its first Check or in the background (``Sink.settle``); after a reconnect:
compare every tenant's version with the one held and fetch only those that differ), then
apply notifications as they arrive, a batch at a time. Any Redis error
ends the session: the sink is told it is disconnected (Checks keep being decided from
memory) and a new session starts after a backoff. Checks never call Redis.

A record that fails to decode is reported with its tenant and version (``Sink.reject``);
the registry keeps the last good version. A tenant whose key disappeared without a
tombstone (a flushed or evicted Redis) is kept as it is, with an error in the log.

Versions only go forward: the store remembers the highest version it applied for each
tenant (a tombstone's too) and refuses a lower one (a failed-over replica that missed
writes, a restored backup, a re-created record after a FLUSHALL), reporting it like a
rejected record while the held version keeps serving. Rollback and delete write a new,
higher version, so they are never refused; a deliberate return to lower versions (a whole
Redis restored on purpose) takes a restart of the replicas, which forgets the marks.

DataSets follow the same rules at the cost of each change (``redis_datasets.py``): every
tenant's sets are loaded with the tenants (before the first ``replace_all``), resynced on
every reconnect, and changed in place when a notification names a set; each tenant source
handed to the sink carries the tenant's live sets, so a set's change never recompiles it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Iterable
from typing import Any, Final

import structlog
from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from extauthz.catalog import DeferredSource
from extauthz.datasets import check_set_name
from extauthz.errors import DocumentError, Location
from extauthz.sources import TenantSource
from extauthz.store.base import Sink, Store
from extauthz.store.redis_client import Client, connect, display_target, parse_url
from extauthz.store.redis_datasets import DataSetFollower
from extauthz.store.redis_deferred import read_record
from extauthz.store.redis_model import RECORD_FIELDS, Record, Rejected, TenantRepo, chunks
from extauthz.store.redis_sets import SetRepo
from extauthz.tenancy import check_tenant_name

__all__ = ["RedisStore"]

log = structlog.get_logger("extauthz.store.redis")

MAX_BATCH: Final = 500  # notifications applied together
PROGRESS_EVERY: Final = 2.0  # seconds between load progress lines


class Backoff:
    """Exponential backoff with full jitter, reset after a good session."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.attempt)
        self.attempt += 1
        return random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not crypto

    def reset(self) -> None:
        self.attempt = 0


class RedisStore(Store):
    """Tenant documents from Redis (see docs/redis.md for keys and guarantees)."""

    name = "redis"

    def __init__(self, client: Client, prefix: str, *, where: str = "redis") -> None:
        self.client = client
        self.repo = TenantRepo(client, prefix)
        self.sets = DataSetFollower(SetRepo(client, prefix))
        self.where = where
        self.loaded = False
        # tenant -> the version last reported to the sink (accepted, rejected or deleted)
        self._seen: dict[str, str] = {}
        self._held: set[str] = set()  # tenants the sink holds documents for
        # tenant -> the highest version applied (documents or tombstone); lower ones are refused
        self._high: dict[str, int] = {}
        self._refused: dict[str, int] = {}  # tenant -> the lower version last reported
        self._down_since: float | None = None
        self._last_down_log = 0.0
        self._settling: asyncio.Task[None] | None = None  # compiling what the load deferred

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        target = parse_url(url)
        return cls(connect(target), target.prefix, where=display_target(target))

    async def run(self, sink: Sink) -> None:
        backoff = Backoff()
        try:
            while True:
                try:
                    await self._session(sink, backoff)
                except (RedisError, OSError) as exc:
                    self._disconnected(sink, exc)
                except Exception as exc:  # a client bug must not stop updates for good
                    log.exception("redis store session failed", error=repr(exc))
                    self._disconnected(sink, exc)
                await asyncio.sleep(backoff.next())
        finally:
            if self._settling is not None:
                self._settling.cancel()
                await asyncio.gather(self._settling, return_exceptions=True)

    async def close(self) -> None:
        await self.client.aclose()

    # -- one session ---------------------------------------------------------------------

    async def _session(self, sink: Sink, backoff: Backoff) -> None:
        if isinstance(self.client, RedisCluster):
            await self.client.initialize()  # the slot map, before pub/sub picks a node
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.repo.keys.channel)
            if self.loaded:
                await self._resync(sink)
            else:
                await self._full_load(sink)
            self._connected(sink)
            backoff.reset()
            while True:
                message = await pubsub.get_message(timeout=5.0)
                if message is None:
                    continue
                tenants: set[str] = set()
                sets: dict[tuple[str, str], int | None] = {}
                self._parse(message, tenants, sets)
                while len(tenants) + len(sets) < MAX_BATCH:  # coalesce a burst
                    more = await pubsub.get_message(timeout=0)
                    if more is None:
                        break
                    self._parse(more, tenants, sets)
                # sets first: a record that names a new set is compiled after the set is in
                for (tenant, name), version in sets.items():
                    await self.sets.follow(sink, tenant, name, version)
                await self._refresh(sink, sorted(tenants))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _parse(
        self,
        message: dict[str, Any],
        tenants: set[str],
        sets: dict[tuple[str, str], int | None],
    ) -> None:
        """Add what ``message`` announces: "acme 8" (a record) or "acme/<set> 5" (a set)."""
        data = message.get("data")
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        head, space, version = text.rpartition(" ")
        if not space:
            head, version = text, ""
        tenant, slash, name = head.partition("/")
        if not check_tenant_name(tenant):
            return
        if not slash:
            tenants.add(tenant)
        elif check_set_name(name):
            hint = int(version) if version.isdigit() else None
            known = sets.get((tenant, name), 0)
            sets[(tenant, name)] = None if hint is None or known is None else max(hint, known)

    async def _full_load(self, sink: Sink) -> None:
        """Read and check every record, hand them over (``replace_all``: the sink routes them
        and compiles each on first use), then compile the rest in the background (``settle``,
        which needs no Redis: it goes on through reconnects)."""
        start = time.monotonic()
        last = start
        sources: dict[str, TenantSource | DeferredSource] = {}
        count = 0
        async for batch in self.repo.tenants():
            values = await self.repo.hmget_many(batch, RECORD_FIELDS)
            for tenant, value in zip(batch, values, strict=True):
                count += 1
                read = read_record(self.repo, tenant, value)
                if isinstance(read, Rejected):
                    self._reject(sink, read)
                elif read is not None:
                    version, source = read
                    self._seen[tenant] = str(version)
                    self._high[tenant] = version
                    if source is not None:
                        sources[tenant] = source
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                log.info("loading tenants from redis", read=count, elapsed=round(now - start, 1))
        read_at = time.monotonic()
        sets = await self.sets.sync_all(sink)
        fetched = time.monotonic()
        sink.replace_all({tenant: self._with_data(s) for tenant, s in sources.items()})
        self._held = set(sources)
        self.loaded = True
        log.info(
            "tenants loaded from redis",
            tenants=len(sources),
            records=count,
            data_sets=sets,
            read_seconds=round(read_at - start, 2),
            data_sets_seconds=round(fetched - read_at, 2),
            compile_seconds=round(time.monotonic() - fetched, 2),
            where=self.where,
        )
        self._settling = asyncio.create_task(self._settle(sink), name="compile tenants")

    def _with_data(self, source: TenantSource | DeferredSource) -> TenantSource | DeferredSource:
        """``source`` with the tenant's live sets, which this store keeps apart from its
        documents (a deferred source gets them when it is decoded)."""
        data = self.sets.of(source.tenant)
        if isinstance(source, TenantSource):
            return dataclasses.replace(source, data=data)
        decode = source.decode
        return dataclasses.replace(source, decode=lambda: dataclasses.replace(decode(), data=data))

    async def _settle(self, sink: Sink) -> None:
        try:
            await sink.settle()
        except Exception as exc:  # what is left compiles on first use
            log.exception("background compile failed", error=repr(exc))

    async def _resync(self, sink: Sink) -> None:
        """After a reconnect: fetch only the tenants whose version moved."""
        versions = await self.repo.versions()
        changed = [t for t, v in versions.items() if self._seen.get(t) != v or not v]
        for tenant in sorted(self._held - versions.keys()):
            log.error(
                "tenant missing from redis without a delete record; keeping the last good "
                "version (was redis emptied or evicted?)",
                tenant=tenant,
                version=self._seen.get(tenant),
            )
        sets = await self.sets.sync_all(sink)
        log.info(
            "resynchronizing with redis",
            tenants=len(versions),
            changed=len(changed),
            data_sets_changed=sets,
        )
        await self._refresh(sink, changed)

    async def _refresh(self, sink: Sink, tenants: Iterable[str]) -> None:
        for batch in chunks(tenants, self.repo.batch):
            for tenant, record in zip(batch, await self.repo.records(batch), strict=True):
                if isinstance(record, Rejected):
                    self._reject(sink, record)
                elif record is None:
                    if tenant in self._held:
                        log.error(
                            "tenant announced but its key is gone; keeping the last good version",
                            tenant=tenant,
                        )
                elif self._seen.get(tenant) == str(record.version):
                    continue  # already applied (a notification for a version we resynced)
                elif record.version < self._high.get(tenant, 0):
                    self._refuse_older(sink, record)
                else:
                    # a record that was rejected left the tenant held unavailable
                    was_rejected = self._seen.get(tenant, "").startswith("!")
                    self._seen[tenant] = str(record.version)
                    self._high[tenant] = record.version
                    self._refused.pop(tenant, None)
                    if record.source is None:
                        if tenant in self._held or was_rejected:
                            self._held.discard(tenant)
                            sink.update(tenant, None)
                    else:
                        self._held.add(tenant)
                        source = dataclasses.replace(record.source, data=self.sets.of(tenant))
                        sink.update(tenant, source)

    def _refuse_older(self, sink: Sink, record: Record) -> None:
        """A version below the highest applied one: keep what is held, report it once."""
        if self._refused.get(record.tenant) == record.version:
            return
        self._refused[record.tenant] = record.version
        high = self._high[record.tenant]
        key = self.repo.keys.current(record.tenant)
        error = DocumentError(
            f"version {record.version} is older than version {high} already applied "
            "(failed-over replica or restored backup?); keeping version "
            f"{high}{' (deleted)' if record.tenant not in self._held else ''}",
            location=Location(f"redis:{key}@{record.version}"),
        )
        log.error(
            "refusing an older tenant version from redis",
            tenant=record.tenant,
            version=record.version,
            held_version=high,
        )
        # A deleted tenant stays deleted (not held unavailable): what it routed goes on as
        # after the delete.
        sink.reject(record.tenant, str(record.version), error, hold=False)

    def _reject(self, sink: Sink, rejected: Rejected) -> None:
        mark = f"!{rejected.version}:{rejected.error}"
        if self._seen.get(rejected.tenant) == mark:
            return  # reported once per distinct bad value, not once per resync
        self._seen[rejected.tenant] = mark
        sink.reject(rejected.tenant, rejected.version, rejected.error, rejected.routes)

    # -- connection state ------------------------------------------------------------------

    def _connected(self, sink: Sink) -> None:
        if self._down_since is not None:
            log.info(
                "redis reachable again",
                where=self.where,
                down_seconds=round(time.monotonic() - self._down_since, 1),
            )
        self._down_since = None
        sink.set_connected(True)

    def _disconnected(self, sink: Sink, exc: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._last_down_log = 0.0
        sink.set_connected(False)
        if now - self._last_down_log >= 10.0:
            self._last_down_log = now
            log.error(
                "redis unreachable; deciding from the policies held in memory"
                if self.loaded
                else "redis unreachable; no policies loaded yet",
                where=self.where,
                error=str(exc) or type(exc).__name__,
                stale_seconds=round(now - self._down_since, 1),
            )
