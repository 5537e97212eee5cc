"""Where the CPU of a served Check goes: extauthz against the bare grpc.aio server.

    python bench/accounting.py                        # both parts, about a minute
    python bench/accounting.py --part inprocess       # no load, no child processes
    python bench/accounting.py --reference-src /tmp/before/src   # also an older copy

Load (real processes, h2load on 127.0.0.1): the bare server and ``extauthz serve`` (default
flags, metrics on a free port) run under ``gcprobe.py``; after one warm-up run each, rounds
alternate which server is loaded first with ``--concurrency`` Checks in flight
(``--max-connections`` connections, the rest as streams). Per run: the process's CPU time,
all threads (``/proc/PID/stat`` utime + stime, and per thread name from ``/proc/PID/task``),
garbage-collector collections (``gc.get_stats`` in the server), and the Checks completed.
Reported: medians over rounds of CPU us per Check, the same per thread, and collections per
1,000 Checks. ``--sized-bare`` adds the bare server answering with a response of extauthz's
size (``bare_server.py --response-bytes``): what the response's size costs, apart from
everything else. Then ``perf record -e cpu-clock`` (``--perf`` seconds, 0 to skip) on each server
under the same load gives the CPU per Check by shared object and the top native symbols, in
us per Check (share of samples x CPU per Check).

In process (no grpc): the servicer ``extauthz serve`` builds (telemetry with metrics on,
decision log ``deny``: the bench request is allowed and not logged), driven on the serialized
request as in ``engine.py``: us per stage, GC collections and tracemalloc's peak bytes per
Check, bytes still held after ``--checks`` Checks, the serialized response against the bare
server's, and what ``dynamic_metadata`` costs (``metadata_of`` + Struct build, and the
serialization of the response with and without it).

Instructions (``--part instructions``, only when asked: minutes under valgrind): callgrind on
the in-process loop, instructions and allocator calls per served Check and per observer call,
counted between two marker calls (``--dump-before=pairwise_new``) so nothing else is in them.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload
from benchlib import (
    BENCH,
    CHECK_PATH,
    GrpcServer,
    bare_argv,
    check_argument,
    extauthz_argv,
    free_port,
    h2load,
    request_decoder,
    response_encoder,
    wire_of,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
Argv = Callable[[str], Sequence[str]]


# -- load ----------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) of the whole process, every thread."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds by thread name (threads of one name summed)."""
    out: collections.defaultdict[str, float] = collections.defaultdict(float)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[name] += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return dict(out)


def gc_collections(path: Path) -> list[int]:
    return [g["collections"] for g in json.loads(path.read_text())]


@dataclass
class Served:
    name: str
    server: GrpcServer
    gc_file: Path
    cpu_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    gc_per_1000: list[list[float]] = field(default_factory=list)
    threads: list[dict[str, float]] = field(default_factory=list)


def probed(argv_for: Argv, gc_file: Path) -> Argv:
    """The same command under gcprobe.py (argv[0] is the interpreter)."""

    def argv(address: str) -> list[str]:
        inner = list(argv_for(address))
        return [inner[0], str(BENCH / "gcprobe.py"), str(gc_file), *inner[1:]]

    return argv


def load_run(s: Served, data: Path, clients: int, streams: int, seconds: float, log: Path) -> None:
    time.sleep(0.3)  # let the probe publish the idle counts
    pid = s.server.pid
    cpu0, th0, gc0 = proc_cpu(pid), thread_cpu(pid), gc_collections(s.gc_file)
    result = h2load(
        f"http://{s.server.address}{CHECK_PATH}", data,
        clients=clients, streams=streams, duration=seconds, warmup=0, log_file=log,
    )  # fmt: skip
    time.sleep(0.3)
    cpu1, th1, gc1 = proc_cpu(pid), thread_cpu(pid), gc_collections(s.gc_file)
    s.server.check_alive()
    if result.errors or not result.requests:
        raise SystemExit(f"{s.name}: {result.errors} errors ({result.detail})")
    n = result.requests
    s.cpu_us.append((cpu1 - cpu0) / n * 1e6)
    s.rps.append(result.rps)
    s.gc_per_1000.append([(b - a) * 1000 / n for a, b in zip(gc0, gc1, strict=True)])
    s.threads.append({k: (v - th0.get(k, 0.0)) / n * 1e6 for k, v in th1.items()})


PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)(?:\s+\[[.k]\]\s+(.+?))?\s*$")


