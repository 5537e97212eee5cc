"""DataSets in Redis: one SET per set, a version per set, a short log of its changes.

Every key carries the tenant's hash tag, so one script updates them atomically::

    {P}:{acme}:sets                    HASH  <set> -> version (1, 2, ...; never goes back)
    {P}:{acme}:set:<set>               SET   the values
    {P}:{acme}:setlog:<set>            HASH  <version> -> the change that made it:
                                             {"add": [...]} or {"remove": [...]}, or "*" (a
                                             replacement, or a change too large to keep);
                                             the last SET_LOG_KEEP versions
    {P}:{acme}:staging:<set>:<token>   SET   the values of a replacement being written
                                             (expires after STAGING_TTL seconds)

A write publishes ``acme/<set> <version>`` on ``{P}:changes``. The message only says that the
set moved: a replica reads the change from the log (one read-only script), so it never takes
a value on the word of whoever can publish on the channel, and a replica a few changes
behind catches up without reading the set. ``add``/``remove`` change the set in place;
``replace`` (``data import``, a DataSet document in ``policy apply``) first writes the new
values into a staging key in chunks, then swaps it in with RENAME, so a set is replaced
whole or not at all. The sets are not part of the tenant's record: no history, no rollback.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Final

from redis.exceptions import RedisError, ResponseError

from extauthz.errors import StoreError
from extauthz.store.redis_client import Client
from extauthz.store.redis_model import SET_LOG_KEEP, Keys, NotFound, SetResult, as_text, chunks
from extauthz.store.redis_scripts import CHANGES_SCRIPT, SET_CHANGE_SCRIPT, SET_REPLACE_SCRIPT

__all__ = ["MAX_LOG_ENTRY_BYTES", "SCAN_CHUNK", "STAGING_TTL", "SetRepo"]

STAGE_CHUNK: Final = 10_000  # values per SADD while staging
SCAN_CHUNK: Final = 10_000  # SSCAN COUNT: a replica handles one such chunk per step
STAGING_TTL: Final = 3600
MAX_LOG_ENTRY_BYTES: Final = 16_384  # a larger change is logged as "*" (read the set)


class SetRepo:
    """Reads and atomic writes of DataSets; shared by the server store and the CLI."""

    def __init__(self, client: Client, prefix: str) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self._change = client.register_script(SET_CHANGE_SCRIPT)
        self._replace = client.register_script(SET_REPLACE_SCRIPT)
        self._changes = client.register_script(CHANGES_SCRIPT)

    # -- writes --------------------------------------------------------------------------

    async def add(self, tenant: str, name: str, values: Sequence[str]) -> SetResult:
        return await self._apply(tenant, name, "add", values)

    async def remove(self, tenant: str, name: str, values: Sequence[str]) -> SetResult:
        return await self._apply(tenant, name, "remove", values)

    async def _apply(self, tenant: str, name: str, op: str, values: Sequence[str]) -> SetResult:
        entry = json.dumps({op: list(values)}, separators=(",", ":"), ensure_ascii=False)
        if len(entry.encode()) > MAX_LOG_ENTRY_BYTES:
            entry = "*"
        k = self.keys
        reply = await self._run(
            self._change,
            tenant,
            [k.current(tenant), k.sets(tenant), k.set(tenant, name), k.set_log(tenant, name)],
            [op, entry, SET_LOG_KEEP, k.channel, tenant, name, *values],
        )
        return self._result(tenant, name, reply)

    async def stage(
        self,
        tenant: str,
        name: str,
        values: Iterable[str],
        progress: Callable[[int], None] | None = None,
    ) -> str:
        """Write ``values`` into a new staging key, in chunks; its name."""
        key = self.keys.staging(tenant, name, secrets.token_hex(8))
        written = 0
        try:
            for batch in chunks(values, STAGE_CHUNK):
                pipe = self.client.pipeline(transaction=False)
                pipe.sadd(key, *batch)
                pipe.expire(key, STAGING_TTL)
                await pipe.execute()
                written += len(batch)
                if progress is not None:
                    progress(written)
        except BaseException:
            await self.client.unlink(key)
            raise
        return key

    async def replace(self, tenant: str, name: str, staging: str) -> SetResult:
        """Swap the staged values in as the set (the staging key is consumed)."""
        k = self.keys
        reply = await self._run(
            self._replace,
            tenant,
            [k.current(tenant), k.sets(tenant), k.set(tenant, name), k.set_log(tenant, name),
             staging],
            [SET_LOG_KEEP, k.channel, tenant, name],
        )  # fmt: skip
        return self._result(tenant, name, reply)

    async def _run(self, script: Any, tenant: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except RedisError as exc:
            raise StoreError(f"{tenant}: write failed: {exc}") from exc

    def _result(self, tenant: str, name: str, reply: Any) -> SetResult:
        status, version, size = as_text(reply[0]), int(reply[1]), int(reply[2])
        if status == "notenant":
            raise NotFound(f"no tenant {tenant!r} in redis")
        if status == "noset":
            raise NotFound(f"tenant {tenant!r} has no DataSet {name!r}")
        if status == "badversion":
            raise StoreError(
                f"{tenant}: the version of DataSet {name!r} in {self.keys.sets(tenant)} is "
                "not a number (changed outside extauthz?)"
            )
        return SetResult(name, "applied" if status == "ok" else "unchanged", version, size)

    # -- reads ---------------------------------------------------------------------------

    async def versions(self, tenant: str) -> dict[str, str]:
        """The tenant's sets: name -> version as stored."""
        raw: dict[Any, Any] = await self.client.hgetall(self.keys.sets(tenant))
        return {as_text(k) or "": as_text(v) or "" for k, v in raw.items()}

    async def all_versions(self) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """Every tenant with sets, and their versions."""
        async for key in self.client.scan_iter(match=self.keys.sets_pattern, count=1000):
            tenant = self.keys.tenant_of(key, "sets")
            if tenant is not None:
                yield tenant, await self.versions(tenant)

    async def sizes(self, tenants: Sequence[str]) -> dict[str, dict[str, int]]:
        """The sets of each of ``tenants`` that has some: tenant -> name -> size."""
        out: dict[str, dict[str, int]] = {}
        for batch in chunks(tenants, 1000):
            pipe = self.client.pipeline(transaction=False)
            for tenant in batch:
                pipe.hkeys(self.keys.sets(tenant))
            named = [
                (tenant, as_text(name) or "")
                for tenant, names in zip(batch, await pipe.execute(), strict=True)
                for name in names
            ]
            if not named:
                continue
            pipe = self.client.pipeline(transaction=False)
            for tenant, name in named:
                pipe.scard(self.keys.set(tenant, name))
            sizes = await pipe.execute(raise_on_error=False)
            for (tenant, name), size in zip(named, sizes, strict=True):
                if isinstance(size, RedisError) and not isinstance(size, ResponseError):
                    raise size
                # a key of the wrong type counts as empty: a write replaces it
                out.setdefault(tenant, {})[name] = 0 if isinstance(size, RedisError) else int(size)
        return out

    async def scan(self, tenant: str, name: str) -> AsyncIterator[list[Any]]:
        """The set's values, a chunk at a time (SSCAN: a value may come twice)."""
        key, cursor = self.keys.set(tenant, name), 0
        while True:
            cursor, values = await self.client.sscan(key, cursor, count=SCAN_CHUNK)
            if values:
                yield values
            if not cursor:
                return

    async def version_and_size(self, tenant: str, name: str) -> tuple[str | None, int]:
        """The set's version as stored (None if absent) and its size."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.keys.sets(tenant), name)
        pipe.scard(self.keys.set(tenant, name))
        version, size = await pipe.execute(raise_on_error=False)
        if isinstance(size, RedisError):  # e.g. WRONGTYPE: the scan reports it
            size = 0
        if isinstance(version, RedisError):
            raise version
        return as_text(version), int(size)

    async def changes(self, tenant: str, name: str, held: int) -> list[Any]:
        """[version as stored (None if absent), log entries held+1..version] (no entries
        when the set is more than SET_LOG_KEEP versions ahead)."""
        k = self.keys
        reply: list[Any] = await self._changes(
            keys=[k.sets(tenant), k.set_log(tenant, name)], args=[name, held, SET_LOG_KEEP]
        )
        return reply
