"""Traces and metrics of every Check: OpenTelemetry spans, counts read out at collection.

``Telemetry.observe`` is the servicer's observer: called once per Check, after the response is
built, synchronously. It adds to plain counts (``telemetry_counts.CheckCounts``) and, when a
span may be sampled, ends one SERVER span that covers the Check, parented on the
``traceparent`` (W3C) or ``b3``/``x-b3-*`` headers Envoy forwarded in the CheckRequest. The span
processor batches and exports off the event loop; nothing here does I/O.

Metrics are paid per scrape, not per Check: the counts are reported by observable instruments
whose callbacks run when a reader collects, and the duration histogram by a prometheus_client
collector registered next to the SDK's Prometheus reader (``prometheus_registry``). The OTel
SDK's synchronous instruments cost about 25 us per Check; the plain counts under 2 us.

Off costs nothing: without a tracer provider there is no span code on the path at all, and
without a meter provider nothing is counted. A provider whose sampler can never sample
(``always_off``, ``traceidratio`` 0, parent-based on those) is treated as none; a parent-based
sampler whose root sampler never samples skips a Check that carries none of the propagator's
headers (no propagator extract, no non-recording span). ``telemetry_env`` builds both
providers from the standard ``OTEL_*`` variables and the settings.

Per-tenant labels are capped: the first ``max_tenants`` tenants seen get their own label value,
later ones share ``_other``, so a deployment with thousands of tenants can't blow up a scrape.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Final

from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
from prometheus_client import CollectorRegistry

from extauthz.answer import Observer, no_observer
from extauthz.authn import JwksCache
from extauthz.catalog import CompiledTenant
from extauthz.errors import Reason
from extauthz.logs import dropped_records
from extauthz.model import RequestView
from extauthz.outcome import Outcome, decision_record
from extauthz.ratelimit.limiter import LimiterStats
from extauthz.registry import Registry
from extauthz.telemetry_counts import (
    DURATION_BUCKETS,
    OTHER_TENANT,
    CheckCounts,
    DurationCollector,
    TenantLabels,
)

__all__ = [
    "DURATION_BUCKETS",
    "OTHER_TENANT",
    "SPAN_NAME",
    "Sampling",
    "Telemetry",
    "TenantLabels",
    "default_propagator",
    "sampling_of",
]

SPAN_NAME: Final = "envoy.service.auth.v3.Authorization/Check"
# Span attributes are the decision record's fields under this prefix (the record's
# ``shadow_x`` as ``shadow.x``, ``authn_cache`` as the boolean ``jwt_cache_hit``); a span
# leaves out status, detail and the request principal.
SPAN_PREFIX: Final = "extauthz."
INSTRUMENTATION: Final = "extauthz"
_DECISION: Final = {True: "allow", False: "deny"}
_EMPTY: Final[Mapping[str, str]] = {}
# The labels the SDK's Prometheus exporter puts on every sample of this meter.
SCOPE_LABELS: Final = {
    "otel_scope_name": INSTRUMENTATION,
    "otel_scope_schema_url": "",
    "otel_scope_version": "",
}


def default_propagator() -> TextMapPropagator:
    """W3C trace context and B3 (single and multi header), unless ``OTEL_PROPAGATORS`` says."""
    import os

    if os.environ.get("OTEL_PROPAGATORS"):
        return get_global_textmap()
    from opentelemetry.propagators.b3 import B3MultiFormat
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return CompositePropagator([TraceContextTextMapPropagator(), B3MultiFormat()])


class Sampling(Enum):
    """What a tracer provider's sampler can decide for a Check's span, known before asking."""

    NEVER = "never"  # no span is ever sampled: tracing is off
    PARENT_ONLY = "parent_only"  # sampled only below a remote parent from the trace headers
    MAYBE = "maybe"  # anything else: ask the SDK every time


def sampling_of(provider: TracerProvider | None) -> Sampling:
    """Classify the provider's sampler; unknown samplers are ``MAYBE`` (always asked)."""
    sampler = getattr(provider, "sampler", None)
    if sampler is None:
        return Sampling.NEVER if provider is None else Sampling.MAYBE
    if _never(sampler):
        return Sampling.NEVER
    if isinstance(sampler, ParentBased) and _never(getattr(sampler, "_root", None)):
        return Sampling.PARENT_ONLY
    return Sampling.MAYBE


