"""The DataSets a replica holds, kept in step with Redis at the cost of each change.

Each tenant's sets live in one live ``DataSets`` that its compiled conditions read; the
tenant is never recompiled for a set's sake. For one set, given the version held:

- a notification for a version already held costs nothing;
- otherwise one read-only script returns the set's version and the change log entries since
  the held version; when they are all small changes (``{"add": [...]}``, ``{"remove":
  [...]}``) they are applied together, in one synchronous step: O(values changed), and a
  Check sees the set before or after, never in between (a set that has grown fourfold by
  such changes is then read again, into more shards);
- else (a replacement, a gap longer than the log, a set never held) the set is read in
  full: SSCAN in chunks into a new set, yielding to the event loop after each chunk, then the
  changes logged while it was read are applied on top (SSCAN returns every value present
  throughout, so only the values those changes name can be off), and the result is swapped
  in whole. The set it replaces is freed a shard at a time.

As for tenant records: versions only go forward (a lower one is refused, reported once, and
the held set keeps serving); a set that does not read (wrong key type, a value that is not
UTF-8 or is too long, a log entry that is not a change) keeps the last good version and is
reported with tenant, set and version through ``Sink.reject`` (logged, counted); a set that
vanished (an emptied Redis) is kept, with an error in the log. A set that never loaded is
not held, so the conditions that read it fail closed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Set
from typing import Any, Final

import structlog
from redis.exceptions import ResponseError

from extauthz.datasets import (
    MAX_VALUE_BYTES,
    DataSets,
    ShardedSet,
    ShardedSetBuilder,
    value_error,
)
from extauthz.errors import DocumentError, Location
from extauthz.store.base import Sink
from extauthz.store.redis_model import as_text
from extauthz.store.redis_sets import SetRepo

__all__ = ["DataSetFollower"]

log = structlog.get_logger("extauthz.store.redis")

READ_ATTEMPTS: Final = 3  # full reads of a set that is replaced again while being read
Key = tuple[str, str]  # (tenant, set)
Delta = tuple[list[str], list[str]]  # (added, removed)


class Unreadable(Exception):
    """A set or a logged change that cannot be served (the message says why)."""


class DataSetFollower:
    """Every tenant's live sets, brought up to date with Redis one set at a time."""

    def __init__(self, repo: SetRepo) -> None:
        self.repo = repo
        self.data: dict[str, DataSets] = {}
        self._held: dict[Key, int] = {}  # the version of each set held
        self._reported: dict[Key, str] = {}  # the problem last reported, per set

    def of(self, tenant: str) -> DataSets:
        """The tenant's live sets (the same object for the life of the process)."""
        found = self.data.get(tenant)
        if found is None:
            found = self.data[tenant] = DataSets(live=True)
        return found

    async def sync_all(self, sink: Sink) -> int:
        """Bring every set in Redis up to date (the first load, and the resync after a
        reconnect); how many were behind."""
        seen: set[Key] = set()
        behind = 0
        async for tenant, versions in self.repo.all_versions():
            for name, raw in sorted(versions.items()):
                key = (tenant, name)
                seen.add(key)
                if _int(raw) is None or _int(raw) != self._held.get(key):
                    behind += 1
                    await self.follow(sink, tenant, name)
        for key in sorted(self._held.keys() - seen):
            self._gone(key)
        return behind

    async def follow(self, sink: Sink, tenant: str, name: str, hint: int | None = None) -> None:
        """Bring one set up to date. ``hint``: the version a notification announced."""
        key = (tenant, name)
        held = self._held.get(key)
        if hint is not None and held is not None and hint <= held:
            return  # already held (read in full after that change was made)
        reply = await self.repo.changes(tenant, name, held or 0)
        raw = as_text(reply[0])
        version = _int(raw)
        if raw is None:
            self._gone(key)
        elif version is None:
            self._reject(sink, key, raw, f"version {raw!r} is not a number")
        elif held is not None and version < held:
            self._reject(sink, key, raw, f"version {version} is older than version {held} "
                         "already applied (failed-over replica or restored backup?)")  # fmt: skip
        elif held is None or version > held:
            # A set's history starts empty at version 0: a log that covers it all replays it.
            try:
                deltas = _deltas(reply[1:], version - (held or 0))
            except Unreadable:
                deltas = None  # the set itself is the truth: read it
            if deltas is None:
                await self._read(sink, key)
                return
            data = self.of(tenant)
            for added, removed in deltas:  # one synchronous step
                data.change(name, added, removed)
            self._held[key] = version
            self._reported.pop(key, None)
            values = data.get(name)
            if isinstance(values, ShardedSet) and values.crowded:
                await self._read(sink, key)  # into more shards, a step at a time

    async def _read(self, sink: Sink, key: Key) -> None:
        """Read the set in full and swap it in whole, or keep what is held."""
        tenant, name = key
        for _ in range(READ_ATTEMPTS):
            raw, size = await self.repo.version_and_size(tenant, name)
            start = _int(raw)
            if start is None:
                return  # gone or garbage since: the next look reports it
            try:
                values = await self._scan(tenant, name, size)
            except Unreadable as exc:
                self._reject(sink, key, str(start), str(exc))
                return
            after = await self.repo.changes(tenant, name, start)  # logged while reading
            end = _int(as_text(after[0]))
            try:
                deltas = None if end is None else _deltas(after[1:], end - start)
            except Unreadable:
                deltas = None
            if end is None or deltas is None:
                continue  # replaced again while being read
            for added, removed in deltas:
                values.add_all(added)
                values.discard_all(removed)
            held = self._held.get(key)
            if held is not None and end < held:
                return  # older after all: the next look reports it
            old = self.of(tenant).put(name, values)
            self._held[key] = end
            self._reported.pop(key, None)
            await _release(old)
            return
        log.warning(
            "data set replaced again while being read; reading it on its next change",
            tenant=tenant,
            set=name,
        )

    async def _scan(self, tenant: str, name: str, size: int) -> ShardedSet:
        """The set's values, read and built a chunk (then a shard) at a time, letting Checks
        run in between."""
        builder = ShardedSetBuilder(size)
        try:
            async for chunk in self.repo.scan(tenant, name):
                if any(len(raw) > MAX_VALUE_BYTES for raw in chunk):
                    raise Unreadable(f"a value is longer than {MAX_VALUE_BYTES} bytes")
                try:
                    builder.add_all([raw.decode() for raw in chunk])
                except UnicodeDecodeError:
                    raise Unreadable("a value is not UTF-8 text") from None
                await asyncio.sleep(0)
        except ResponseError as exc:  # e.g. WRONGTYPE
            raise Unreadable(f"unreadable: {exc}") from None
        for _ in builder.steps():
            await asyncio.sleep(0)
        return builder.result

    def _reject(self, sink: Sink, key: Key, version: str, problem: str) -> None:
        if not self._first(key, f"{version}:{problem}"):
            return
        tenant, name = key
        held = self._held.get(key)
        keeping = (
            f"keeping version {held}"
            if held is not None
            else "not loaded: the conditions that read it fail closed"
        )
        error = DocumentError(
            f"DataSet {name!r}: {problem}; {keeping}",
            location=Location(f"redis:{self.repo.keys.set(tenant, name)}@{version}"),
        )
        sink.reject(tenant, f"{name}@{version}", error, hold=False)

    def _gone(self, key: Key) -> None:
        if key in self._held and self._first(key, "gone"):
            log.error(
                "data set missing from redis; keeping the last good version (was redis emptied?)",
                tenant=key[0],
                set=key[1],
                version=self._held[key],
            )

    def _first(self, key: Key, problem: str) -> bool:
        """Whether ``problem`` is new for ``key`` (each is reported once, not per look)."""
        if self._reported.get(key) == problem:
            return False
        self._reported[key] = problem
        return True


