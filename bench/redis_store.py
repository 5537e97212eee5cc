"""Benchmark of the Redis store (not part of the test suite).

Starts its own redis-server on a free port, writes N tenants x P policies for each N of
``--tenants``, then, for each N, starts ``extauthz serve --redis-url`` and reports:

- load: seconds from process start to SERVING, and to every tenant compiled (the tenants a
  first load defers are compiled in the background after SERVING); the store's own
  read/route split; the replica's CPU seconds and RSS once every tenant is compiled (and of
  a replica holding none, for reference);
- one tenant's update at N: in a separate process holding the N tenants (loaded from the
  same Redis), the median cost of ``Registry.update`` for a change of one policy (routes
  unchanged) and for a change of the tenant's host (a routing change);
- with ``--reference-src DIR`` (a copy of ``src/`` from before a change) the same for that
  code, in the same run, one after the other (the machine is shared: compare within a run);

then, at the first N, with two replicas of the code under test:

- Redis commands per Check in steady state, from INFO commandstats around a burst of
  Checks to both replicas (target 0);
- propagation: from ``PolicyAdmin.apply`` (what ``extauthz policy apply`` runs) returning
  to both of two replicas deciding with the new rules, p50/p99/max over many applies.

Usage: python bench/redis_store.py [--tenants 10000 [100000 ...]] [--policies 10]
       [--applies 200] [--updates 30] [--reference-src /tmp/before/src]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import subprocess
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
from extauthz.documents import Document, document_from_data, load_documents  # noqa: E402
from extauthz.registry import Registry  # noqa: E402
from extauthz.sources import TenantSource  # noqa: E402
from extauthz.store.redis import RedisStore  # noqa: E402
from extauthz.store.redis_admin import PolicyAdmin  # noqa: E402
from extauthz.store.redis_client import connect, parse_url  # noqa: E402
from extauthz.store.redis_model import TenantRepo  # noqa: E402
from extauthz.tenancy import TenantMatch, TenantSpec  # noqa: E402

REFERENCE = "extauthz-ref"


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


def tenant_documents(i: int, policies: int, extra_path: str = "", host: str = "") -> list[Document]:
    """``tenant_yaml`` as documents, built from data (YAML parsing would dominate a 100k
    write)."""
    name = f"t{i:05d}"
    bodies: list[dict[str, Any]] = [
        {
            "apiVersion": "extauthz.io/v1",
            "kind": "Tenant",
            "metadata": {"name": name},
            "spec": {
                "match": {"hosts": [host or f"{name}.example.com"]},
                "trustDomains": ["cluster.local"],
            },
        }
    ]
    for p in range(policies):
        paths = [f"/api/v{p}/*"] + ([extra_path] if p == 0 and extra_path else [])
        rule = {
            "from": [{"source": {"principals": [f"cluster.local/ns/{name}/sa/svc{p}"]}}],
            "to": [{"operation": {"methods": ["GET", "POST"], "paths": paths}}],
        }
        bodies.append(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": f"p{p}", "namespace": name},
                "spec": {"action": "ALLOW", "rules": [rule]},
            }
        )
    return [document_from_data(body, f"{name}.json#{k}") for k, body in enumerate(bodies)]


async def populate(url: str, tenants: int, policies: int) -> float:
    """Write the tenants (as ``policy apply`` stores them; not compiled first: the bench's
    documents are known good, and the load is what is measured)."""
    target = parse_url(url)
    client = connect(target)
    repo = TenantRepo(client, target.prefix)
    start = time.perf_counter()

    async def one(i: int) -> None:
        name = f"t{i:05d}"
        spec = TenantSpec(name, TenantMatch(hosts=(f"{name}.example.com",)))
        await repo.write(name, tenant_documents(i, policies), spec=spec, policies=policies)

    for base in range(0, tenants, 50):  # the client's connection pool holds 100
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


def start_replica(
    url: str, env: dict[str, str] | None = None
) -> tuple[ServerProcess, float, dict[str, Any]]:
    start = time.perf_counter()
    server = ServerProcess(["--redis-url", url, "--metrics-listen", ""], env)
    server.wait_serving(timeout=900)
    elapsed = time.perf_counter() - start
    loaded: dict[str, Any] = {}
    for line in server.logs().splitlines():
        if '"tenants loaded from redis"' in line:
            loaded = json.loads(line)
    return server, elapsed, loaded


def wait_compiled(server: ServerProcess, timeout: float = 1800) -> dict[str, Any] | None:
    """The "tenants compiled" line of a background compile, once logged; None for code that
    compiles everything before SERVING (nothing deferred)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.logs().splitlines():
            if '"policies loaded"' in line and not json.loads(line).get("deferred"):
                return None
            if '"tenants compiled"' in line:
                return dict(json.loads(line))
        server.proc.poll()
        if server.proc.returncode is not None:
            raise RuntimeError(f"replica exited:\n{server.logs()[-2000:]}")
        time.sleep(0.2)
    raise TimeoutError("tenants not compiled in time")


