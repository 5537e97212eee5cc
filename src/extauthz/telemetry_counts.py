"""What every Check adds to the metrics, kept in plain ints, dicts and lists.

A Check costs a few dict and list updates here; the OpenTelemetry SDK and prometheus_client
only read these structures when metrics are collected (on a scrape), so their cost is per
scrape and per series, never per Check.

One writer, any readers: ``CheckCounts`` is written only by the thread that runs the Checks
(the event loop) and read by whichever thread collects. Readers copy a structure with one C
call (``dict.copy``, ``list(...)``) before iterating, which the GIL makes atomic, so a
collection never sees a dict change size under it. A histogram's sum may trail its bucket
counts by the observation being written; every count is exact. Each process (each
``--workers`` worker) has its own counts; the supervisor gathers them per scrape.

The duration histogram is exposed through a prometheus_client collector (OpenTelemetry has no
observable histogram), with the same name, buckets and labels as the SDK's Prometheus
exporter gave the synchronous histogram it replaces.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Final

from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

from extauthz.errors import Reason
from extauthz.model import RequestView
from extauthz.outcome import Outcome

__all__ = [
    "DURATION_BUCKETS",
    "DURATION_METRIC",
    "OTHER_TENANT",
    "CheckCounts",
    "DurationCollector",
    "Histogram",
    "TenantLabels",
]

# Seconds: a Check is decided in tens of microseconds, a slow one (JWT verify) in milliseconds.
# (A variable-length tuple type: the compiled build sets a fixed-length Final tuple only after
# the module's generator expressions below have read it.)
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
)  # fmt: skip
DURATION_METRIC: Final = "extauthz_check_duration_seconds"
DURATION_HELP: Final = "Time to decide one Check (decode to response)"
OTHER_TENANT: Final = "_other"
_INTERNAL: Final = Reason.INTERNAL
_LE: Final = (*(floatToGoString(b) for b in DURATION_BUCKETS), "+Inf")  # type: ignore[no-untyped-call]


class Histogram:
    """Fixed buckets: ``counts[i]`` observations in (bounds[i-1], bounds[i]], last one +Inf.

    An observation is ``counts[bisect_left(DURATION_BUCKETS, seconds)] += 1; sum += seconds``
    (written out in ``CheckCounts.count``, the one writer).
    """

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.sum = 0.0

    def cumulative(self) -> tuple[list[int], float]:
        """(count of observations <= each bound and +Inf, sum), from one copy of the counts."""
        counts, total = list(self.counts), self.sum
        running = 0
        for i, n in enumerate(counts):
            running += n
            counts[i] = running
        return counts, total


class CheckCounts:
    """Checks by (tenant label, allowed, reason), dry-run decisions, JWT cache, durations."""

    __slots__ = ("checks", "durations", "internal", "jwt_cache", "labels", "shadow")

    def __init__(self, max_tenants: int = 100) -> None:
        self.labels = TenantLabels(max_tenants)
        self.checks: dict[tuple[str, bool, Reason], int] = {}
        # (tenant label, shadow allowed, enforced allowed)
        self.shadow: dict[tuple[str, bool, bool], int] = {}
        self.jwt_cache = [0, 0]  # [misses, hits]: indexed by the hit bool
        self.internal = 0
        self.durations = {True: Histogram(), False: Histogram()}  # by allowed

    def observe(
        self, outcome: Outcome, view: RequestView | None, decision_id: str, seconds: float
    ) -> None:
        """The servicer's observer of the counts (``answer.Observer``)."""
        self.count(self.labels(outcome.tenant), outcome, seconds)

    def count(self, tenant: str, outcome: Outcome, seconds: float) -> None:
        """One Check, decided in ``seconds``; ``tenant`` is its label (``TenantLabels``)."""
        allowed, reason = outcome.allowed, outcome.reason
        key = (tenant, allowed, reason)
        checks = self.checks
        checks[key] = checks.get(key, 0) + 1
        histogram = self.durations[allowed]
        histogram.counts[bisect_left(DURATION_BUCKETS, seconds)] += 1
        histogram.sum += seconds
        hit = outcome.jwt_cache_hit
        if hit is not None:
            self.jwt_cache[hit] += 1
        shadow = outcome.shadow
        if shadow is not None:
            skey = (tenant, shadow.allowed, allowed)
            self.shadow[skey] = self.shadow.get(skey, 0) + 1
        if reason is _INTERNAL:
            self.internal += 1


class TenantLabels:
    """Tenant name -> metric label value; at most ``limit`` distinct values besides _other."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = max(0, limit)
        self._seen: dict[str, str] = {}

    def __call__(self, tenant: str) -> str:
        label = self._seen.get(tenant)
        if label is None:
            if len(self._seen) >= self._limit:
                return OTHER_TENANT
            label = self._seen[tenant] = tenant
        return label


class DurationCollector:
    """A prometheus_client collector of ``extauthz_check_duration_seconds{decision}``."""

    def __init__(self, counts: CheckCounts, scope_labels: dict[str, str]) -> None:
        self._durations = counts.durations
        self._scope = scope_labels

    def describe(self) -> list[Metric]:
        # Nothing to check for clashes at registration (the families are known only on collect).
        return []

    def collect(self) -> Iterator[Metric]:
        family = Metric(DURATION_METRIC, DURATION_HELP, "histogram")
        for allowed, decision in ((True, "allow"), (False, "deny")):
            cumulative, total = self._durations[allowed].cumulative()
            count = cumulative[-1]
            if not count:
                continue  # as with a synchronous instrument: a series appears when first seen
            labels = {"decision": decision, **self._scope}
            for le, n in zip(_LE, cumulative, strict=True):
                family.add_sample(f"{DURATION_METRIC}_bucket", {**labels, "le": le}, n)
            family.add_sample(f"{DURATION_METRIC}_count", labels, count)
            family.add_sample(f"{DURATION_METRIC}_sum", labels, total)
        if family.samples:
            yield family
