"""Benchmark of the custom conditions: CEL rules, DataSets (not part of the test suite).

    python bench/custom.py engine [--values 1000000] [--iterations 21000] [--max-seconds 6]
        [--rounds 7]
    python bench/custom.py engine --instructions 2000      # callgrind: instructions instead
    python bench/custom.py propagation [--sizes 1000,100000,1000000] [--adds 100] [--idle 5]
        [--reference-src /tmp/before/src [--reference-adds 10]]

``engine`` (in process): ``policy.evaluate`` per Check for the bench tenant of
bench/workload.py (20 policies, allowed by p15) as it is, with 5 more DENY rules that are
plain Istio conditions, and with 5 more DENY rules that are CEL conditions (one of them
``data.contains`` on a DataSet of ``--values`` values). Every added rule is evaluated and
misses, as the rules of a real tenant mostly do. The variants are measured in ``--rounds``
alternating rounds (a rotating order); reported: per variant the median of its rounds'
medians, the ratio "with 5 CEL rules and the set" / "without them", and the cost of one CEL
rule in units of one plain rule, computed per round, and its median (target: at most 3).
What was loaded is frozen out of the cyclic collector, as the server does after a load.
Then the load of the set: documents built, whole-tenant compile, memory (tracemalloc of
the compiled tenant, and the process RSS before and after).

``propagation``: a throwaway redis-server, one tenant whose DENY rule is
``data.contains("revoked-jti", auth.claims.jti)``, two ``extauthz serve`` replicas. For each
set size, the set is replaced with ``extauthz data import`` (a child process), timed to its
return and to the moment both replicas deny its last value (each replica has read the set in
full); then each ``extauthz data add`` of a new jti (run in process by a child ``adder``, as
the CLI runs it, which reports the instant it returned) is timed from its return to the
moment both replicas deny a token with that jti; p50/p99/max.
The target is p99 < 50 ms at every size. All along, another process Checks an allowed
request on replica 1 back to back: its Check latency per phase (idle first, as the reference)
shows how long the replica's event loop was ever kept from answering. Last, a third replica
starts on the largest set: time to SERVING, its load log line and RSS, next to the RSS of the
replicas before and after the set grew. ``--reference-src`` runs it all again with replicas and
CLI from another copy of ``src/`` (the previous release: a DataSet inside the tenant's record),
in the same invocation, with ``--reference-adds`` adds per size.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import workload  # noqa: E402
from engine import Row, measure  # noqa: E402

from extauthz.authn import JwksCache  # noqa: E402
from extauthz.catalog import compile_documents  # noqa: E402
from extauthz.documents import Document, document_from_data, load_documents  # noqa: E402
from extauthz.model import Subject  # noqa: E402
from extauthz.pipeline import CheckPipeline  # noqa: E402
from extauthz.policy import evaluate  # noqa: E402
from extauthz.registry import Snapshot  # noqa: E402

TARGET_PLAIN_RULES = 3.0
TARGET_PROPAGATION_MS = 50.0

# Five DENY rules over what the bench request carries; none matches it.
CEL_RULES = (
    'data.contains("revoked-sub", auth.claims.sub)',
    '"x-internal-override" in request.headers && request.headers["x-internal-override"] == "1"',
    'auth.claims.tenant_id == "t-blocked" || "suspended" in auth.claims.groups',
    'request.method == "DELETE" && request.path.startsWith("/api/v2/orders/")',
    'source.namespace == "quarantine" || source.principal.endsWith("/sa/untrusted")',
)
PLAIN_RULES = (
    "- when: [{key: 'request.auth.claims[sub]', values: [revoked-user]}]",
    "- when: [{key: 'request.headers[x-internal-override]', values: ['1']}]",
    "- when: [{key: 'request.auth.claims[tenant_id]', values: [t-blocked]}]",
    "- to: [{operation: {methods: [DELETE], paths: ['/api/v2/orders/*']}}]",
    "- from: [{source: {namespaces: [quarantine]}}]",
)


def deny_policy(name: str, rule: str) -> dict[str, Any]:
    import yaml

    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": workload.TENANT},
        "spec": {"action": "DENY", "rules": yaml.safe_load(rule)},
    }


def cel_policies() -> list[Document]:
    return [
        document_from_data(
            deny_policy(f"x{i}-deny-cel", f"- when: [{{key: extauthz.io/cel, values: ['{r}']}}]"),
            "cel",
        )
        for i, r in enumerate(CEL_RULES)
    ]


def plain_policies() -> list[Document]:
    return [
        document_from_data(deny_policy(f"x{i}-deny-plain", r), "plain")
        for i, r in enumerate(PLAIN_RULES)
    ]


def dataset(name: str, values: int) -> Document:
    body = {
        "apiVersion": "extauthz.io/v1",
        "kind": "DataSet",
        "metadata": {"name": name, "namespace": workload.TENANT},
        "spec": {"values": [f"{i:016x}" for i in range(values)]},
    }
    return document_from_data(body, name)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_subject() -> tuple[list[Document], JwksCache, Subject]:
    """The bench tenant's documents, its JWKS cache and the bench request's subject."""
    base_docs = load_documents(workload.TENANT_FILE.read_bytes(), str(workload.TENANT_FILE))
    jwks = JwksCache()
    base = compile_documents(workload.TENANT, base_docs, jwks)
    pipeline = CheckPipeline()
    from extauthz.decode import decode

    view = decode(workload.check_request())
    snapshot = Snapshot.build({base.name: base})
    pipeline.trace(snapshot, view)
    outcome, _, subject = pipeline.trace(snapshot, view)
    if subject is None or outcome.policy != workload.DECIDING_POLICY:
        raise SystemExit(f"unexpected decision for the bench request: {outcome}")
    return base_docs, jwks, subject


def engine_loop(args: argparse.Namespace) -> None:
    """(internal, under callgrind) ``--n`` evaluations of variant ``--variant`` between two
    ``itertools.pairwise`` calls, the markers callgrind dumps its counters at."""
    import itertools

    base_docs, jwks, subject = bench_subject()
    docs = [
        base_docs,
        [*base_docs, *plain_policies()],
        [*base_docs, dataset("revoked-sub", args.values), *cel_policies()],
    ][args.variant]
    policies = compile_documents(workload.TENANT, docs, jwks).policies
    if evaluate(policies, subject).policy != workload.DECIDING_POLICY:
        raise SystemExit("unexpected decision")
    gc.freeze()
    itertools.pairwise(())
    for _ in range(args.n):
        evaluate(policies, subject)
    itertools.pairwise(())


def instructions(args: argparse.Namespace) -> None:
    """Instructions per evaluation of each variant (callgrind): what the machine's load does
    not move."""
    from accounting import callgrind_counts

    work = Path(tempfile.mkdtemp(prefix="extauthz-cel-callgrind-"))
    n = args.instructions
    counts = []
    for variant in range(3):
        out = work / f"v{variant}.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--dump-before=pairwise_new",
             f"--callgrind-out-file={out}", sys.executable, __file__, "engine-loop",
             "--variant", str(variant), "--n", str(n), "--values", "1000"],
            env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, timeout=1800,
            check=True,
        )  # fmt: skip
        dumps = sorted(work.glob(f"{out.name}.*"), key=lambda f: int(f.suffix[1:]))
        counts.append(callgrind_counts(dumps[-1])[0] / n)
    base, plain, cel = counts
    plain_rule = (plain - base) / len(PLAIN_RULES)
    cel_rule = (cel - base) / len(CEL_RULES)
    units = cel_rule / plain_rule if plain_rule > 0 else float("inf")
    verdict = "met" if units <= TARGET_PLAIN_RULES else "NOT met"
    print(
        f"instructions per evaluation (callgrind, {n} calls): bench tenant {base:,.0f}; + 5 plain "
        f"DENY rules {plain:,.0f}; + 5 CEL DENY rules and a DataSet {cel:,.0f}; one plain rule "
        f"{plain_rule:,.0f}, one CEL rule {cel_rule:,.0f} = {units:.1f} plain rules "
        f"(target <= {TARGET_PLAIN_RULES:.0f}: {verdict})"
    )


def engine(args: argparse.Namespace) -> None:
    if args.instructions:
        instructions(args)
        return
    base_docs, jwks, subject = bench_subject()
    base = compile_documents(workload.TENANT, base_docs, jwks)

    gc.collect()
    rss_before = rss_mib()
    start = time.perf_counter()
    big = dataset("revoked-sub", args.values)
    built = time.perf_counter() - start
    tracemalloc.start()
    start = time.perf_counter()
    with_cel = compile_documents(workload.TENANT, [*base_docs, big, *cel_policies()], jwks)
    compiled_s = time.perf_counter() - start
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = rss_mib()
    plain = compile_documents(workload.TENANT, [*base_docs, *plain_policies()], jwks)
    gc.freeze()  # as the server does after a load: no collection walks the set again

    variants = {
        "bench tenant (20 policies)": base.policies,
        "+ 5 plain DENY rules": plain.policies,
        f"+ 5 CEL DENY rules, DataSet of {args.values}": with_cel.policies,
    }
    calls = {}
    for label, policies in variants.items():
        result = evaluate(policies, subject)
        if result.policy != workload.DECIDING_POLICY:
            raise SystemExit(f"{label}: unexpected decision {result}")
        calls[label] = functools.partial(evaluate, policies, subject)
    # Alternating rounds, each variant measured once per round in a rotating order: a shared
    # machine's load moves every variant of a round alike, and the ratios come per round.
    per_round: dict[str, list[Row]] = {label: [] for label in calls}
    labels = list(calls)
    for r in range(args.rounds):
        for label in labels[r % 3 :] + labels[: r % 3]:
            per_round[label].append(
                measure(
                    label,
                    calls[label],
                    args.iterations // args.rounds,
                    args.max_seconds / args.rounds,
                    args.iterations // 50,
                )
            )
    units_per_round = []
    for r in range(args.rounds):
        t_base, t_plain, t_cel = (per_round[label][r].median_us for label in labels)
        plain_r = (t_plain - t_base) / len(PLAIN_RULES)
        cel_r = (t_cel - t_base) / len(CEL_RULES)
        units_per_round.append(cel_r / plain_r if plain_r > 0 else float("inf"))
    med = {label: statistics.median(x.median_us for x in rows) for label, rows in per_round.items()}
    t_base, t_plain, t_cel = (med[label] for label in labels)
    plain_rule = (t_plain - t_base) / len(PLAIN_RULES)
    cel_rule = (t_cel - t_base) / len(CEL_RULES)
    units = statistics.median(units_per_round)
    print(
        f"{args.rounds} alternating rounds; per variant the median of the rounds' medians\n"
        "| tenant | n | median us | min of rounds us | p99 us (median) |\n|---|---:|---:|---:|---:|"
    )
    for label, rows in per_round.items():
        n = sum(x.n for x in rows)
        low = min(x.median_us for x in rows)
        p99 = statistics.median(x.p99_us for x in rows)
        print(f"| {label} | {n} | {med[label]:.1f} | {low:.1f} | {p99:.1f} |")
    verdict = "met" if units <= TARGET_PLAIN_RULES else "NOT met"
    spread = ", ".join(f"{u:.1f}" for u in units_per_round)
    print(
        f"\nratio with/without the 5 CEL rules and the set: {t_cel / t_base:.2f}; "
        f"one plain rule {plain_rule:.2f} us, one CEL rule {cel_rule:.2f} us; one CEL rule = "
        f"{units:.1f} plain rules, median of the rounds ({spread}) "
        f"(target <= {TARGET_PLAIN_RULES:.0f}: {verdict})"
    )
    print(
        f"DataSet of {args.values} values: documents built in {built:.2f} s; tenant compiled "
        f"(ShardedSet + CEL + policies, under tracemalloc) in {compiled_s:.2f} s; tracemalloc "
        "of the compile "
        f"{traced / 2**20:.0f} MiB; process RSS {rss_before:.0f} -> {rss_after:.0f} MiB "
        f"(documents and compiled tenant both held)"
    )


# -- propagation ------------------------------------------------------------------------------


def rss_of(pid: int) -> float:
    """The resident set of process ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def probe(address: str, request: bytes, stop: Any, out: Any) -> None:
    """In a process of its own: Check ``request`` on ``address`` back to back, one at a time,
    until ``stop`` is set; send (start, seconds) of every Check to ``out``."""
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

    message = external_auth_pb2.CheckRequest.FromString(request)
    with grpc.insecure_channel(address) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        samples: list[tuple[float, float]] = []
        while not stop.is_set():
            start = time.monotonic()
            stub.Check(message, timeout=30)
            samples.append((start, time.monotonic() - start))
    out.send(samples)
    out.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


