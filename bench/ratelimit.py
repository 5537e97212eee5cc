"""Rate limit cost: the bench tenant with one limit on the request principal vs without it.

    python bench/ratelimit.py [--rounds 3] [--duration 5] [--concurrency 16]

Starts a throwaway redis-server and three gRPC servers on loopback: the bare baseline,
``extauthz serve --redis-url`` on the bench tenant (``plain``) and the same with one
RateLimit keyed on ``request.auth.principal`` (``limited``, a count it never reaches, so
every Check is counted and admitted). Both extauthz servers use Redis, so the comparison
isolates the limit. Rounds of h2load alternate the order; the table gives median req/s, the
ratios (target: limited/plain >= 0.9) and the server's own CPU time per Check (from /proc,
all threads): its ratio plain/limited is the throughput ratio a CPU-bound server reaches,
and holds up better than req/s on a busy machine. Redis commands per Check come from INFO
commandstats around each ``limited`` run: everything Redis executed in that time, the other
server's replica heartbeat included (target < 0.05). In-process: the median time of
``CheckPipeline`` on the bench request with and without the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import grpc  # noqa: E402
import redis  # noqa: E402
import workload  # noqa: E402
from benchlib import (  # noqa: E402
    CHECK_PATH,
    GrpcServer,
    bare_argv,
    h2load,
    median,
    require,
    response_encoder,
    table,
    write_result,
)
from envoy.service.auth.v3 import external_auth_pb2_grpc  # noqa: E402
from grpc_load import Shape  # noqa: E402
from tests.helpers import RedisServer  # noqa: E402

from extauthz.authn import JwksCache  # noqa: E402
from extauthz.catalog import compile_documents  # noqa: E402
from extauthz.documents import load_documents  # noqa: E402
from extauthz.pipeline import CheckPipeline  # noqa: E402
from extauthz.registry import Snapshot  # noqa: E402
from extauthz.store.redis_admin import PolicyAdmin  # noqa: E402
from extauthz.store.redis_client import connect, parse_url  # noqa: E402
from extauthz.store.redis_model import TenantRepo  # noqa: E402

LIMIT = f"""
---
apiVersion: extauthz.io/v1
kind: RateLimit
metadata: {{name: per-user, namespace: {workload.TENANT}}}
spec:
  limits:
  - key: [request.auth.principal]
    requests: 1000000000
    per: minute
