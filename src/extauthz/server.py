"""The server's lifecycle, top to bottom: startup -> serve until a signal -> drain -> exit.

Signal handlers only set an event or a flag. On SIGTERM (or SIGINT) health turns NOT_SERVING
and the server keeps answering until no Check has arrived for DRAIN_QUIET seconds (or the
grace period is spent): Checks already queued in the server or on the wire are decided, not
cancelled. Then it stops taking new calls and waits what is left of the grace period (at
least a second) for those in flight, and closes the store, the JWKS cache and the telemetry
exporters. SIGHUP asks the store to
re-read its documents now (a store with a ``reload()``; the file store has one).
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any, Final, Protocol, runtime_checkable

import grpc
import structlog
from envoy.service.auth.v3 import external_auth_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from extauthz import compiled
from extauthz.app import Components, build
from extauthz.health import Health
from extauthz.registry import Registry
from extauthz.servicer import add_to_server
from extauthz.settings import Settings
from extauthz.store.ratelimit_sync import RateLimitSync

__all__ = ["Server", "serve"]

log = structlog.get_logger("extauthz.server")

DRAIN_QUIET: Final = 0.5  # seconds without a new Check that end the drain
GRPC_OPTIONS: Final = (
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.max_concurrent_streams", 1024),
)


@runtime_checkable
class Reloadable(Protocol):
    def reload(self) -> None: ...


def grpc_options(reuse_port: bool) -> tuple[tuple[str, Any], ...]:
    """SO_REUSEPORT only for a supervisor's workers: alone, a second server must fail to bind."""
    return (("grpc.so_reuseport", int(reuse_port)), *GRPC_OPTIONS)


class Server:
    def __init__(self, components: Components) -> None:
        self.components = components
        self.health = Health()
        self.should_exit = asyncio.Event()
        self._grpc: grpc.aio.Server | None = None
        self._store_task: asyncio.Task[None] | None = None
        self._ratelimit: RateLimitSync | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._metrics_server: Any = None

    async def serve(self) -> None:
        await self.startup()
        try:
            await self.should_exit.wait()
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        c = self.components
        c.registry.subscribe(self._on_registry_change)
        await self.health.update(c.registry)
        server = grpc.aio.server(options=grpc_options(c.settings.reuse_port))
        add_to_server(c.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        reflection.enable_server_reflection(
            (
                external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        bound = server.add_insecure_port(c.settings.listen)
        if not bound:
            raise OSError(f"cannot listen on {c.settings.listen}")
        self._start_metrics()
        await server.start()
        self._grpc = server
        log.info(
            "serving",
            listen=c.settings.listen,
            port=bound,
            store=c.store.name,
            build=compiled.build(),
        )
        await c.jwks.start()
        self._store_task = asyncio.create_task(c.store.run(c.registry), name="store")
        self._store_task.add_done_callback(self._on_store_exit)
        if c.settings.redis_url:
            self._ratelimit = RateLimitSync.start(
                c.limiter, c.settings.redis_url, c.settings.ratelimit_sync_interval
            )
        self._install_signal_handlers()

    async def shutdown(self) -> None:
        c = self.components
        await self.health.drain()
        if self._grpc is not None:
            log.info("draining", grace_seconds=c.settings.grace_period)
            remaining = await self._drain(c.settings.grace_period)
            await self._grpc.stop(max(1.0, remaining))
        if self._store_task is not None:
            self._store_task.cancel()
            await asyncio.gather(self._store_task, return_exceptions=True)
        await c.store.close()
        if self._ratelimit is not None:
            await self._ratelimit.stop()
        await c.jwks.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        c.telemetry.shutdown()
        log.info("stopped")

    async def _drain(self, grace: float) -> float:
        """Answer Checks until DRAIN_QUIET passes without one (at most ``grace`` seconds);
        returns the grace left."""
        servicer = self.components.servicer
        start, answered = time.perf_counter(), servicer.checks  # the clock of last_check
        deadline = start + grace
        while True:
            now = time.perf_counter()
            quiet_until = max(servicer.last_check, start) + DRAIN_QUIET
            if now >= deadline or now >= quiet_until:
                break
            await asyncio.sleep(min(quiet_until, deadline) - now)
        log.info("drained", checks_answered=servicer.checks - answered)
        return max(0.0, deadline - time.perf_counter())

    def _start_metrics(self) -> None:
        c = self.components
        if not c.settings.metrics_listen or c.telemetry.meter_provider is None:
            return
        from extauthz.telemetry_env import serve_metrics

        try:
            self._metrics_server, port = serve_metrics(c.settings.metrics_listen)
        except OSError as exc:  # metrics are auxiliary: Checks are served all the same
            log.error(
                "metrics endpoint unavailable", listen=c.settings.metrics_listen, error=str(exc)
            )
            return
        c.telemetry.metrics_port = port
        log.info("metrics", listen=c.settings.metrics_listen, port=port)

    def _reload(self) -> None:
        store = self.components.store
        if isinstance(store, Reloadable):
            store.reload()
        else:
            log.warning("SIGHUP: this store reloads on its own", store=store.name)

    def _on_registry_change(self, registry: Registry) -> None:
        task = asyncio.get_running_loop().create_task(self.health.update(registry))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _on_store_exit(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("store stopped; serving the last loaded policies", error=repr(exc))

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.should_exit.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)


def run_loop(main: Any) -> None:
    """Run a coroutine on uvloop when it is installed (the "fast" extra), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def serve(settings: Settings) -> None:
    """Run the server until SIGTERM/SIGINT."""
    components = build(settings)
    run_loop(Server(components).serve())