def perf_profile(
    s: Served, data: Path, clients: int, streams: int, seconds: float, work: Path
) -> tuple[dict[str, float], list[tuple[float, str, str]]]:
    """Shares (percent) of cpu-clock samples by shared object, and the top symbols."""
    out = work / f"{s.name}.perf.data"
    load = threading.Thread(
        target=h2load,
        args=(f"http://{s.server.address}{CHECK_PATH}", data),
        kwargs={
            "clients": clients, "streams": streams, "duration": seconds + 1.5, "warmup": 0,
            "log_file": work / f"{s.name}.perf.h2load.log",
        },
    )  # fmt: skip
    load.start()
    time.sleep(0.5)
    subprocess.run(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-p", str(s.server.pid),
         "-o", str(out), "--", "sleep", str(seconds)],
        capture_output=True, timeout=seconds + 60, check=True,
    )  # fmt: skip
    load.join()

    def report(sort: str) -> list[tuple[float, str, str]]:
        text = subprocess.run(
            ["perf", "report", "-i", str(out), "--stdio", "--no-children", "--sort", sort],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        rows = []
        for line in text.splitlines():
            m = PERF_LINE.match(line)
            if m and not line.lstrip().startswith("#"):
                rows.append((float(m.group(1)), m.group(2), m.group(3) or ""))
        return rows

    dsos = {dso: share for share, dso, _ in report("dso")}
    return dsos, report("dso,sym")[:25]


def load_part(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="extauthz-accounting-"))
    data = work / "check.bin"
    data.write_bytes(workload.grpc_frame(workload.check_request().SerializeToString()))
    clients = max(1, min(args.concurrency, args.max_connections))
    streams = args.concurrency // clients
    argvs: dict[str, tuple[Argv, dict[str, str] | None]] = {"bare": (bare_argv, None)}

    def serve(address: str) -> list[str]:
        metrics = f"127.0.0.1:{free_port()}"
        return extauthz_argv(workload.POLICIES, "--metrics-listen", metrics)(address)

    if args.sized_bare:  # the bare server answering with a response as large as ours
        size = len(served_bench().served())

        def sized(address: str) -> list[str]:
            return [*bare_argv(address), "--response-bytes", str(size)]

        argvs[f"bare-{size}B"] = (sized, None)
    argvs["extauthz"] = (serve, None)
    if args.reference_src:
        argvs["extauthz-ref"] = (serve, {"PYTHONPATH": str(args.reference_src)})
    served: list[Served] = []
    try:
        for name, (argv_for, env) in argvs.items():
            gc_file = work / f"{name}.gc.json"
            server = GrpcServer(name, probed(argv_for, gc_file), work, env)
            served.append(Served(name, server, gc_file))
        for s in served:
            s.server.wait_serving()
            load_run(s, data, clients, streams, 1.0, work / "warmup.log")  # warm-up, dropped
            for samples in (s.cpu_us, s.rps, s.gc_per_1000, s.threads):
                samples.clear()
        for r in range(args.rounds):
            for s in served if r % 2 == 0 else served[::-1]:
                load_run(s, data, clients, streams, args.duration, work / f"{s.name}.{r}.log")
                print(f"round {r + 1} {s.name}: {s.rps[-1]:.0f} req/s, "
                      f"{s.cpu_us[-1]:.0f} us CPU per Check", flush=True)  # fmt: skip
        profiles = {}
        if args.perf > 0:
            for s in served:
                profiles[s.name] = perf_profile(s, data, clients, streams, args.perf, work)
    finally:
        for s in served:
            s.server.stop()
    return load_report(args, served, profiles, clients, streams)


