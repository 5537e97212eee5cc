"""Telemetry's per-Check counting and span sampling, driven through ``Telemetry.observe``.

The counts are read back through the OpenTelemetry SDK's in-memory reader (counters) and a
prometheus_client registry (the duration histogram), as a scrape would read them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import pytest
from opentelemetry.context import Context
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry

from extauthz.errors import Reason
from extauthz.model import RequestView
from extauthz.outcome import Outcome
from extauthz.telemetry import DURATION_BUCKETS, Sampling, Telemetry, sampling_of

ALLOW = Outcome(True, Reason.ALLOWED, 200, tenant="shop", policy="shop/p", rule=0)
DENY = Outcome(False, Reason.NO_ALLOW_MATCH, 403, tenant="shop")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
DURATION = "extauthz_check_duration_seconds"


def counted() -> tuple[Telemetry, InMemoryMetricReader, CollectorRegistry]:
    reader = InMemoryMetricReader()
    registry = CollectorRegistry()
    telemetry = Telemetry(
        meter_provider=MeterProvider(metric_readers=[reader]), prometheus_registry=registry
    )
    return telemetry, reader, registry


def checks(reader: InMemoryMetricReader) -> dict[tuple[str, str, str], int]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        (p.attributes["tenant"], p.attributes["decision"], p.attributes["reason"]): p.value  # type: ignore[misc, index, union-attr]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "extauthz.checks"
        for p in m.data.data_points
    }


def histogram(registry: CollectorRegistry, decision: str) -> dict[str, float]:
    """le -> cumulative count, plus 'count' and 'sum', for one decision."""
    out: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.labels.get("decision") != decision:
                continue
            if s.name == f"{DURATION}_bucket":
                out[s.labels["le"]] = s.value
            elif s.name in (f"{DURATION}_count", f"{DURATION}_sum"):
                out[s.name.rsplit("_", 1)[1]] = s.value
    return out


def test_duration_histogram_keeps_its_buckets_and_le_semantics() -> None:
    """A value on a bound counts in that bound's bucket; buckets are cumulative up to +Inf."""
    telemetry, _, registry = counted()
    for seconds in (0.00005, 0.00006, 0.3, 2.0):
        telemetry.observe(ALLOW, None, "d", seconds)
    h = histogram(registry, "allow")
    assert [k for k in h if k not in ("count", "sum")] == [
        *(str(b) for b in DURATION_BUCKETS),
        "+Inf",
    ]
    assert h["5e-05"] == 1
    assert h["0.0001"] == 2
    assert h["0.1"] == 2
    assert h["0.5"] == 3
    assert h["+Inf"] == h["count"] == 4
    assert h["sum"] == pytest.approx(2.30011)
    assert histogram(registry, "deny") == {}  # no deny yet: no series


def test_shutdown_removes_the_histogram_from_the_registry() -> None:
    """After shutdown the registry no longer serves this telemetry's histogram."""
    telemetry, _, registry = counted()
    telemetry.observe(DENY, None, "d", 0.001)
    assert histogram(registry, "deny")["count"] == 1
    telemetry.shutdown()
    assert histogram(registry, "deny") == {}


def test_counts_stay_exact_while_scraped_from_another_thread() -> None:
    """New series added during concurrent collections: no error, and every Check counted."""
    telemetry, reader, registry = counted()
    errors: list[BaseException] = []
    stop = threading.Event()

    def scrape() -> None:
        try:
            while not stop.is_set():
                reader.get_metrics_data()
                list(registry.collect())
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for i in range(20_000):
            telemetry.observe(ALLOW.replace(tenant=f"t{i % 90}"), None, "d", 0.0001)
    finally:
        stop.set()
        scraper.join()
    assert errors == []
    counts = checks(reader)
    assert len(counts) == 90
    assert sum(counts.values()) == 20_000
    assert histogram(registry, "allow")["count"] == 20_000


@pytest.mark.parametrize(
    ("sampler", "expected"),
    [
        (ALWAYS_OFF, Sampling.NEVER),
        (TraceIdRatioBased(0.0), Sampling.NEVER),
        (ParentBased(ALWAYS_OFF, remote_parent_sampled=ALWAYS_OFF), Sampling.NEVER),
        (ParentBased(ALWAYS_OFF), Sampling.PARENT_ONLY),
        (ParentBased(TraceIdRatioBased(0.0)), Sampling.PARENT_ONLY),
        (ParentBased(ALWAYS_ON), Sampling.MAYBE),
        (ParentBased(TraceIdRatioBased(0.001)), Sampling.MAYBE),
        (TraceIdRatioBased(0.001), Sampling.MAYBE),
        (ALWAYS_ON, Sampling.MAYBE),
    ],
)
def test_sampler_classified_before_any_check(sampler: Sampler, expected: Sampling) -> None:
    """Only samplers that provably drop a span skip it; any chance of sampling asks the SDK."""
    assert sampling_of(TracerProvider(sampler=sampler)) is expected


class CountingPropagator(CompositePropagator):
    """W3C + B3, counting extract calls."""

    def __init__(self) -> None:
        super().__init__([TraceContextTextMapPropagator(), B3MultiFormat()])
        self.extracts = 0

    def extract(self, carrier: Any, context: Context | None = None, getter: Any = None) -> Context:
        self.extracts += 1
        if getter is None:
            return super().extract(carrier, context)
        return super().extract(carrier, context, getter)


def traced(sampler: Sampler) -> tuple[Telemetry, InMemorySpanExporter, CountingPropagator]:
    spans = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(spans))
    propagator = CountingPropagator()
    return Telemetry(tracer_provider=provider, propagator=propagator), spans, propagator


def view(headers: Mapping[str, str]) -> RequestView:
    return RequestView(method="GET", host="shop.example.com", path="/", headers=headers)


def test_sampler_that_never_samples_costs_no_span_work() -> None:
    """TraceIdRatioBased(0): tracing counts as off, no extract, no span, even with a parent."""
    telemetry, spans, propagator = traced(TraceIdRatioBased(0.0))
    telemetry.observe(ALLOW, view({"traceparent": TRACEPARENT}), "d", 0.001)
    assert not telemetry.tracing
    assert propagator.extracts == 0
    assert spans.get_finished_spans() == ()


def test_parent_based_off_skips_checks_without_trace_headers() -> None:
    """ParentBased(ALWAYS_OFF): no trace header, no extract; a sampled parent still gets a span."""
    telemetry, spans, propagator = traced(ParentBased(ALWAYS_OFF))
    telemetry.observe(ALLOW, view({"user-agent": "x"}), "d", 0.001)
    telemetry.observe(ALLOW, None, "d", 0.001)
    assert propagator.extracts == 0
    assert spans.get_finished_spans() == ()
    telemetry.observe(ALLOW, view({"traceparent": TRACEPARENT}), "d", 0.001)
    (span,) = spans.get_finished_spans()
    assert format(span.context.trace_id, "032x") == TRACEPARENT.split("-")[1]
    b3 = {"x-b3-traceid": "a" * 32, "x-b3-spanid": "b" * 16, "x-b3-sampled": "1"}
    telemetry.observe(ALLOW, view(b3), "d", 0.001)
    assert len(spans.get_finished_spans()) == 2
    assert propagator.extracts == 2