def _never(sampler: object) -> bool:
    """True for samplers known to drop every span whose parent is remote or absent."""
    if isinstance(sampler, ParentBased):
        delegates = ("_root", "_remote_parent_sampled", "_remote_parent_not_sampled")
        return all(_never(getattr(sampler, name, None)) for name in delegates)
    if isinstance(sampler, StaticSampler | TraceIdRatioBased):
        # Static: one decision for all. Ratio: trace id 0 is the likeliest to be sampled.
        return sampler.should_sample(None, 0, SPAN_NAME).decision is Decision.DROP
    return False


class Telemetry:
    """Spans and metrics for Checks. Either provider may be None: that signal is off."""

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        max_tenants: int = 100,
        propagator: TextMapPropagator | None = None,
        prometheus_registry: CollectorRegistry | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.metrics_port: int | None = None  # set by whoever serves the metrics
        self.counts = CheckCounts(max_tenants)
        self._tenant: TenantLabels = self.counts.labels
        self._propagator = propagator or default_propagator()
        self.sampling = sampling_of(tracer_provider)
        self._tracer = (
            tracer_provider.get_tracer(INSTRUMENTATION)
            if tracer_provider is not None and self.sampling is not Sampling.NEVER
            else None
        )
        # PARENT_ONLY: a Check without any of these headers has no parent, so no sampled span.
        self._parent_headers = (
            tuple(sorted(self._propagator.fields)) if self.sampling is Sampling.PARENT_ONLY else ()
        )
        self._registry: Registry | None = None
        self._ratelimits: LimiterStats | None = None
        self._jwks: JwksCache | None = None
        self._metrics = meter_provider is not None
        self._prometheus: tuple[CollectorRegistry, DurationCollector] | None = None
        if meter_provider is not None:
            self._instruments(meter_provider.get_meter(INSTRUMENTATION))
            if prometheus_registry is not None:
                collector = DurationCollector(self.counts, SCOPE_LABELS)
                prometheus_registry.register(collector)
                self._prometheus = (prometheus_registry, collector)

    @property
    def tracing(self) -> bool:
        return self._tracer is not None

    def bind(self, registry: Registry, jwks: JwksCache) -> None:
        """Read policy versions, store state and JWKS fetch counts from these at collection."""
        self._registry = registry
        self._jwks = jwks

    def bind_ratelimits(self, stats: LimiterStats) -> None:
        """Read the rate limiter's counts (outage decisions, overflow, syncs) at collection."""
        self._ratelimits = stats

    def shutdown(self) -> None:
        """Flush and stop exporters (spans still queued are exported)."""
        if self._prometheus is not None:
            registry, collector = self._prometheus
            self._prometheus = None
            registry.unregister(collector)
        for provider in (self.tracer_provider, self.meter_provider):
            stop = getattr(provider, "shutdown", None)
            if stop is not None:
                stop()

    # -- the observer -------------------------------------------------------------------

    @property
    def observer(self) -> Observer:
        """``observe``, or without tracing its one part that runs (the counts' own observer,
        one call less on every Check)."""
        if self._tracer is None:
            return self.counts.observe if self._metrics else no_observer
        return self.observe

    def observe(
        self, outcome: Outcome, view: RequestView | None, decision_id: str, seconds: float
    ) -> None:
        if self._metrics:
            self.counts.observe(outcome, view, decision_id, seconds)
        if self._tracer is not None:
            self._span(outcome, view, decision_id, seconds)

    def _span(
        self, outcome: Outcome, view: RequestView | None, decision_id: str, seconds: float
    ) -> None:
        assert self._tracer is not None
        headers = view.headers if view is not None else _EMPTY
        wanted = self._parent_headers
        if wanted and not any(name in headers for name in wanted):
            return  # the sampler samples only below a remote parent, and there is none
        parent: Context = self._propagator.extract(headers)
        end = time.time_ns()
        span = self._tracer.start_span(
            SPAN_NAME, context=parent, kind=SpanKind.SERVER, start_time=end - int(seconds * 1e9)
        )
        if span.is_recording():
            span.set_attributes(span_attributes(outcome, view, decision_id))
            if outcome.reason is Reason.INTERNAL:
                span.set_status(Status(StatusCode.ERROR, "internal error"))
        span.end(end_time=end)

    # -- instruments: every one is read from the counts (or the registry) on collection ---

    def _instruments(self, meter: Meter) -> None:
        meter.create_observable_counter(
            "extauthz.checks",
            [self._observe_checks],
            description="Checks by tenant, decision and reason code",
        )
        meter.create_observable_counter(
            "extauthz.shadow.decisions",
            [self._observe_shadow],
            description="Dry-run decisions (never enforced), with the enforced decision",
        )
        meter.create_observable_counter(
            "extauthz.jwt.cache.lookups",
            [self._observe_jwt_cache],
            description="Verified-token cache lookups by result",
        )
        meter.create_observable_counter(
            "extauthz.internal.errors",
            [self._observe_internal],
            description="Checks denied because of an internal error",
        )
        meter.create_observable_counter(
            "extauthz.jwks.fetches", [self._observe_jwks], description="JWKS fetches by result"
        )
        meter.create_observable_counter(
            "extauthz.policy.rejections",
            [self._observe_rejections],
            description="Tenant documents rejected (the last good version kept serving)",
        )
        meter.create_observable_gauge(
            "extauthz.policy.info",
            [self._observe_versions],
            description="1 for the policy version each tenant serves",
        )
        meter.create_observable_gauge(
            "extauthz.policy.age",
            [self._observe_ages],
            unit="s",
            description="Seconds since each tenant's policies were loaded",
        )
        meter.create_observable_gauge(
            "extauthz.store.connected",
            [self._observe_store],
            description="1 while the policy store is reachable",
        )
        meter.create_observable_counter(
            "extauthz.cel.errors",
            [self._observe_cel_errors],
            description="CEL and time-window evaluation errors (each decided fail-closed)",
        )
        meter.create_observable_gauge(
            "extauthz.ready", [self._observe_ready], description="1 once policies are loaded"
        )
        meter.create_observable_counter(
            "extauthz.log.records.dropped",
            [self._observe_log_drops],
            description="Log records dropped because stderr was slower than the server"
            " (--log-buffer full)",
        )
        meter.create_observable_counter(
            "extauthz.ratelimit.events",
            [self._observe_ratelimits],
            description="Rate limit decisions and syncs by event (outage_local, outage_deny, "
            "overflow, sync_error, sync, admitted, limited)",
        )

    # A series appears once it has been counted, as it did with synchronous instruments.

    def _observe_log_drops(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(dropped_records())]

    def _observe_checks(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(n, {"tenant": tenant, "decision": _DECISION[allowed], "reason": reason})
            for (tenant, allowed, reason), n in self.counts.checks.copy().items()
        ]

    def _observe_shadow(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                n,
                {"tenant": tenant, "decision": _DECISION[shadow], "enforced": _DECISION[enforced]},
            )
            for (tenant, shadow, enforced), n in self.counts.shadow.copy().items()
        ]

    def _observe_jwt_cache(self, _: CallbackOptions) -> Iterable[Observation]:
        misses, hits = self.counts.jwt_cache
        return [
            Observation(n, {"result": result})
            for n, result in ((misses, "miss"), (hits, "hit"))
            if n
        ]

    def _observe_internal(self, _: CallbackOptions) -> Iterable[Observation]:
        n = self.counts.internal
        return [Observation(n)] if n else []

    def _observe_jwks(self, _: CallbackOptions) -> Iterable[Observation]:
        if self._jwks is None:
            return []
        return [
            Observation(self._jwks.fetch_ok, {"result": "ok"}),
            Observation(self._jwks.fetch_error, {"result": "error"}),
        ]

    def _observe_rejections(self, _: CallbackOptions) -> Iterable[Observation]:
        return [] if self._registry is None else [Observation(self._registry.stats.rejected)]

    def _observe_versions(self, _: CallbackOptions) -> Iterable[Observation]:
        if self._registry is None:
            return []
        return [
            Observation(1, {"tenant": self._tenant(name), "version": t.version})
            for name, t in self._tenants()
        ]

    def _observe_ages(self, _: CallbackOptions) -> Iterable[Observation]:
        now = time.time()
        return [
            Observation(max(0.0, now - t.loaded_at), {"tenant": self._tenant(name)})
            for name, t in self._tenants()
            if t.loaded_at
        ]

    def _observe_ratelimits(self, _: CallbackOptions) -> Iterable[Observation]:
        stats = self._ratelimits
        if stats is None:
            return []
        events = {
            "admitted": stats.admitted,
            "limited": stats.limited,
            "outage_local": stats.outage_local,
            "outage_deny": stats.outage_deny,
            "overflow": stats.overflow,
            "sync_error": stats.sync_errors,
            "sync": stats.syncs,
        }
        return [Observation(n, {"event": e}) for e, n in events.items() if n]

    def _observe_cel_errors(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(t.custom.cel.errors.count, {"tenant": self._tenant(name)})
            for name, t in self._tenants()
            if t.custom is not None and t.custom.cel.errors.count
        ]

    def _observe_store(self, _: CallbackOptions) -> Iterable[Observation]:
        return [] if self._registry is None else [Observation(int(self._registry.connected))]

    def _observe_ready(self, _: CallbackOptions) -> Iterable[Observation]:
        return [] if self._registry is None else [Observation(int(self._registry.ready))]

    def _tenants(self) -> list[tuple[str, CompiledTenant]]:
        return [] if self._registry is None else self._registry.compiled_tenants()