def load_report(
    args: argparse.Namespace,
    served: list[Served],
    profiles: dict[str, tuple[dict[str, float], list[tuple[float, str, str]]]],
    clients: int,
    streams: int,
) -> str:
    med = statistics.median
    bare = served[0]
    base_cpu = med(bare.cpu_us)
    lines = [
        f"## Under load: {args.concurrency} in flight ({clients} connections x {streams} "
        f"streams), {args.rounds} rounds x {args.duration:g} s, medians",
        "",
        "| server | req/s | CPU us per Check (all threads) | over bare | "
        "GC gen0/gen1/gen2 per 1,000 Checks |",
        "|---|---:|---:|---:|---|",
    ]
    for s in served:
        cpu = med(s.cpu_us)
        gcs = "/".join(f"{med([g[i] for g in s.gc_per_1000]):.1f}" for i in range(3))
        lines.append(f"| {s.name} | {med(s.rps):.0f} | {cpu:.0f} | {cpu - base_cpu:+.0f} | {gcs} |")
    names = sorted({k for s in served for t in s.threads for k in t})
    lines += ["", "CPU us per Check by thread name:", ""]
    lines += ["| thread | " + " | ".join(s.name for s in served) + " |"]
    lines += ["|---|" + "---:|" * len(served)]
    for name in names:
        cells = [f"{med([t.get(name, 0.0) for t in s.threads]):.1f}" for s in served]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if profiles:
        lines += ["", f"perf cpu-clock, {args.perf:g} s per server: CPU us per Check by shared "
                  "object (share of samples x the CPU per Check above):", ""]  # fmt: skip
        dsos = sorted({d for p in profiles.values() for d in p[0]},
                      key=lambda d: -max(p[0].get(d, 0.0) for p in profiles.values()))  # fmt: skip
        lines += ["| shared object | " + " | ".join(s.name for s in served) + " |"]
        lines += ["|---|" + "---:|" * len(served)]
        for d in dsos[:12]:
            cells = [
                f"{profiles[s.name][0].get(d, 0.0) * med(s.cpu_us) / 100:.1f}"
                for s in served if s.name in profiles
            ]  # fmt: skip
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
        for s in served:
            if s.name not in profiles:
                continue
            cpu = med(s.cpu_us)
            lines += ["", f"Top symbols, {s.name} (us per Check):", "",
                      "| us | share | object | symbol |", "|---:|---:|---|---|"]  # fmt: skip
            for share, dso, sym in profiles[s.name][1]:
                lines.append(f"| {share * cpu / 100:.1f} | {share:.1f}% | {dso} | {sym} |")
    return "\n".join(lines)


# -- in process ----------------------------------------------------------------------------


def drive(coro: Any) -> Any:
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("Check awaited")


