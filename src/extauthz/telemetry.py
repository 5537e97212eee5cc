"""Traces and metrics of every Check through the OpenTelemetry SDK.

``Telemetry.observe`` is the servicer's observer: called once per Check, after the response is
built, synchronously. It adds to counters and a histogram (in memory; a reader collects them on
scrape) and, when tracing is on, ends one SERVER span that covers the Check, parented on the
``traceparent`` (W3C) or ``b3``/``x-b3-*`` headers Envoy forwarded in the CheckRequest. The span
processor batches and exports off the event loop; nothing here does I/O.

Off costs nothing: without a tracer provider there is no span code on the path at all, and
without a meter provider no instrument is touched. ``telemetry_env`` builds both from the
standard ``OTEL_*`` variables and the settings.

Per-tenant labels are capped: the first ``max_tenants`` tenants seen get their own label value,
later ones share ``_other``, so a deployment with thousands of tenants can't blow up a scrape.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Final

from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider

from extauthz.authn import JwksCache
from extauthz.catalog import CompiledTenant
from extauthz.errors import Reason
from extauthz.model import RequestView
from extauthz.outcome import Outcome, decision_record
from extauthz.registry import Registry

__all__ = ["OTHER_TENANT", "SPAN_NAME", "Telemetry", "TenantLabels", "default_propagator"]

SPAN_NAME: Final = "envoy.service.auth.v3.Authorization/Check"
# Span attributes are the decision record's fields under this prefix (the record's
# ``shadow_x`` as ``shadow.x``, ``authn_cache`` as the boolean ``jwt_cache_hit``); a span
# leaves out status, detail and the request principal.
SPAN_PREFIX: Final = "extauthz."
OTHER_TENANT: Final = "_other"
INSTRUMENTATION: Final = "extauthz"
# Seconds: a Check is decided in tens of microseconds, a slow one (JWT verify) in milliseconds.
DURATION_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
)  # fmt: skip
_DECISION: Final = {True: "allow", False: "deny"}
_CACHE_RESULT: Final = {True: {"result": "hit"}, False: {"result": "miss"}}
_EMPTY: Final[Mapping[str, str]] = {}


def default_propagator() -> TextMapPropagator:
    """W3C trace context and B3 (single and multi header), unless ``OTEL_PROPAGATORS`` says."""
    import os

    if os.environ.get("OTEL_PROPAGATORS"):
        return get_global_textmap()
    from opentelemetry.propagators.b3 import B3MultiFormat
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return CompositePropagator([TraceContextTextMapPropagator(), B3MultiFormat()])


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


class Telemetry:
    """Spans and metrics for Checks. Either provider may be None: that signal is off."""

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        max_tenants: int = 100,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.metrics_port: int | None = None  # set by whoever serves the metrics
        self._tenant = TenantLabels(max_tenants)
        self._propagator = propagator or default_propagator()
        self._tracer = (
            tracer_provider.get_tracer(INSTRUMENTATION) if tracer_provider is not None else None
        )
        self._registry: Registry | None = None
        self._jwks: JwksCache | None = None
        self._metrics = meter_provider is not None
        if meter_provider is not None:
            self._instruments(meter_provider.get_meter(INSTRUMENTATION))

    @property
    def tracing(self) -> bool:
        return self._tracer is not None

    def bind(self, registry: Registry, jwks: JwksCache) -> None:
        """Read policy versions, store state and JWKS fetch counts from these at collection."""
        self._registry = registry
        self._jwks = jwks

    def shutdown(self) -> None:
        """Flush and stop exporters (spans still queued are exported)."""
        for provider in (self.tracer_provider, self.meter_provider):
            stop = getattr(provider, "shutdown", None)
            if stop is not None:
                stop()

    # -- the observer -------------------------------------------------------------------

    def observe(
        self, outcome: Outcome, view: RequestView | None, decision_id: str, seconds: float
    ) -> None:
        if self._metrics:
            self._count(outcome, seconds)
        if self._tracer is not None:
            self._span(outcome, view, decision_id, seconds)

    def _count(self, outcome: Outcome, seconds: float) -> None:
        decision = _DECISION[outcome.allowed]
        tenant = self._tenant(outcome.tenant)
        self._checks.add(1, {"tenant": tenant, "decision": decision, "reason": outcome.reason})
        self._duration.record(seconds, {"decision": decision})
        if outcome.jwt_cache_hit is not None:
            self._jwt_cache.add(1, _CACHE_RESULT[outcome.jwt_cache_hit])
        shadow = outcome.shadow
        if shadow is not None:
            self._shadow.add(
                1,
                {"tenant": tenant, "decision": _DECISION[shadow.allowed], "enforced": decision},
            )
        if outcome.reason is Reason.INTERNAL:
            self._internal.add(1)

    def _span(
        self, outcome: Outcome, view: RequestView | None, decision_id: str, seconds: float
    ) -> None:
        assert self._tracer is not None
        parent: Context = self._propagator.extract(view.headers if view is not None else _EMPTY)
        end = time.time_ns()
        span = self._tracer.start_span(
            SPAN_NAME, context=parent, kind=SpanKind.SERVER, start_time=end - int(seconds * 1e9)
        )
        if span.is_recording():
            span.set_attributes(span_attributes(outcome, view, decision_id))
            if outcome.reason is Reason.INTERNAL:
                span.set_status(Status(StatusCode.ERROR, "internal error"))
        span.end(end_time=end)

    # -- instruments --------------------------------------------------------------------

    def _instruments(self, meter: Meter) -> None:
        self._checks = meter.create_counter(
            "extauthz.checks", description="Checks by tenant, decision and reason code"
        )
        self._duration = meter.create_histogram(
            "extauthz.check.duration",
            unit="s",
            description="Time to decide one Check (decode to response)",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._shadow = meter.create_counter(
            "extauthz.shadow.decisions",
            description="Dry-run decisions (never enforced), with the enforced decision",
        )
        self._jwt_cache = meter.create_counter(
            "extauthz.jwt.cache.lookups", description="Verified-token cache lookups by result"
        )
        self._internal = meter.create_counter(
            "extauthz.internal.errors", description="Checks denied because of an internal error"
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
        meter.create_observable_gauge(
            "extauthz.ready", [self._observe_ready], description="1 once policies are loaded"
        )

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

    def _observe_store(self, _: CallbackOptions) -> Iterable[Observation]:
        return [] if self._registry is None else [Observation(int(self._registry.connected))]

    def _observe_ready(self, _: CallbackOptions) -> Iterable[Observation]:
        return [] if self._registry is None else [Observation(int(self._registry.ready))]

    def _tenants(self) -> list[tuple[str, CompiledTenant]]:
        return [] if self._registry is None else sorted(self._registry.snapshot.tenants.items())


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