def measure_load(url: str, tenants: int, env: dict[str, str] | None) -> dict[str, Any]:
    """One replica from process start to SERVING and to every tenant compiled."""
    started = time.time()
    replica, serving_s, loaded = start_replica(url, env)
    try:
        rss_serving, _ = rss_mb(replica.proc.pid)
        compiled = wait_compiled(replica)
        settled_s = serving_s
        if compiled is not None:  # by the log line's own time: it may precede SERVING seen
            at = datetime.datetime.fromisoformat(compiled["timestamp"]).timestamp()
            settled_s = max(serving_s, at - started)
        if decide(replica, f"t{tenants // 3:05d}", "/api/v0/x") != code_pb2.OK:
            raise RuntimeError("a tenant's Check was not allowed")
        rss, peak = rss_mb(replica.proc.pid)
        return {
            "serving_s": serving_s,
            "compiled_s": settled_s,
            "cpu_s": cpu_seconds(replica.proc.pid),
            "read_s": loaded.get("read_seconds"),
            "route_or_compile_s": loaded.get("compile_seconds"),
            "rss_serving": rss_serving,
            "rss": rss,
            "peak": peak,
        }
    finally:
        replica.stop()


def measure_updates(
    url: str, tenants: int, policies: int, updates: int, env: dict[str, str] | None
) -> dict[str, Any]:
    """``--probe`` in a child process (with ``env``'s PYTHONPATH): its JSON report."""
    argv = [sys.executable, __file__, "--probe", url, "--tenants", str(tenants)]
    argv += ["--policies", str(policies), "--updates", str(updates)]
    done = subprocess.run(
        argv, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=3600
    )
    if done.returncode != 0:
        raise RuntimeError(f"probe failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


async def probe(url: str, tenants: int, policies: int, updates: int) -> dict[str, Any]:
    """Hold every tenant (loaded from Redis as a replica does), then time one tenant's
    update: a policy change, and a host change (routing), ``updates`` of each."""
    store = RedisStore.from_url(url)
    registry = Registry(JwksCache())
    start = time.perf_counter()
    await store._full_load(registry)
    settle = getattr(registry, "settle", None)
    if settle is not None:
        await settle()
    loaded = time.perf_counter() - start
    settling = getattr(store, "_settling", None)
    if settling is not None:
        await settling
    await store.close()
    index = tenants // 2
    name = f"t{index:05d}"

    def timed(docs: list[Document], version: int) -> float:
        t = time.perf_counter()
        registry.update(name, TenantSource(name, str(version), tuple(docs)))
        return (time.perf_counter() - t) * 1000

    version = 1_000_000
    policy_ms, route_ms = [], []
    for k in range(updates):
        version += 1
        policy_ms.append(timed(tenant_documents(index, policies, f"/probe/{k}"), version))
    for k in range(updates):
        version += 1
        host = f"{name}-{k}.example.com"
        route_ms.append(timed(tenant_documents(index, policies, host=host), version))
    if registry.snapshot.tenants[name].spec.match.hosts != (f"{name}-{updates - 1}.example.com",):
        raise RuntimeError("the routing change was not applied")
    return {
        "load_s": loaded,
        "policy_update_ms": statistics.median(policy_ms),
        "routing_update_ms": statistics.median(route_ms),
        "tenants": len(registry.snapshot.tenants),
    }


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
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[10_000])
    parser.add_argument("--policies", type=int, default=10)
    parser.add_argument("--applies", type=int, default=200, help="0: no propagation run")
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--updates", type=int, default=30, help="timed updates of each kind")
    parser.add_argument(
        "--reference-src",
        type=Path,
        help="also measure extauthz from this source tree (a copy of src/ before a change)",
    )
    parser.add_argument("--probe", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        report = asyncio.run(probe(args.probe, args.tenants[0], args.policies, args.updates))
        print(json.dumps(report))
        return

    impls: dict[str, dict[str, str] | None] = {"extauthz": None}
    if args.reference_src:
        impls[REFERENCE] = {"PYTHONPATH": str(args.reference_src.resolve())}
    server = RedisServer()
    replicas: list[ServerProcess] = []
    try:
        empty, _, _ = start_replica(server.url + "?prefix=empty")
        base_rss, _ = rss_mb(empty.proc.pid)
        empty.stop()
        sync = redis.Redis(port=server.port)
        rows = []
        for n in args.tenants:
            url = f"{server.url}?prefix=n{n}"
            write_s = asyncio.run(populate(url, n, args.policies))
            used = sync.info("memory")["used_memory"] / 2**20
            print(
                f"wrote {n} tenants x {args.policies} policies in {write_s:.1f} s "
                f"(redis used_memory {used:.0f} MiB, all sizes so far)",
                flush=True,
            )
            for name, env in impls.items():
                load = measure_load(url, n, env)
                updates = measure_updates(url, n, args.policies, args.updates, env)
                rows.append((n, name, load, updates))
                print(
                    f"{name} {n} tenants: SERVING {load['serving_s']:.1f} s (read "
                    f"{load['read_s']} s, then {load['route_or_compile_s']} s), all compiled "
                    f"{load['compiled_s']:.1f} s, {load['cpu_s']:.1f} s CPU; RSS "
                    f"{load['rss']:.0f} MiB (at SERVING {load['rss_serving']:.0f}, peak "
                    f"{load['peak']:.0f}, empty replica {base_rss:.0f}); one tenant's update: "
                    f"policy {updates['policy_update_ms']:.2f} ms, routing "
                    f"{updates['routing_update_ms']:.2f} ms",
                    flush=True,
                )
        print(f"\nloadavg at the end: {os.getloadavg()}")
        print(
            "| tenants | code | SERVING | all compiled | CPU | RSS (peak) | policy update | "
            "routing update |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for n, name, load, updates in rows:
            print(
                f"| {n:,} | {name} | {load['serving_s']:.1f} s | {load['compiled_s']:.1f} s | "
                f"{load['cpu_s']:.1f} s | {load['rss']:.0f} MiB ({load['peak']:.0f}) | "
                f"{updates['policy_update_ms']:.2f} ms | {updates['routing_update_ms']:.2f} ms |"
            )
        if args.applies > 0:
            steady(server, sync, args, replicas)
    finally:
        for replica in replicas:
            replica.stop()
        server.stop()


def steady(
    server: RedisServer, sync: redis.Redis, args: argparse.Namespace, replicas: list[ServerProcess]
) -> None:
    """Commands per Check and propagation, two replicas at the first size."""
    n = args.tenants[0]
    url = f"{server.url}?prefix=n{n}"
    for _ in range(2):
        replica, _, _ = start_replica(url)
        replicas.append(replica)
        wait_compiled(replica)
    before = commandstats(sync)
    denied = 0
    for k in range(args.checks):
        tenant = f"t{k % n:05d}"
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
    samples = asyncio.run(propagation(url, replicas, args.applies, args.policies, n // 2))
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"propagation over {len(ms)} applies, both replicas: p50 {statistics.median(ms):.1f} "
        f"ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