class _Context:
    def time_remaining(self) -> float | None:
        return None


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """Median over 5 batches of ``n // 5`` calls, us per call."""
    batch = max(1, n // 5)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        times.append((time.perf_counter() - start) / batch * 1e6)
    return statistics.median(times)


@dataclass
class Bench:
    """The servicer ``extauthz serve`` builds, loaded with the bench tenant."""

    servicer: Any
    registry: Any
    request: Any
    wire: bytes
    served: Callable[[], bytes]


def served_bench() -> Bench:

    from extauthz.app import build
    from extauthz.logs import configure_logging
    from extauthz.settings import Settings
    from extauthz.store.files import read_directory, sources_of

    with open(os.devnull, "w") as devnull:
        sys.stderr, saved = devnull, sys.stderr
        try:
            configure_logging("error", "json")
        finally:
            sys.stderr = saved
    settings = Settings(policies=workload.POLICIES, metrics_listen="127.0.0.1:0")
    components = build(settings)
    docs, errors = read_directory(workload.POLICIES)
    if errors:
        raise SystemExit(f"bench policies: {errors}")
    components.registry.replace_all(sources_of(docs))
    servicer = components.servicer
    context: Any = _Context()
    request = workload.check_request()
    wire = request.SerializeToString()
    argument = check_argument()

    def served() -> bytes:
        return wire_of(drive(servicer.Check(argument(wire), context)))

    for _ in range(2000):  # warm: JWT cache, code paths
        served()
    return Bench(servicer, components.registry, request, wire, served)


def inprocess_part(args: argparse.Namespace) -> str:
    from envoy.service.auth.v3 import external_auth_pb2
    from google.protobuf import struct_pb2

    from extauthz.decode import decode
    from extauthz.response import build_response, metadata_of

    bench = served_bench()
    servicer, registry, request, wire = bench.servicer, bench.registry, bench.request, bench.wire
    served = bench.served
    pipeline = servicer._pipeline  # the servicer's own, as built by app.build
    observer = servicer._observer
    parse = external_auth_pb2.CheckRequest.FromString
    decode_request = request_decoder()
    respond = response_encoder()
    view = decode(request)
    outcome = pipeline(registry.snapshot, view)
    response = build_response(outcome, view.request_id)
    bare_ok = external_auth_pb2.CheckResponse()
    bare_ok.status.code = 0
    no_meta = external_auth_pb2.CheckResponse()
    no_meta.CopyFrom(response)
    no_meta.ClearField("dynamic_metadata")
    meta = metadata_of(outcome, view.request_id)

    def struct_build() -> object:
        s = struct_pb2.Struct()
        fields = s.fields
        for k, v in meta.items():
            if type(v) is str:
                fields[k].string_value = v
            else:
                s.update({k: v})  # type: ignore[dict-item]
        return s

    def copy_template() -> object:
        # What a response cache keyed by the outcome would cost per Check (not what runs).
        r = external_auth_pb2.CheckResponse()
        r.CopyFrom(response)
        r.dynamic_metadata.fields["decision_id"].string_value = "id"
        return r

    n = args.checks
    stages = [
        ("served Check: request bytes to response bytes (observer included)", served),
        ("parse (CheckRequest.FromString)", lambda: parse(wire)),
        ("decode: request bytes to RequestView, as served", lambda: decode_request(wire)),
        ("  the bytes parsed by protobuf, then decode", lambda: decode(parse(wire))),
        ("pipeline", lambda: pipeline(registry.snapshot, view)),
        ("response as sent (with dynamic_metadata)", lambda: respond(outcome, "id")),
        ("metadata_of (the dict)", lambda: metadata_of(outcome, "id")),
        ("Struct from that dict (as response.py sets it)", struct_build),
        ("serialize response", response.SerializeToString),
        ("serialize response without dynamic_metadata", no_meta.SerializeToString),
        ("observer (telemetry + decision log)", lambda: observer(outcome, view, "id", 1e-4)),
        ("a response copied from a cached one, decision_id set", copy_template),
    ]
    from extauthz import decode as decode_module

    if hasattr(decode_module, "decode_wire"):  # absent from a reference src/ before it
        read = decode_module.decode_wire
        stages.insert(4, ("  the bytes read by extauthz.wire", lambda: read(wire)))
    rows = [(name, per_call_us(fn, n)) for name, fn in stages]

    gc.collect()
    before = [g["collections"] for g in gc.get_stats()]
    for _ in range(n):
        served()
    after = [g["collections"] for g in gc.get_stats()]
    gc_rate = "/".join(f"{(b - a) * 1000 / n:.2f}" for a, b in zip(before, after, strict=True))
    gen0_threshold = gc.get_threshold()[0]

    tracemalloc.start()
    served()
    peaks = []
    for _ in range(200):
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        served()
        peaks.append(tracemalloc.get_traced_memory()[1] - base)
    gc.collect()
    held0 = tracemalloc.get_traced_memory()[0]
    for _ in range(n):
        served()
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - held0
    tracemalloc.stop()

    lines = [
        f"## In process: the served servicer, {n} Checks per figure",
        "",
        "| stage | us per call (median of 5 batches) |",
        "|---|---:|",
        *(f"| {name} | {us:.1f} |" for name, us in rows),
        "",
        "| measure | value |",
        "|---|---:|",
        f"| GC collections gen0/gen1/gen2 per 1,000 Checks (gen0 threshold {gen0_threshold}) "
        f"| {gc_rate} |",
        f"| tracemalloc: peak bytes allocated during one Check (median) "
        f"| {statistics.median(peaks):.0f} |",
        f"| tracemalloc: bytes still held after {n} Checks (all caches warm) | {held} |",
        f"| CheckResponse bytes: extauthz allow / bare OK | {len(response.SerializeToString())}"
        f" / {len(bare_ok.SerializeToString())} |",
        f"| of which dynamic_metadata | {response.dynamic_metadata.ByteSize()} |",
        f"| CheckRequest bytes (the bench request) | {len(wire)} |",
    ]
    return "\n".join(lines)


# -- instructions (callgrind) --------------------------------------------------------------

MALLOCS = {
    "pymalloc": ("_PyObject_Malloc", "_PyObject_Calloc", "_PyObject_Realloc"),
    "libc malloc": ("malloc", "calloc", "realloc"),
}


def inner_loop(stage: str, n: int) -> None:
    """Run ``n`` of ``stage`` between two ``itertools.pairwise`` calls, callgrind's markers."""
    import itertools

    bench = served_bench()
    fn: Callable[[], object] = bench.served
    if stage != "served":
        from extauthz.decode import decode
        from extauthz.policy import evaluate

        request = bench.request
        view = decode(request)
        decode_request = request_decoder()
        wire = bench.wire
        pipeline = bench.servicer._pipeline
        snapshot = bench.registry.snapshot
        outcome = pipeline(snapshot, view)
        observer = bench.servicer._observer
        _, tenant, subject = pipeline.trace(snapshot, view)
        if tenant is None or subject is None:
            raise SystemExit("the bench request did not reach the policy engine")
        policies = tenant.policies
        respond = response_encoder()
        fn = {
            "observer": lambda: observer(outcome, view, "id", 1e-4),
            "evaluate": lambda: evaluate(policies, subject),
            "decode": lambda: decode_request(wire),
            "pipeline": lambda: pipeline(snapshot, view),
            "response": lambda: respond(outcome, "id"),
        }[stage]

    itertools.pairwise(())  # callgrind dumps and zeroes here...
    for _ in range(n):
        fn()
    itertools.pairwise(())  # ...and here: the second dump holds exactly the loop


def callgrind_counts(out: Path) -> tuple[int, dict[str, int]]:
    """Instructions collected, and calls per allocator group, from a callgrind output file."""
    names: dict[str, str] = {}
    calls: collections.Counter[str] = collections.Counter()
    total = 0
    callee = ""
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("fn=", "cfn=")):
            key, _, rest = line.partition("=")
            ident, _, name = rest.partition(" ")
            if name:
                names[ident] = name
            if key == "cfn":
                callee = names.get(ident, ident)
        elif line.startswith("calls="):
            calls[callee] += int(line[6:].split()[0])
        elif line.startswith(("summary:", "totals:")):
            total = int(line.split()[1])
    groups = {g: sum(calls[f] for f in fs) for g, fs in MALLOCS.items()}
    return total, groups


