"""The local side of the shared counters: decide from memory, count, hand deltas to the sync.

Fixed windows aligned to the epoch: the window of a limit of ``seconds`` at instant ``now``
starts at ``now // seconds * seconds``, the same on every replica. A counter per (tenant,
limit, window, key hash) holds

- ``known``: the window's total across replicas, as Redis returned it at the last sync
  (this replica's flushed admissions included);
- ``sent``: admissions in the sync that is in flight; ``pending``: admissions since;
- ``replicas``: N, the number of live replicas the last sync saw.

A Check is admitted by a limit when ``sent + pending < ceil((requests - known) / N)``: this
replica's share of what is left (which implies ``known + sent + pending < requests``).
Nothing here awaits or does I/O; the sync task (``sync.py``) runs on the same event loop,
so the two never interleave inside a Check.

Bound (see docs): in one window, at most ``requests + (N - 1) * ceil(requests / N)``
requests are admitted across N replicas that all know N, whatever the load and the sync
interval; the share caps what any replica can admit that the others have not yet seen.
While Redis is unreachable a replica keeps enforcing its share of each window
(``onStoreOutage: local``) or denies (``deny``).

Memory: at most ``maxKeys`` counters per limit and window on a replica; further key values
count together in one overflow counter of that limit (they share its quota), which is
counted and logged once per limit and window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NamedTuple

import structlog

from extauthz.model import Subject
from extauthz.policy.matchers import Ctx
from extauthz.ratelimit.schema import CompiledLimit, RateLimits

__all__ = ["OVERFLOW", "Counter", "LimitDecision", "Limiter", "LimiterStats", "new_ctx"]

log = structlog.get_logger("extauthz.ratelimit")

OVERFLOW: Final = "_overflow"
CounterKey = tuple[str, str, int, int, str]  # tenant, limit id, seconds, window start, key hash


class Counter:
    """One (limit, window, key) on this replica."""

    __slots__ = ("known", "pending", "replicas", "sent", "touched")

    def __init__(self, replicas: int) -> None:
        self.known = 0
        self.sent = 0
        self.pending = 0
        self.replicas = replicas  # N at the last sync
        self.touched = True  # read back at the next sync

    def admits(self, requests: int) -> bool:
        """Under this replica's share, ``ceil((requests - known) / N)``, of what is left.
        Computed from the limit as it is now: a policy update applies at once."""
        return self.sent + self.pending < -(-(requests - self.known) // self.replicas)


class LimitDecision(NamedTuple):
    """What the limits say about one allowed request."""

    admitted: bool
    limit: str  # the deciding limit's id (the tightest one, or the one exceeded)
    headers: tuple[tuple[str, str], ...]  # RateLimit-Policy, RateLimit (+ retry-after)
    outage: bool = False  # denied because Redis is unreachable (onStoreOutage: deny)


@dataclass(slots=True)
class LimiterStats:
    """Counts read by telemetry at collection."""

    admitted: int = 0
    limited: int = 0
    outage_local: int = 0  # decisions made on local counts only while Redis is unreachable
    outage_deny: int = 0  # requests denied by a limit with onStoreOutage: deny
    overflow: int = 0  # requests counted in an overflow counter (maxKeys reached)
    sync_errors: int = 0
    syncs: int = 0


class Limiter:
    """The counter table of this replica. ``check`` is called by the pipeline."""

    def __init__(self, *, clock: Callable[[], float] = time.time, stale_after: float = 0.0) -> None:
        self.counters: dict[CounterKey, Counter] = {}
        self.sizes: dict[tuple[str, str, int], int] = {}  # (tenant, limit, window) -> keys
        self.stats = LimiterStats()
        self.replicas = 1
        self.shared = False  # a sync task reconciles with Redis
        self.failing = False  # the last sync failed
        self.last_ok = 0.0
        self.stale_after = stale_after  # no good sync for this long: Redis is unreachable
        self._clock = clock
        self._next_prune = 0.0

    def outage(self, now: float) -> bool:
        if not self.shared:
            return False
        return self.failing or (self.stale_after > 0 and now - self.last_ok > self.stale_after)

    def check(self, tenant: str, limits: RateLimits, ctx: Ctx) -> LimitDecision | None:
        """Admit (and count) or refuse one request that the policies allowed. None: no limit
        applies. A request is counted only when every limit that applies admits it."""
        now = self._clock()
        if now >= self._next_prune:  # also without a sync task (file store): bounded memory
            self._next_prune = now + 1.0
            self.prune(now)
        outage = self.outage(now)
        hits: list[tuple[CompiledLimit, Counter, int]] = []
        for limit in limits.limits:
            if limit.applies is not None and not limit.applies(ctx):
                continue
            if outage and limit.deny_on_outage:
                self.stats.outage_deny += 1
                return _unavailable(limit)
            window = int(now // limit.seconds) * limit.seconds
            counter = self._counter(tenant, limit, window, limit.key_of(ctx, tenant))
            hits.append((limit, counter, window))
        if not hits:
            return None
        if outage:
            self.stats.outage_local += 1
        refused = [(lim, c, w) for lim, c, w in hits if not c.admits(lim.requests)]
        if refused:
            for _, counter, _ in refused:
                counter.touched = True  # read back at the next sync: its share may grow
            self.stats.limited += 1
            return _over(refused, now)
        for _, counter, _ in hits:
            counter.pending += 1
            counter.touched = True
        self.stats.admitted += 1
        return _under(hits, now)

    def _counter(self, tenant: str, limit: CompiledLimit, window: int, key: str) -> Counter:
        ck = (tenant, limit.id, limit.seconds, window, key)
        counter = self.counters.get(ck)
        if counter is not None:
            return counter
        size_key = (tenant, limit.id, window)
        size = self.sizes.get(size_key, 0)
        if size >= limit.max_keys:
            self.stats.overflow += 1
            ck = (tenant, limit.id, limit.seconds, window, OVERFLOW)
            counter = self.counters.get(ck)
            if counter is not None:
                return counter
            log.warning(
                "rate limit key table full; further keys share the overflow counter",
                tenant=tenant,
                limit=limit.id,
                max_keys=limit.max_keys,
            )
        else:
            self.sizes[size_key] = size + 1
        counter = self.counters[ck] = Counter(self.replicas)
        return counter

    def prune(self, now: float) -> None:
        """Forget the counters of windows that have ended."""
        ended = [k for k in self.counters if k[3] + k[2] <= now]
        for k in ended:
            del self.counters[k]
        live = {(k[0], k[1], k[3]) for k in self.counters}
        for sk in [s for s in self.sizes if s not in live]:
            del self.sizes[sk]


def _policy(limit: CompiledLimit) -> str:
    return limit.policy_header


def _reset(limit: CompiledLimit, window: int, now: float) -> int:
    return max(1, math.ceil(window + limit.seconds - now))


def _under(hits: list[tuple[CompiledLimit, Counter, int]], now: float) -> LimitDecision:
    """Admitted: the headers of the tightest limit (least remaining, then latest reset)."""

    def remaining(hit: tuple[CompiledLimit, Counter, int]) -> int:
        limit, c, _ = hit
        return max(0, limit.requests - c.known - c.sent - c.pending)

    if len(hits) == 1:
        limit, counter, window = hits[0]
    else:
        limit, counter, window = min(hits, key=lambda h: (remaining(h), -_reset(h[0], h[2], now)))
    left = remaining((limit, counter, window))
    headers = (
        ("ratelimit-policy", _policy(limit)),
        ("ratelimit", f'"{limit.id}";r={left};t={_reset(limit, window, now)}'),
    )
    return LimitDecision(True, limit.id, headers)


def _over(refused: list[tuple[CompiledLimit, Counter, int]], now: float) -> LimitDecision:
    """Refused: retry after the latest reset among the limits that refused. A replica whose
    share is spent while the window has quota left asks for a retry after one second."""

    def wait(hit: tuple[CompiledLimit, Counter, int]) -> int:
        limit, c, window = hit
        if c.known + c.sent + c.pending < limit.requests:
            return 1  # the share of this replica is spent; the next sync brings more
        return _reset(limit, window, now)

    limit, _, _ = hit = max(refused, key=wait)
    retry = wait(hit)
    headers = (
        ("ratelimit-policy", _policy(limit)),
        ("ratelimit", f'"{limit.id}";r=0;t={retry}'),
        ("retry-after", str(retry)),
    )
    return LimitDecision(False, limit.id, headers)


def _unavailable(limit: CompiledLimit) -> LimitDecision:
    headers = (
        ("ratelimit-policy", _policy(limit)),
        ("ratelimit", f'"{limit.id}";r=0;t=1'),
        ("retry-after", "1"),
    )
    return LimitDecision(False, limit.id, headers, outage=True)


def new_ctx(limits: RateLimits, subject: Subject) -> Ctx:
    """The matchers' view of a request, for the limits' rules and keys."""
    return Ctx(subject, limits.space_delimited)
