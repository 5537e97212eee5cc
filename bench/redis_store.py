"""Benchmark of the Redis store (not part of the test suite).

Starts its own redis-server on a free port, writes N tenants x P policies (each compiled
first, as every write is), then starts ``extauthz serve --redis-url`` replicas and reports:

- load: seconds from process start to SERVING, the store's own read/compile split, and the
  RSS of a replica holding every tenant (and of one holding none, for reference);
- Redis commands per Check in steady state, from INFO commandstats around a burst of
  Checks to both replicas (target 0);
- propagation: from ``PolicyAdmin.apply`` (what ``extauthz policy apply`` runs) returning
  to both of two replicas deciding with the new rules, p50/p99/max over many applies.

Usage: python bench/redis_store.py [--tenants 10000] [--policies 10] [--applies 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import redis  # noqa: E402
from google.rpc import code_pb2  # noqa: E402
from tests.helpers import RedisServer, ServerProcess, check_request  # noqa: E402

from extauthz.authn import JwksCache  # noqa: E402
from extauthz.catalog import compile_documents  # noqa: E402
from extauthz.documents import KIND_POLICY, load_documents  # noqa: E402
from extauthz.store.redis_admin import PolicyAdmin  # noqa: E402
from extauthz.store.redis_client import connect, parse_url  # noqa: E402
from extauthz.store.redis_model import TenantRepo  # noqa: E402


def tenant_yaml(i: int, policies: int, extra_path: str = "") -> str:
    name = f"t{i:05d}"
    parts = [
        f"apiVersion: extauthz.io/v1\nkind: Tenant\nmetadata: {{name: {name}}}\n"
        f"spec:\n  match: {{hosts: ['{name}.example.com']}}\n  trustDomains: [cluster.local]\n"
    ]
    for p in range(policies):
        paths = [f"/api/v{p}/*"] + ([extra_path] if p == 0 and extra_path else [])
        parts.append(
            f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: p{p}, namespace: {name}}}\n"
            f"spec:\n  action: ALLOW\n  rules:\n  - from:\n"
            f"    - source: {{principals: ['cluster.local/ns/{name}/sa/svc{p}']}}\n"
            f"    to:\n    - operation: {{methods: [GET, POST], paths: {paths!r}}}\n"
        )
    return "---\n".join(parts)


async def populate(url: str, tenants: int, policies: int) -> float:
    target = parse_url(url)
    client = connect(target)
    repo = TenantRepo(client, target.prefix)
    jwks = JwksCache()
    start = time.perf_counter()

    async def one(i: int) -> None:
        name = f"t{i:05d}"
        docs = load_documents(tenant_yaml(i, policies), f"{name}.yaml")
        compiled = compile_documents(name, docs, jwks)
        count = sum(1 for d in docs if d.kind == KIND_POLICY)
        await repo.write(name, docs, spec=compiled.spec, policies=count)

    for base in range(0, tenants, 50):
        await asyncio.gather(*(one(i) for i in range(base, min(base + 50, tenants))))
    await client.aclose()
    return time.perf_counter() - start


def rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (a load's cost even on a busy machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_replica(url: str) -> tuple[ServerProcess, float, dict[str, Any]]:
    start = time.perf_counter()
    server = ServerProcess(["--redis-url", url, "--metrics-listen", ""])
    server.wait_serving(timeout=600)
    elapsed = time.perf_counter() - start
    loaded: dict[str, Any] = {}
    for line in server.logs().splitlines():
        if '"tenants loaded from redis"' in line:
            loaded = json.loads(line)
    return server, elapsed, loaded


def commandstats(client: redis.Redis) -> dict[str, int]:
    info: dict[str, Any] = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def decide(server: ServerProcess, tenant: str, path: str) -> int:
    request = check_request(
        host=f"{tenant}.example.com",
        path=path,
        principal=f"spiffe://cluster.local/ns/{tenant}/sa/svc0",
    )
    return int(server.check(request).status.code)


async def propagation(
    url: str, replicas: list[ServerProcess], applies: int, policies: int, tenant_index: int
) -> list[float]:
    target = parse_url(url)
    client = connect(target)
    admin = PolicyAdmin(TenantRepo(client, target.prefix))
    tenant = f"t{tenant_index:05d}"
    samples: list[float] = []
    try:
        for n in range(applies):
            probe = f"/probe/{n}"
            docs = load_documents(tenant_yaml(tenant_index, policies, probe), "bench.yaml")
            await admin.apply(docs)
            returned = time.perf_counter()
            pending = set(range(len(replicas)))
            seen: dict[int, float] = {}
            while pending:
                for i in list(pending):
                    if decide(replicas[i], tenant, probe) == code_pb2.OK:
                        seen[i] = time.perf_counter()
                        pending.discard(i)
                if time.perf_counter() - returned > 10:
                    raise TimeoutError(f"apply {n} not seen by replicas {sorted(pending)}")
            samples.append(max(seen.values()) - returned)
    finally:
        await client.aclose()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--policies", type=int, default=10)
    parser.add_argument("--applies", type=int, default=200)
    parser.add_argument("--checks", type=int, default=2000)
    args = parser.parse_args()

    server = RedisServer()
    replicas: list[ServerProcess] = []
    try:
        write_s = asyncio.run(populate(server.url, args.tenants, args.policies))
        sync = redis.Redis(port=server.port)
        used = sync.info("memory")["used_memory"] / 2**20
        print(
            f"wrote {args.tenants} tenants x {args.policies} policies in {write_s:.1f} s "
            f"(redis used_memory {used:.0f} MiB)"
        )

        empty, _, _ = start_replica(server.url + "?prefix=empty")
        base_rss, _ = rss_mb(empty.proc.pid)
        empty.stop()

        for _ in range(2):
            replica, elapsed, loaded = start_replica(server.url)
            replicas.append(replica)
            rss, peak = rss_mb(replica.proc.pid)
            cpu = cpu_seconds(replica.proc.pid)
            print(
                f"replica: SERVING after {elapsed:.1f} s, {cpu:.1f} s CPU (process start "
                "included); store: "
                f"read {loaded.get('read_seconds')} s, compile {loaded.get('compile_seconds')} s, "
                f"{loaded.get('tenants')} tenants; RSS {rss:.0f} MiB (peak {peak:.0f}, "
                f"empty replica {base_rss:.0f} MiB)"
            )

        before = commandstats(sync)
        denied = 0
        for n in range(args.checks):
            tenant = f"t{n % args.tenants:05d}"
            for replica in replicas:
                denied += decide(replica, tenant, "/api/v0/x") != code_pb2.OK
        after = commandstats(sync)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        delta["info"] -= 1  # the "before" INFO itself
        total = sum(v for v in delta.values() if v > 0)
        checks = args.checks * len(replicas)
        print(
            f"steady state: {checks} Checks ({denied} denied, expected 0), {total} Redis "
            f"commands -> {total / checks:.4f} commands per Check "
            f"{ {k: v for k, v in delta.items() if v > 0} }"
        )

        samples = asyncio.run(
            propagation(server.url, replicas, args.applies, args.policies, args.tenants // 2)
        )
        ms = sorted(s * 1000 for s in samples)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        print(
            f"propagation over {len(ms)} applies, both replicas: p50 {statistics.median(ms):.1f} "
            f"ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"
        )
    finally:
        for replica in replicas:
            replica.stop()
        server.stop()


if __name__ == "__main__":
    main()
