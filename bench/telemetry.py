"""What telemetry and workers cost: tracing on vs off per Check, and --workers 2 vs 1 under load.

    bash bench/setup.sh            # h2load (once)
    python bench/telemetry.py      # both parts; --part tracing | workers for one

Tracing (in process, no network): the servicer's work for the bench workload's Check (decode,
pipeline, response, observer) timed over ``--checks`` Checks per variant, variants interleaved
over ``--rounds`` rounds; the ratio is the median per-round time per Check against ``off``.
The variants: ``off`` (metrics only: no tracer provider, the default), ``unsampled`` (a provider
whose sampler drops every span: what ``OTEL_TRACES_SAMPLER=traceidratio`` with a ratio of 0
costs), ``on`` (every Check sampled; the request carries a sampled ``traceparent``, parent-based
sampler, BatchSpanProcessor into an exporter that drops the spans, so export I/O is not counted).

Workers (real processes): ``extauthz serve --workers 1`` and then ``--workers 2`` (decision logs
off, metrics on), each loaded with h2load on 127.0.0.1 for ``--duration`` seconds with
``--connections`` connections of 16 streams; the ratio is req/s of 2 workers over 1. h2load
itself needs a core, and this machine has two: the ratio says what a second worker gives here,
not on a larger machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload
from benchlib import CHECK_PATH, GrpcServer, extauthz_argv, h2load, require, response_encoder

from extauthz.app import make_observer
from extauthz.authn import JwksCache
from extauthz.decisionlog import DecisionLog
from extauthz.decode import decode
from extauthz.pipeline import CheckPipeline
from extauthz.registry import Registry
from extauthz.servicer import Observer
from extauthz.store.files import read_directory, sources_of
from extauthz.telemetry import Telemetry

Step = Callable[[], None]


class _Drop:
    """A span exporter that drops everything (export I/O is not what is measured)."""

    def export(self, spans: Sequence[object]) -> object:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def telemetry(variant: str) -> Telemetry:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
    if variant == "off":
        return Telemetry(meter_provider=meters)
    sampler = TraceIdRatioBased(0.0) if variant == "unsampled" else None
    tracer = TracerProvider(sampler=sampler)
    tracer.add_span_processor(BatchSpanProcessor(_Drop()))  # type: ignore[arg-type]
    return Telemetry(tracer_provider=tracer, meter_provider=meters)


def check_step(observer: Observer) -> Step:
    docs, errors = read_directory(workload.POLICIES)
    if errors:
        raise SystemExit(f"bench policies: {errors}")
    registry = Registry(JwksCache())
    registry.replace_all(sources_of(docs))
    pipeline = CheckPipeline()
    request = workload.check_request()
    request.attributes.request.http.headers["traceparent"] = (
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    )

    respond = response_encoder()

    def step() -> None:
        start = time.perf_counter()
        view = decode(request)
        outcome = pipeline(registry.snapshot, view)
        respond(outcome, view.request_id)
        observer(outcome, view, view.request_id, time.perf_counter() - start)

    return step


def tracing(rounds: int, checks: int) -> str:
    variants = ("off", "unsampled", "on")
    steps = {}
    for v in variants:
        t = telemetry(v)
        steps[v] = check_step(make_observer(t, DecisionLog("none")))
    for step in steps.values():  # warm the JWT cache and the code paths
        for _ in range(1000):
            step()
    per_check: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            step = steps[v]
            start = time.perf_counter()
            for _ in range(checks):
                step()
            per_check[v].append((time.perf_counter() - start) / checks * 1e6)
    base = statistics.median(per_check["off"])
    lines = ["| tracing | µs per Check (median) | ratio vs off |", "| --- | --- | --- |"]
    for v in variants:
        us = statistics.median(per_check[v])
        lines.append(f"| {v} | {us:.1f} | {us / base:.3f} |")
    return "\n".join(lines)


def workers(duration: float, connections: int) -> str:
    require("h2load")
    work = Path(tempfile.mkdtemp(prefix="extauthz-telemetry-bench-"))
    data = work / "check.bin"
    data.write_bytes(workload.grpc_frame(workload.check_request().SerializeToString()))
    rps: dict[int, float] = {}
    for n in (1, 2):
        argv = extauthz_argv(workload.POLICIES, "--workers", str(n), "--decision-log", "none")
        server = GrpcServer(f"workers{n}", argv, work)
        try:
            server.wait_serving()
            time.sleep(1.0)  # every worker up, not only the first
            result = h2load(
                f"http://{server.address}{CHECK_PATH}", data,
                clients=connections, streams=16, duration=duration, warmup=1.0,
                log_file=work / f"workers{n}.log",
            )  # fmt: skip
            server.check_alive()
            if result.errors:
                raise SystemExit(f"--workers {n}: {result.errors} errors ({result.detail})")
            rps[n] = result.rps
            print(f"--workers {n}: {result.rps:.0f} req/s p50 {result.p50_ms:.2f} ms", flush=True)
        finally:
            server.stop()
    return "\n".join(
        [
            "| workers | req/s | ratio vs 1 |",
            "| --- | --- | --- |",
            *(f"| {n} | {rps[n]:.0f} | {rps[n] / rps[1]:.2f} |" for n in (1, 2)),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--part", choices=("all", "tracing", "workers"), default="all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checks", type=int, default=5000, help="Checks per variant and round")
    parser.add_argument("--duration", type=float, default=5.0, help="h2load seconds per run")
    parser.add_argument("--connections", type=int, default=4, help="h2load connections")
    args = parser.parse_args(argv)
    if args.part in ("all", "tracing"):
        print("## Tracing cost per Check (in process)\n")
        print(tracing(args.rounds, args.checks), "\n", flush=True)
    if args.part in ("all", "workers"):
        print("## Workers (h2load, 127.0.0.1)\n")
        print(workers(args.duration, args.connections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