def adder(args: argparse.Namespace) -> None:
    """``data add`` in process for each value read from stdin (one per line); after each,
    the exit code and ``time.monotonic()`` at its return on stdout."""
    from extauthz.cli import main as cli

    for line in sys.stdin:
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli(["data", "add", "--redis-url", args.redis_url, "--tenant", "acme",
                        "--set", "revoked-jti", line.strip()])  # fmt: skip
        print(f"{code} {time.monotonic()}", flush=True)


def propagation(args: argparse.Namespace) -> None:
    runs = [("extauthz", os.environ["PYTHONPATH"], args.adds)]
    if args.reference_src:
        runs.append(("reference", str(args.reference_src.resolve()), args.reference_adds))
    for name, src, adds in runs:
        print(f"\n## {name} (PYTHONPATH={src})\n", flush=True)
        propagation_run(args, src, adds)


def propagation_run(args: argparse.Namespace, src: str, adds: int) -> None:
    import multiprocessing
    import subprocess

    import grpc
    from google.rpc import code_pb2
    from tests.helpers import (
        Issuer,
        RedisServer,
        ServerProcess,
        check_request,
        policy_yaml,
        redis_cli,
        tenant_yaml,
        wait_for,
    )

    issuer = Issuer()
    host = "acme.example.com"
    deny = (
        "  action: DENY\n  rules:\n  - when:\n    - key: extauthz.io/cel\n"
        "      values: ['has(auth.claims.jti) && data.contains(\"revoked-jti\", auth.claims.jti)']"
    )
    text = "---\n".join(
        [
            tenant_yaml("acme", match=f"{{hosts: [{host}]}}", issuer=issuer),
            "apiVersion: extauthz.io/v1\nkind: DataSet\n"
            "metadata: {name: revoked-jti, namespace: acme}\nspec: {values: [seed]}\n",
            policy_yaml("deny-revoked", "acme", deny),
        ]
    )
    env = {**os.environ, "PYTHONPATH": src}

    def extauthz(*argv: str) -> None:
        subprocess.run([sys.executable, "-m", "extauthz", *argv], check=True,
                       stdout=subprocess.DEVNULL, env=env)  # fmt: skip

    def token_request(jti: str) -> Any:
        return check_request(
            host=host, headers={"authorization": f"Bearer {issuer.token(jti=jti)}"}
        )

    def denied(replica: ServerProcess, request: Any) -> bool:
        try:
            return bool(
                replica.check(request, timeout=30).status.code == code_pb2.PERMISSION_DENIED
            )
        except grpc.RpcError:
            return False

    def until_denied(request: Any, since: float, what: str) -> float:
        """Seconds from ``since`` (monotonic) until both replicas deny ``request``."""
        pending = list(replicas)
        while pending:
            pending = [r for r in pending if not denied(r, request)]
            if time.monotonic() - since > 600:
                raise TimeoutError(f"{what} not seen")
        return time.monotonic() - since

    server = RedisServer()
    replicas: list[ServerProcess] = []
    late: ServerProcess | None = None
    spawn = multiprocessing.get_context("spawn")  # no fork after gRPC started in this process
    stop = spawn.Event()
    receiver, sender = spawn.Pipe(duplex=False)
    prober: Any = None
    writer: subprocess.Popen[str] | None = None
    phases: list[tuple[str, float, float]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "acme.yaml").write_text(text)
            extauthz("policy", "apply", "--redis-url", server.url, "-f", tmp)
            loop_file = Path(tmp) / "loop.txt"
            launcher = [str(BENCH / "loopprobe.py"), str(loop_file)]
            replicas = [
                ServerProcess(["--redis-url", server.url], env=env, launcher=launcher),
                ServerProcess(["--redis-url", server.url], env=env),
            ]
            for r in replicas:
                r.wait_serving(timeout=120)
            writer = subprocess.Popen(
                [sys.executable, str(BENCH / "custom.py"), "adder", "--redis-url", server.url],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            )  # fmt: skip
            allowed = token_request("never-revoked")
            assert not denied(replicas[0], allowed)
            rss_small = [rss_of(r.proc.pid) for r in replicas]
            prober = spawn.Process(
                target=probe,
                args=(replicas[0].address, allowed.SerializeToString(), stop, sender),
            )
            prober.start()
            sender.close()  # the prober's end: recv() sees EOF if it dies
            time.sleep(1.0)
            idle = time.monotonic()
            time.sleep(args.idle)
            phases.append(("idle (no change)", idle, time.monotonic()))
            for size in (int(s) for s in args.sizes.split(",")):
                values = Path(tmp) / "values.txt"
                values.write_text("".join(f"v{i:015x}\n" for i in range(size)))
                last = token_request(f"v{size - 1:015x}")
                begin = time.monotonic()
                extauthz("data", "import", "--redis-url", server.url, "--tenant", "acme",
                         "--set", "revoked-jti", "--file", str(values))  # fmt: skip
                imported = time.monotonic() - begin
                seen = until_denied(last, begin + imported, f"import of {size}")
                phases.append(
                    (f"import of {size} values and the full reads", begin, time.monotonic())
                )
                begin = time.monotonic()
                for n in range(adds):  # the Checks of the adds below, without the adds
                    request = token_request(f"no-change-{size}-{n}")
                    for _ in range(10):
                        for r in replicas:
                            assert not denied(r, request)
                phases.append((f"the same Checks, no change ({size})", begin, time.monotonic()))
                samples = []
                begin = time.monotonic()
                for n in range(adds):
                    jti = f"bench-{size}-{n}"
                    request = token_request(jti)
                    for r in replicas:  # warm the token cache: only the set changes
                        assert not denied(r, request)
                    assert writer.stdin is not None
                    assert writer.stdout is not None
                    writer.stdin.write(f"{jti}\n")
                    writer.stdin.flush()
                    code, returned = writer.stdout.readline().split()
                    if code != "0":
                        raise RuntimeError(f"data add {jti} exited with {code}")
                    samples.append(until_denied(request, float(returned), f"add {n} at {size}"))
                phases.append((f"{adds} adds to the set of {size}", begin, time.monotonic()))
                ms = sorted(x * 1000 for x in samples)
                p99 = percentile(ms, 0.99)
                verdict = "met" if p99 < TARGET_PROPAGATION_MS else "NOT met"
                used = int(redis_cli(server.port, "info", "memory").split("used_memory:")[1]
                           .split()[0]) / 2**20  # fmt: skip
                print(
                    f"set of {size} values: data import {imported:.1f} s, its return -> both "
                    f"replicas deny its last value {seen:.1f} s; redis used_memory {used:.0f} "
                    f"MiB. {len(ms)} adds, data add returned -> both replicas deny: p50 "
                    f"{statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms "
                    f"(target p99 < {TARGET_PROPAGATION_MS:.0f} ms: {verdict})",
                    flush=True,
                )
            stop.set()
            if not receiver.poll(60):
                raise RuntimeError("the Check prober sent nothing (see its error above)")
            probed: list[tuple[float, float]] = receiver.recv()
            prober.join(timeout=30)
            loop = [tuple(map(float, x.split())) for x in loop_file.read_text().splitlines()]
            print(
                f"\nReplica 1, per phase: Check latency from a concurrent client (one Check at a "
                f"time, {len(probed)} Checks), and its event loop (loopprobe.py): the worst "
                "wake-up delay of a 1 ms sleep, the most CPU its loop thread ran between two "
                "wake-ups (the longest stretch of work that held the loop, whatever the "
                "scheduler did), the longest garbage collection (CPU)"
            )
            print(
                "| while | Checks | Check p50 ms | p99 ms | max ms | loop delay max ms "
                "| loop CPU max ms | GC max ms |\n|---|---:|---:|---:|---:|---:|---:|---:|"
            )
            for label, begin, end in phases:
                lat = [x * 1000 for t, x in probed if begin <= t < end]
                lag = [row[1:] for row in loop if begin <= row[0] < end + 0.1]
                print(
                    f"| {label} | {len(lat)} | {percentile(lat, 0.5):.2f} | "
                    f"{percentile(lat, 0.99):.2f} | {max(lat, default=0):.1f} | "
                    + " | ".join(f"{max((r[i] for r in lag), default=0):.1f}" for i in range(3))
                    + " |"
                )
            rss_big = [rss_of(r.proc.pid) for r in replicas]
            start = time.monotonic()
            late = ServerProcess(["--redis-url", server.url], env=env)
            late.wait_serving(timeout=600)
            serving_s = time.monotonic() - start
            loaded = wait_for(  # logged just after the swap that made it SERVING
                lambda: [x for x in late.logs().splitlines() if "tenants loaded from redis" in x]
            )
            print(
                f"\nreplica started with the set of {size} values: SERVING after "
                f"{serving_s:.1f} s (load log: {loaded[-1] if loaded else '?'}); RSS "
                f"{rss_of(late.proc.pid):.0f} MiB. Replicas that followed the changes: RSS "
                f"{', '.join(f'{a:.0f}' for a in rss_small)} MiB with 1 value -> "
                f"{', '.join(f'{b:.0f}' for b in rss_big)} MiB now",
                flush=True,
            )
    finally:
        stop.set()
        if writer is not None:
            writer.kill()
            writer.wait()
        if prober is not None:
            prober.join(timeout=30)
            if prober.is_alive():
                prober.kill()
        for r in [*replicas, *([late] if late else [])]:
            r.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("engine", help="evaluate time with/without 5 CEL rules; load of a set")
    e.add_argument("--values", type=int, default=1_000_000, help="values of the DataSet")
    e.add_argument("--iterations", type=int, default=21_000, help="per variant, all rounds")
    e.add_argument("--max-seconds", type=float, default=6.0, help="per variant, all rounds")
    e.add_argument("--rounds", type=int, default=7, help="alternating rounds")
    e.add_argument(
        "--instructions", type=int, default=0, metavar="N",
        help="instead: instructions per evaluation under callgrind, N calls per variant",
    )  # fmt: skip
    loop = sub.add_parser("engine-loop", help="(internal) evaluations under callgrind")
    loop.add_argument("--variant", type=int, required=True)
    loop.add_argument("--n", type=int, required=True)
    loop.add_argument("--values", type=int, default=1000)
    p = sub.add_parser("propagation", help="data add -> both of two replicas deny")
    p.add_argument("--sizes", default="1000,100000,1000000", help="set sizes, comma-separated")
    p.add_argument("--adds", type=int, default=100, help="adds per set size")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of Checks before any change")
    p.add_argument("--reference-src", type=Path, help="also run replicas and CLI from this src/")
    p.add_argument("--reference-adds", type=int, default=10, help="adds per size, reference")
    a = sub.add_parser("adder", help="(internal) data add per stdin line, for propagation")
    a.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(BENCH.parent / "src"))
    commands = {"engine": engine, "engine-loop": engine_loop, "propagation": propagation}
    {**commands, "adder": adder}[args.command](args)


if __name__ == "__main__":
    main()
