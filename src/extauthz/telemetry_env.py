"""Build ``Telemetry`` from the standard ``OTEL_*`` variables and the settings.

Tracing is opt-in: it is on when ``OTEL_TRACES_EXPORTER`` names exporters other than ``none``
(``otlp`` needs the ``otlp`` extra, ``console`` ships with the SDK; any exporter registered under
the SDK's ``opentelemetry_traces_exporter`` entry points works) or when an OTLP endpoint is set
(``OTEL_EXPORTER_OTLP_ENDPOINT``/``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, exporter ``otlp``).
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_SAMPLER=always_off`` turn it off entirely. The
sampler (``OTEL_TRACES_SAMPLER``/``_ARG``, default parent-based always-on), the resource
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``; service name ``extauthz`` by default) and
the batch processor (``OTEL_BSP_*``) are the SDK's own readings of the same variables.

Metrics are on when ``--metrics-listen`` is set: a Prometheus reader in this process (and the
Check duration histogram's collector, in the same prometheus_client registry), served over HTTP
by prometheus_client from a thread of its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

import structlog
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from extauthz.settings import Settings, parse_hostport
from extauthz.telemetry import Telemetry

__all__ = ["TelemetryError", "serve_metrics", "telemetry_from_settings", "tracer_provider_from_env"]

log = structlog.get_logger("extauthz.telemetry")


class TelemetryError(ValueError):
    """Tracing or metrics are configured in a way that can't work; raised before serving."""


def resource(environ: Mapping[str, str]) -> Resource:
    named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    return Resource.create({} if named else {"service.name": "extauthz"})


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and (
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = ["otlp"]
    return [n for n in names if n != "none"]


def _exporter(name: str) -> SpanExporter:
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        hint = " (pip install 'extauthz[otlp]')" if name == "otlp" else ""
        raise TelemetryError(f"OTEL_TRACES_EXPORTER: no span exporter named {name!r}{hint}")
    exporter: SpanExporter = next(iter(found)).load()()
    return exporter


def tracer_provider_from_env(environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """A provider with one batch processor per configured exporter, or None: tracing off."""
    env = os.environ if environ is None else environ
    names = exporter_names(env)
    if not names:
        return None
    provider = TracerProvider(resource=resource(env))
    if provider.sampler is ALWAYS_OFF:
        return None
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    log.info("tracing on", exporters=names, sampler=provider.sampler.get_description())
    return provider


def telemetry_from_settings(settings: Settings) -> Telemetry:
    meter_provider: MeterProvider | None = None
    registry = None
    if settings.metrics_listen:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import REGISTRY

        registry = REGISTRY  # the SDK reader's, served by serve_metrics: both land on /metrics
        meter_provider = MeterProvider(
            metric_readers=[PrometheusMetricReader(registry=registry)],
            resource=resource(os.environ),
        )
    return Telemetry(
        tracer_provider=tracer_provider_from_env(),
        meter_provider=meter_provider,
        max_tenants=settings.metrics_max_tenants,
        prometheus_registry=registry,
    )


def serve_metrics(listen: str) -> tuple[Any, int]:
    """Serve prometheus_client's default registry on ``listen``; (server, bound port)."""
    from prometheus_client import start_http_server

    host, port = parse_hostport(listen, "metrics-listen")
    server, _ = start_http_server(port, addr=host)
    return server, int(server.server_port)