def instructions_part(args: argparse.Namespace) -> str:
    srcs: dict[str, Path | None] = {"extauthz": None}
    if args.reference_src:
        srcs["extauthz-ref"] = args.reference_src
    work = Path(tempfile.mkdtemp(prefix="extauthz-callgrind-"))
    k = args.callgrind_checks
    rows = []
    for name, src in srcs.items():
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        if src is not None:
            env["PYTHONPATH"] = str(src)
        for stage in args.callgrind_stages.split(","):
            out = work / f"{name}.{stage}.out"
            subprocess.run(
                ["valgrind", "--tool=callgrind", "--dump-before=pairwise_new",
                 f"--callgrind-out-file={out}",
                 sys.executable, __file__, "--inner-loop", stage, str(k)],
                env=env, capture_output=True, timeout=1800, check=True,
            )  # fmt: skip
            dumps = sorted(work.glob(f"{out.name}.*"), key=lambda f: int(f.suffix[1:]))
            ir, mallocs = callgrind_counts(dumps[-1])  # the last dump before exit: the loop
            allocs = " / ".join(f"{mallocs[g] / k:.0f}" for g in MALLOCS)
            rows.append(f"| {stage} | {name} | {ir / k:,.0f} | {allocs} |")
            print(rows[-1], flush=True)
    return "\n".join(
        [
            f"## Instructions per call (callgrind, {k} calls, counted only inside the loop)",
            "",
            "`served`: request bytes to response bytes (servicer Check, observer included); "
            "`decode`: request bytes to RequestView (protobuf's parse included); `observer`: "
            "telemetry (metrics on) + decision log (`deny`, the request is allowed).",
            "",
            "| what | code | instructions | allocator calls: " + " / ".join(MALLOCS) + " |",
            "|---|---|---:|---:|",
            *rows,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--part", choices=("all", "load", "inprocess", "instructions"), default="all"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=4.0, help="h2load seconds per run")
    parser.add_argument("--concurrency", type=int, default=160, help="Checks in flight")
    parser.add_argument("--max-connections", type=int, default=2)
    parser.add_argument("--perf", type=float, default=3.0, help="perf seconds per server")
    parser.add_argument("--checks", type=int, default=20_000, help="in-process Checks")
    parser.add_argument("--reference-src", type=Path, help="also run extauthz from this src/")
    parser.add_argument(
        "--sized-bare",
        action="store_true",
        help="load: also the bare server answering with a response of extauthz's size",
    )
    parser.add_argument("--callgrind-checks", type=int, default=300, help="calls per count")
    parser.add_argument(
        "--callgrind-stages",
        default="served,observer",
        help="comma-separated, of served, observer, decode, pipeline, evaluate, response",
    )
    parser.add_argument("--inner-loop", nargs=2, metavar=("STAGE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner_loop:
        inner_loop(args.inner_loop[0], int(args.inner_loop[1]))
        return 0
    out = [f"# extauthz CPU accounting ({time.strftime('%Y-%m-%d %H:%M:%S')})"]
    if args.part in ("all", "inprocess"):
        out.append(inprocess_part(args))
        print(out[-1], "\n", flush=True)
    if args.part in ("all", "load"):
        out.append(load_part(args))
        print(out[-1], "\n", flush=True)
    if args.part == "instructions":  # minutes under valgrind: only when asked for
        out.append(instructions_part(args))
        print(out[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