def _int(raw: str | None) -> int | None:
    return int(raw) if raw is not None and raw.isdigit() else None


def _deltas(entries: list[Any], count: int) -> list[Delta] | None:
    """The ``count`` log entries as (added, removed), or None when one is missing or is a
    replacement ("*"). Raises Unreadable for an entry that is not a change."""
    if len(entries) != count:
        return None
    out: list[Delta] = []
    for entry in entries:
        text = as_text(entry)
        if text is None or text == "*":
            return None
        try:
            change = json.loads(text)
        except ValueError:
            raise Unreadable("a change log entry is not JSON") from None
        if not isinstance(change, dict) or len(change) != 1:
            raise Unreadable("a change log entry is not {add: [...]} or {remove: [...]}")
        ((op, values),) = change.items()
        if op not in ("add", "remove") or not isinstance(values, list):
            raise Unreadable("a change log entry is not {add: [...]} or {remove: [...]}")
        if any(value_error(v) is not None for v in values):
            raise Unreadable("a change log entry holds a value that is not a set value")
        out.append((values, []) if op == "add" else ([], values))
    return out


async def _release(old: Set[str] | None) -> None:
    """Free a replaced set a shard at a time, so freeing a million values is no one pause."""
    if isinstance(old, ShardedSet):
        while old.shards:
            old.shards.pop()
            await asyncio.sleep(0)
