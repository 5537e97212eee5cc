"""``--workers N``: N server processes share the gRPC port under one supervisor.

The supervisor wraps the server from the outside. It spawns N workers (fresh interpreters:
gRPC does not survive ``fork``), each running the ordinary ``Server`` with SO_REUSEPORT so the
kernel spreads connections across them. It restarts a worker that dies (at most once a second
per slot), forwards SIGHUP (reload) to every worker, and on SIGTERM/SIGINT forwards SIGTERM,
waits for the workers to drain, and kills those still running after the grace period.

Metrics with several workers: each worker keeps its own OpenTelemetry meter and serves it on
an ephemeral 127.0.0.1 port that it reports back over a pipe; the supervisor alone listens on
``--metrics-listen`` and, on each scrape, gathers every worker's exposition and relabels each
sample with ``worker="<slot>"``. Prometheus sees one target per pod, counters stay exact
(``sum without (worker)``), and nothing is shared between processes but the scrape itself. A
worker's counters restart with it, which Prometheus's ``rate`` handles as a counter reset.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, Final

import structlog

from extauthz.settings import Settings

__all__ = ["Supervisor", "worker_main"]

log = structlog.get_logger("extauthz.supervisor")

MIN_RESTART_INTERVAL: Final = 1.0
TICK: Final = 0.2
EXTRA_STOP_SECONDS: Final = 5.0


@dataclass(slots=True)
class Worker:
    slot: int
    process: BaseProcess
    conn: Connection
    started: float
    metrics_port: int | None = None

    def poll(self) -> None:
        """Pick up the metrics port the worker reports once it serves."""
        try:
            while self.conn.poll():
                self.metrics_port = self.conn.recv()
        except (EOFError, OSError):
            pass


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.should_exit = threading.Event()
        self.restarts = 0
        self._hup = False
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[Worker | None] = [None] * settings.workers
        self._worker_settings = replace(
            settings,
            workers=1,
            reuse_port=True,
            metrics_listen="127.0.0.1:0" if settings.metrics_listen else None,
        )
        self._metrics: Any = None

    def run(self) -> int:
        self._install_signal_handlers()
        self._start_metrics()
        for slot in range(len(self._workers)):
            self._spawn(slot)
        log.info("supervising", workers=len(self._workers), pid=os.getpid())
        while not self.should_exit.wait(TICK):
            if self._hup:
                self._hup = False
                self._signal_all(signal.SIGHUP)
            self._keep_alive()
        self._stop_all()
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
        log.info("supervisor stopped", restarts=self.restarts)
        return 0

    # -- workers ------------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        parent, child = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=worker_main,
            args=(self._worker_settings, slot, child),
            name=f"extauthz-worker-{slot}",
        )
        process.start()
        child.close()
        self._workers[slot] = Worker(slot, process, parent, time.monotonic())
        log.info("worker started", worker=slot, pid=process.pid)

    def _keep_alive(self) -> None:
        now = time.monotonic()
        for slot, worker in enumerate(self._workers):
            if worker is None:
                continue
            worker.poll()
            if worker.process.is_alive() or now - worker.started < MIN_RESTART_INTERVAL:
                continue
            log.warning(
                "worker died; restarting",
                worker=slot,
                pid=worker.process.pid,
                exitcode=worker.process.exitcode,
            )
            worker.conn.close()
            self.restarts += 1
            self._spawn(slot)

    def _signal_all(self, sig: signal.Signals) -> None:
        for worker in self._workers:
            if worker is not None and worker.process.pid is not None and worker.process.is_alive():
                os.kill(worker.process.pid, sig)

    def _stop_all(self) -> None:
        log.info("stopping workers", grace_seconds=self.settings.grace_period)
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_period + EXTRA_STOP_SECONDS
        killed = 0
        for worker in self._workers:
            if worker is None:
                continue
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
                killed += 1
            worker.conn.close()
        if killed:
            log.warning("workers killed after the grace period", count=killed)

    # -- signals and metrics --------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        def stop(sig: int, frame: FrameType | None) -> None:
            self.should_exit.set()

        def hup(sig: int, frame: FrameType | None) -> None:
            self._hup = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    def _start_metrics(self) -> None:
        if not self.settings.metrics_listen:
            return
        from prometheus_client import CollectorRegistry, start_http_server

        from extauthz.settings import parse_hostport

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Gather(self))
        host, port = parse_hostport(self.settings.metrics_listen, "metrics-listen")
        try:
            self._metrics, _ = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            log.error(
                "metrics endpoint unavailable", listen=self.settings.metrics_listen, error=str(exc)
            )

    def workers(self) -> list[Worker]:
        return [w for w in self._workers if w is not None]


class _Gather:
    """A prometheus_client collector: every worker's metrics, labelled by worker slot."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
        from prometheus_client.parser import text_string_to_metric_families

        families: dict[str, Metric] = {}
        alive = 0
        for worker in self._supervisor.workers():
            worker.poll()
            if not worker.process.is_alive() or worker.metrics_port is None:
                continue
            alive += 1
            url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=2.0) as reply:
                    text = reply.read().decode()
            except OSError as exc:
                log.warning("worker metrics unavailable", worker=worker.slot, error=str(exc))
                continue
            for family in text_string_to_metric_families(text):
                out = families.get(family.name)
                if out is None:
                    out = families[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                slot = str(worker.slot)
                out.samples.extend(
                    s._replace(labels={**s.labels, "worker": slot}) for s in family.samples
                )
        yield from families.values()
        yield GaugeMetricFamily("extauthz_workers", "Workers serving metrics", value=alive)
        yield CounterMetricFamily(
            "extauthz_worker_restarts",
            "Workers restarted after they died",
            value=self._supervisor.restarts,
        )


def worker_main(settings: Settings, slot: int, conn: Connection) -> None:
    """A worker process: the ordinary server, which reports its metrics port to ``conn``."""
    from extauthz.logs import configure_logging, flush_logging
    from extauthz.server import run_loop

    configure_logging(settings.log_level, settings.log_format, settings.log_buffer)
    structlog.contextvars.bind_contextvars(worker=slot)
    try:
        run_loop(_serve(settings, conn))
    finally:
        conn.close()
        flush_logging()


async def _serve(settings: Settings, conn: Connection) -> None:
    import asyncio

    from extauthz.app import build
    from extauthz.server import Server

    server = Server(build(settings))
    await server.startup()
    try:
        conn.send(server.components.telemetry.metrics_port)
        parent = os.getppid()
        while not server.should_exit.is_set():
            if os.getppid() != parent:  # the supervisor is gone: don't live on as an orphan
                log.warning("supervisor gone; stopping")
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.should_exit.wait(), 1.0)
    finally:
        await server.shutdown()