"""


def bench_text(limited: bool) -> str:
    text = workload.TENANT_FILE.read_text()
    return text + LIMIT if limited else text


async def store(url: str, text: str) -> None:
    target = parse_url(url)
    client = connect(target)
    try:
        await PolicyAdmin(TenantRepo(client, target.prefix)).apply(load_documents(text, "bench"))
    finally:
        await client.aclose()


def in_process(iterations: int = 20000) -> dict[str, float]:
    """Median microseconds of the pipeline, and of decode + pipeline + response + serialize."""
    from extauthz.decode import decode

    request = workload.check_request()
    view = decode(request)
    respond = response_encoder()
    out: dict[str, float] = {}
    for name, limited in (("plain", False), ("limited", True)):
        docs = load_documents(bench_text(limited), "bench")
        tenant = compile_documents(workload.TENANT, docs, JwksCache())
        snapshot = Snapshot.build({tenant.name: tenant})
        pipeline = CheckPipeline()
        for _ in range(2000):
            outcome = pipeline(snapshot, view)
        if not outcome.allowed or (outcome.ratelimit != "") != limited:
            raise SystemExit(f"unexpected outcome for the bench request: {outcome}")

        def wire(pipeline: CheckPipeline = pipeline, snapshot: Snapshot = snapshot) -> bytes:
            v = decode(request)
            return respond(pipeline(snapshot, v), v.request_id)

        def alone(pipeline: CheckPipeline = pipeline, snapshot: Snapshot = snapshot) -> object:
            return pipeline(snapshot, view)

        for stage, fn in (("pipeline", alone), ("wire", wire)):
            samples = []
            clock = time.perf_counter_ns
            for _ in range(iterations):
                start = clock()
                fn()
                samples.append(clock() - start)
            out[f"{stage} {name}"] = statistics.median(samples) / 1000
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commands(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("commandstats")
    return sum(int(v["calls"]) for v in info.values())


def main() -> int:
    parser = argparse.ArgumentParser(description="rate limit cost vs the bench tenant without it")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    require("h2load")
    work = Path(tempfile.mkdtemp(prefix="extauthz-ratelimit-"))
    request = workload.check_request()
    data_file = work / "check.bin"
    data_file.write_bytes(workload.grpc_frame(request.SerializeToString()))
    shape = Shape.of(args.concurrency, 2)

    inproc = in_process()
    redis_server = RedisServer()
    servers: dict[str, GrpcServer] = {}
    try:
        urls = {n: f"{redis_server.url}?prefix={n}" for n in ("plain", "limited")}
        asyncio.run(store(urls["plain"], bench_text(False)))
        asyncio.run(store(urls["limited"], bench_text(True)))
        servers["bare"] = GrpcServer("bare", bare_argv, work)
        for name, url in urls.items():

            def argv(address: str, url: str = url) -> list[str]:
                return [
                    sys.executable, "-m", "extauthz", "serve", "--listen", address,
                    "--redis-url", url, "--log-level", "warning",
                ]  # fmt: skip

            servers[name] = GrpcServer(name, argv, work)
        for server in servers.values():
            server.wait_serving()
        with grpc.insecure_channel(servers["limited"].address) as channel:
            reply = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)
        added = [h.header.key for h in reply.ok_response.response_headers_to_add]
        if reply.status.code != 0 or "ratelimit" not in added:
            raise SystemExit(f"limited server did not admit with RateLimit headers: {reply}")

        client = redis.Redis(port=redis_server.port)
        runs: dict[str, list[float]] = collections.defaultdict(list)
        per_check: list[float] = []
        cpu_us: dict[str, list[float]] = collections.defaultdict(list)
        names = ("bare", "plain", "limited")
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                server = servers[name]
                before = commands(client)
                cpu_before = cpu_seconds(server.pid)
                result = h2load(
                    f"http://{server.address}{CHECK_PATH}", data_file,
                    clients=shape.clients, streams=shape.streams,
                    duration=args.duration, warmup=args.warmup,
                    log_file=work / f"{name}-r{r}.log",
                )  # fmt: skip
                used = commands(client) - before - 1  # minus the INFO before
                cpu = cpu_seconds(server.pid) - cpu_before
                server.check_alive()
                if result.errors:
                    raise SystemExit(f"{name}: {result.errors} errors ({result.detail})")
                runs[name].append(result.rps)
                checks = result.requests * (args.duration + args.warmup) / args.duration
                cpu_us[name].append(cpu / max(1.0, checks) * 1e6)
                if name == "limited":
                    per_check.append(used / max(1.0, checks))
                print(
                    f"round {r + 1} {name:<8} {result.rps:9.0f} req/s  "
                    f"cpu {cpu_us[name][-1]:.0f} us/Check  redis commands {used}"
                )
        rps = {n: median(runs[n]) for n in names}
        ratios = [lim / pl for lim, pl in zip(runs["limited"], runs["plain"], strict=True)]
        cpu_per_check = {n: median(cpu_us[n]) for n in names}
        by_cpu = cpu_per_check["plain"] / cpu_per_check["limited"]
        rows = [
            ["bare", f"{rps['bare']:.0f}", "", f"{cpu_per_check['bare']:.0f}", "", ""],
            [
                "plain",
                f"{rps['plain']:.0f}",
                f"{rps['plain'] / rps['bare']:.2f}",
                f"{cpu_per_check['plain']:.0f}",
                "",
                "",
            ],
            [
                "limited",
                f"{rps['limited']:.0f}",
                f"{rps['limited'] / rps['bare']:.2f}",
                f"{cpu_per_check['limited']:.0f}",
                f"{median(ratios):.2f} (by CPU per Check: {by_cpu:.2f})",
                f"{max(per_check):.4f}",
            ],
        ]
        report = (
            f"# Rate limit cost (c={args.concurrency}, {args.rounds} rounds x {args.duration} s)"
            "\n\n"
            + table(
                [
                    "server",
                    "req/s (median)",
                    "x bare",
                    "server CPU us per Check (median)",
                    "x plain (target >= 0.9)",
                    "Redis commands per Check (max; target < 0.05)",
                ],
                rows,
            )
            + "\nin-process medians: "
            + ", ".join(f"{k} {v:.1f} us" for k, v in inproc.items())
            + "\n"
        )
        sys.stdout.write("\n" + report)
        print(f"\nwritten to {write_result('ratelimit', report)} (raw logs in {work})")
    finally:
        for server in servers.values():
            server.stop()
        redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