def span_attributes(
    outcome: Outcome, view: RequestView | None, decision_id: str
) -> dict[str, str | int | bool | list[str]]:
    """What a Check span says: the decision and who decided, never a header value."""
    record = decision_record(outcome, decision_id)
    attrs: dict[str, str | int | bool | list[str]] = {
        "rpc.system": "grpc",
        "rpc.service": "envoy.service.auth.v3.Authorization",
        "rpc.method": "Check",
    }
    for name in ("decision", "reason", "decision_id", "tenant"):
        attrs[SPAN_PREFIX + name] = record[name]
    if outcome.policy:
        attrs["extauthz.policy"] = record["policy"]
        attrs["extauthz.rule"] = record["rule"]
    for name in ("policy_version", "principal"):
        if record.get(name):
            attrs[SPAN_PREFIX + name] = record[name]
    if "authn_cache" in record:
        attrs["extauthz.jwt_cache_hit"] = record["authn_cache"] == "hit"
    if "audit" in record:
        attrs["extauthz.audit"] = record["audit"]
    if "shadow_decision" in record:
        attrs["extauthz.shadow.decision"] = record["shadow_decision"]
        attrs["extauthz.shadow.reason"] = record["shadow_reason"]
        if record["shadow_policy"]:
            attrs["extauthz.shadow.policy"] = record["shadow_policy"]
            attrs["extauthz.shadow.rule"] = record["shadow_rule"]
    if view is not None:
        attrs["http.request.method"] = view.method
        attrs["server.address"] = view.host
        attrs["url.path"] = view.path.partition("?")[0]
    return attrs
