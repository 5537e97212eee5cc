"""An in-process ``Server`` on a real grpc.aio port, seen by the OTel SDK's in-memory readers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from extauthz.app import build
from extauthz.server import Server
from extauthz.settings import Settings
from extauthz.telemetry import Telemetry
from tests.helpers import Issuer, free_port, policy_yaml, tenant_yaml, until

HOST = "shop.example.com"
GET = "operation: {methods: [GET]}"
AUDITED = "operation: {paths: [/audited]}"
DRY_RUN = ", annotations: {extauthz.io/dry-run: 'true'}"


def shop_policies(directory: Path, issuer: Issuer) -> Path:
    """shop: GET allowed; AUDIT on /audited; a dry-run DENY on /shadowed."""
    docs = [
        tenant_yaml("shop", match=f"{{hosts: [{HOST}]}}", issuer=issuer),
        policy_yaml("allow-get", "shop", f"  action: ALLOW\n  rules: [{{to: [{{{GET}}}]}}]"),
        policy_yaml("audit", "shop", f"  action: AUDIT\n  rules: [{{to: [{{{AUDITED}}}]}}]"),
        policy_yaml(
            "dry-deny",
            "shop",
            "  action: DENY\n  rules: [{to: [{operation: {paths: [/shadowed]}}]}]",
            DRY_RUN,
        ),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "shop.yaml").write_text("---\n".join(docs))
    return directory


@dataclass
class Running:
    server: Server
    stub: Any
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    prometheus: CollectorRegistry

    async def check(self, request: external_auth_pb2.CheckRequest) -> Any:
        return await self.stub.Check(request, timeout=5)

    def points(self, name: str) -> list[tuple[Mapping[str, Any], Any]]:
        """(attributes, data point) of every point of metric ``name``."""
        data = self.metrics.get_metrics_data()
        out: list[tuple[Mapping[str, Any], Any]] = []
        if data is None:
            return out
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        out.extend((dict(p.attributes or {}), p) for p in metric.data.data_points)
        return out

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of every Prometheus sample ``name`` (the duration histogram's)."""
        return [
            (dict(s.labels), s.value)
            for family in self.prometheus.collect()
            for s in family.samples
            if s.name == name
        ]


@contextlib.asynccontextmanager
async def running(
    policies: Path, *, tracing: bool = True, max_tenants: int = 100, **settings: Any
) -> AsyncIterator[Running]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    prometheus = CollectorRegistry(auto_describe=True)
    telemetry = Telemetry(
        tracer_provider=tracer_provider if tracing else None,
        meter_provider=MeterProvider(metric_readers=[reader]),
        max_tenants=max_tenants,
        prometheus_registry=prometheus,
    )
    config = Settings(
        listen=f"127.0.0.1:{free_port()}", policies=policies, decision_log="none", **settings
    ).check()
    server = Server(build(config, telemetry=telemetry))
    await server.startup()
    channel = grpc.aio.insecure_channel(config.listen)
    try:
        await until(lambda: server.components.registry.ready, "the first load")
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        yield Running(server, stub, spans, reader, prometheus)
    finally:
        await channel.close()
        await server.shutdown()
