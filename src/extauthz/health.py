"""gRPC health that mirrors readiness: NOT_SERVING until the first load and from SIGTERM on.

Readiness is the default service ``""`` (and the Authorization service's name). Liveness is
the service ``extauthz.liveness``: SERVING as long as the process runs, before the first load
too, so a liveness probe never restarts a pod that waits for its store (a Redis outage).
"""

from __future__ import annotations

from typing import Final

from grpc_health.v1 import health, health_pb2

from extauthz.registry import Registry

__all__ = ["LIVENESS", "SERVICES", "Health"]

SERVICES: Final = ("", "envoy.service.auth.v3.Authorization")
LIVENESS: Final = "extauthz.liveness"


class Health:
    """Owns the aio health servicer and keeps it in step with the registry."""

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()
        self.draining = False

    async def update(self, registry: Registry) -> None:
        serving = registry.ready and not self.draining
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in SERVICES:
            await self.servicer.set(service, status)
        if not self.draining:
            await self.servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)

    async def drain(self) -> None:
        self.draining = True
        await self.servicer.enter_graceful_shutdown()
