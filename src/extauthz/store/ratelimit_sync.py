"""The background reconciliation of the local counters with Redis (no Redis in a Check).

Every ``interval`` seconds one pipeline carries, for each counter that was used since the
last sync, ``HINCRBY`` of the admissions made since (or ``HGET`` when there were none) and
reads back the window's total across replicas. A counter's hash is
``{P}:{tenant}:ratelimit:<limit>:<seconds>:<window start>`` (field: the key hash), so the
keys of one tenant stay in one Cluster slot; each hash expires at the end of its window
(plus a minute). Once a second the replica also refreshes its entry in the live-replica set
``{P}:ratelimit:replicas`` and reads how many replicas are live (N, for the shares).

A failed sync keeps the admissions it carried as pending (they are sent again: Redis may
count some twice, which only makes the limit stricter); the first failure is logged and
counted, and the limiter then reports an outage to the limits (``onStoreOutage``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Final

import structlog

from extauthz.ratelimit.limiter import Counter, Limiter

__all__ = ["RedisSync", "hash_key", "replicas_key"]

log = structlog.get_logger("extauthz.ratelimit")

EXPIRY_SLACK: Final = 60  # seconds a window's hash outlives the window
REPLICA_TTL: Final = 5.0  # a replica not seen for this long is not counted in N
REGISTER_EVERY: Final = 1.0


def hash_key(prefix: str, tenant: str, limit: str, seconds: int, window: int) -> str:
    return f"{prefix}:{{{tenant}}}:ratelimit:{limit}:{seconds}:{window}"


def replicas_key(prefix: str) -> str:
    return f"{prefix}:ratelimit:replicas"


class RedisSync:
    """Reconciles ``limiter`` with Redis every ``interval`` seconds until cancelled."""

    def __init__(
        self,
        limiter: Limiter,
        client: Any,
        prefix: str,
        *,
        interval: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limiter = limiter
        self.client = client
        self.prefix = prefix
        self.interval = interval
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._clock = clock
        self._registered = 0.0
        self._expiring: set[str] = set()  # hashes this replica has already set to expire
        limiter.shared = True
        # a heartbeat (the replica set) succeeds every second at least while Redis answers
        limiter.stale_after = max(3.0, 10 * interval)
        limiter.last_ok = clock()

    async def run(self) -> None:
        while True:
            try:
                await self.sync_once()
            except Exception as exc:  # never stop syncing on one bad round
                self._failed(exc)
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        # leaving is best effort: the entry expires anyway
        with contextlib.suppress(Exception):
            await self.client.zrem(replicas_key(self.prefix), self.replica)
        await self.client.aclose()

    async def sync_once(self) -> None:
        limiter = self.limiter
        now = self._clock()
        limiter.prune(now)
        self._expiring = {k for k in self._expiring if _window_end(k) > now}
        batch: list[tuple[Counter, int, int]] = []  # counter, delta, index of its total
        pipe = self.client.pipeline(transaction=False)
        queued = 0
        for (tenant, limit, seconds, window, field), counter in limiter.counters.items():
            if not counter.touched and not counter.pending:
                continue
            key = hash_key(self.prefix, tenant, limit, seconds, window)
            delta = counter.pending
            counter.sent += delta
            counter.pending = 0
            counter.touched = False
            batch.append((counter, delta, queued))
            queued += 1
            if delta:
                pipe.hincrby(key, field, delta)
                if key not in self._expiring:
                    pipe.expireat(key, window + seconds + EXPIRY_SLACK)
                    self._expiring.add(key)
                    queued += 1
            else:
                pipe.hget(key, field)
        register = now - self._registered >= REGISTER_EVERY
        if register:
            rk = replicas_key(self.prefix)
            pipe.zadd(rk, {self.replica: now})
            pipe.zremrangebyscore(rk, "-inf", now - REPLICA_TTL)
            pipe.zcard(rk)
            pipe.expire(rk, int(REPLICA_TTL * 4))
        if not batch and not register:
            return
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # any failure is an outage, never a crash
            self._expiring.clear()
            for counter, delta, _ in batch:
                counter.sent -= delta
                counter.pending += delta
            self._failed(exc)
            return
        self._apply(batch, results, register, now)

    def _apply(
        self, batch: list[tuple[Counter, int, int]], results: list[Any], register: bool, now: float
    ) -> None:
        limiter = self.limiter
        error: BaseException | None = None
        if register:
            count = results[-2]
            if isinstance(count, int):
                limiter.replicas = max(1, count)
                self._registered = now
        for counter, delta, index in batch:
            total = results[index]
            counter.sent -= delta
            if isinstance(total, BaseException):
                error = total
                counter.pending += delta
                continue
            counter.known = int(total or 0)
            counter.replicas = limiter.replicas
        if error is not None:
            self._expiring.clear()
            self._failed(error)
            return
        limiter.stats.syncs += 1
        limiter.last_ok = now
        if limiter.failing:
            limiter.failing = False
            log.warning("rate limit store reachable again; counts are shared")

    def _failed(self, exc: BaseException) -> None:
        limiter = self.limiter
        limiter.stats.sync_errors += 1
        if not limiter.failing:
            limiter.failing = True
            log.error(
                "rate limit store unreachable; limits with onStoreOutage: local enforce "
                "each replica's share from local counts, those with deny deny",
                error=repr(exc),
            )


def _window_end(key: str) -> int:
    """``...:<seconds>:<window start>`` -> the end of that window."""
    _, seconds, start = key.rsplit(":", 2)
    return int(start) + int(seconds)


class RateLimitSync:
    """The sync task of a server: started after the port opens, stopped at shutdown."""

    def __init__(self, sync: RedisSync) -> None:
        self.sync = sync
        self.task = asyncio.create_task(self._run(), name="ratelimit-sync")

    @classmethod
    def start(cls, limiter: Limiter, url: str, interval: float) -> RateLimitSync:
        from extauthz.store.redis_client import connect, parse_url

        target = parse_url(url)
        timeout = max(1.0, 5 * interval)  # a hung Redis is an outage, not a stuck sync
        client = connect(target, socket_timeout=timeout, socket_connect_timeout=timeout)
        return cls(RedisSync(limiter, client, target.prefix, interval=interval))

    async def _run(self) -> None:
        try:
            await self.sync.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: counts stay local, and the limiter reports an outage
            self.sync.limiter.failing = True
            log.exception("rate limit sync stopped; limits count locally")

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.sync.close()
