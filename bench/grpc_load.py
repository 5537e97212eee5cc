"""Direct gRPC load: extauthz vs the bare grpc.aio server, in one run, with h2load.

    bash bench/setup.sh                      # h2load, wrk, py-spy (once)
    python bench/grpc_load.py                # 3 rounds x (c=1, c=16) x (bare, extauthz)
    python bench/grpc_load.py --profile 10   # then 10 s of py-spy on extauthz under c=16
    python bench/grpc_load.py --reference-src /tmp/before/src   # A/B: a change vs before it

Both servers run as child processes on free 127.0.0.1 ports: extauthz (``extauthz serve``
with ``--policies``, default the bench tenant) and ``bench/bare_server.py``. Before any load,
the request is checked on each server with a Python gRPC client (extauthz must answer with the
expected decision, allow by default) and with ``nghttp`` on the exact bytes h2load sends
(HTTP 200, trailer ``grpc-status: 0``, a CheckResponse with the same decision).

Each run is h2load over h2c (POST to the Check path, ``content-type: application/grpc``,
``te: trailers``, a data file holding the gRPC length prefix and the serialized
CheckRequest) for ``--duration`` seconds after ``--warmup``. Concurrency C is ``-c`` clients
(connections, at most ``--max-connections``, like Envoy's one connection per worker) times
``-m`` streams. Rounds alternate which server goes first; the table gives the median over
rounds, and the ratio column the median of the per-round extauthz/bare ratios, so machine
noise that drifts between rounds cancels. Latencies come from h2load's per-request log.
Results go to stdout and bench/results/grpc_load-<time>.md.

``--reference-src DIR`` runs a third server, ``extauthz-ref``, from another copy of the
package (``PYTHONPATH=DIR``, e.g. ``src/`` of a checkout before a change) in the same
alternating rounds, so a change is judged by two ratios against one baseline.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload
from benchlib import (
    CHECK_PATH,
    GrpcServer,
    LoadResult,
    bare_argv,
    extauthz_argv,
    h2load,
    median,
    require,
    table,
    write_result,
)

REFERENCE = "extauthz-ref"


@dataclass(frozen=True, slots=True)
class Shape:
    concurrency: int
    clients: int
    streams: int

    @classmethod
    def of(cls, concurrency: int, max_connections: int) -> Shape:
        clients = max(1, min(concurrency, max_connections))
        while concurrency % clients:
            clients -= 1
        return cls(concurrency, clients, concurrency // clients)


def decision_of(response: external_auth_pb2.CheckResponse) -> str:
    """Envoy's reading: status OK allows, anything else denies."""
    return "allow" if response.status.code == 0 else "deny"


def verify(
    server: GrpcServer,
    request: external_auth_pb2.CheckRequest,
    data_file: Path,
    expect: str,
) -> str:
    """Check the request on ``server`` with grpc and with nghttp; returns a one-line summary."""
    with grpc.insecure_channel(server.address) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        reply = stub.Check(request, timeout=5)
    got = decision_of(reply)
    meta = dict(reply.dynamic_metadata.fields.items())
    if server.name != "bare":
        if got != expect:
            raise SystemExit(f"extauthz answered {got}, expected {expect}: {reply}")
        if reply.HasField("ok_response" if got == "allow" else "denied_response") is False:
            raise SystemExit(f"extauthz answered without ok/denied_response: {reply}")
        if meta["decision"].string_value != expect:
            raise SystemExit(f"extauthz dynamic_metadata disagrees: {reply.dynamic_metadata}")
    elif got != "allow":
        raise SystemExit(f"bare server did not allow: {reply}")

    nghttp = require("nghttp")
    url = f"http://{server.address}{CHECK_PATH}"
    base = [nghttp, "-H", "content-type: application/grpc", "-H", "te: trailers"]
    verbose = subprocess.run(
        [*base, "-v", "-d", str(data_file), url],
        capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    text = verbose.stdout.decode(errors="replace")
    if verbose.returncode != 0 or ":status: 200" not in text or "grpc-status: 0" not in text:
        raise SystemExit(f"nghttp: no HTTP 200 with grpc-status 0 from {server.name}:\n{text}")
    body = subprocess.run(
        [*base, "-d", str(data_file), url], capture_output=True, timeout=10, check=True
    ).stdout
    if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
        raise SystemExit(f"nghttp: not one uncompressed gRPC message from {server.name}")
    raw = external_auth_pb2.CheckResponse.FromString(body[5:])
    if decision_of(raw) != got:
        raise SystemExit(f"{server.name}: h2load's bytes get {decision_of(raw)}, grpc got {got}")
    policy = meta["policy"].string_value if "policy" in meta else ""
    return f"{server.name}: {got}" + (f" by {policy}" if policy else "") + ", grpc-status 0"


def profile(
    server: GrpcServer, data_file: Path, seconds: float, shape: Shape, out_dir: Path
) -> str:
    """py-spy (sampling, non-blocking) on ``server`` while h2load drives it."""
    py_spy = require("py-spy")
    raw = out_dir / "extauthz.pyspy.txt"
    spy = subprocess.Popen(
        [
            py_spy, "record", "--pid", str(server.pid), "--duration", f"{round(seconds)}",
            "--rate", "250", "--nonblocking", "--format", "raw", "--output", str(raw),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        h2load(
            f"http://{server.address}{CHECK_PATH}", data_file,
            clients=shape.clients, streams=shape.streams,
            duration=seconds + 1, warmup=0.5, log_file=out_dir / "profile.h2load.log",
        )  # fmt: skip
        spy.wait(timeout=seconds + 30)
    finally:
        if spy.poll() is None:
            spy.terminate()
            spy.wait(timeout=10)
    if not raw.exists():
        err = spy.stderr.read().decode(errors="replace") if spy.stderr else ""
        return f"py-spy produced no profile: {err}"
    return summarize_profile(raw)


def summarize_profile(raw: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "py-spy recorded no samples"

    def rows(counter: collections.Counter[str]) -> list[tuple[str, str]]:
        return [(f"{100 * n / total:.1f}%", name) for name, n in counter.most_common(top)]

    ours = collections.Counter(
        {k: v for k, v in inclusive.items() if "extauthz/" in k or "grpc" in k.lower()}
    )
    return "\n\n".join(
        [
            f"{total} samples (all threads, 250 Hz, {raw.name}). py-spy sees Python frames "
            "only: a leaf in the event loop's own frame (Runner.run, run_until_complete) is "
            "native time under it (grpc core, uvloop, protobuf).",
            "Self time (leaf frames):\n\n" + table(("share", "function"), rows(own)),
            "Inclusive time, extauthz and grpc frames:\n\n"
            + table(("share", "function"), rows(ours)),
        ]
    )


def _short(frame: str) -> str:
    """``fn (/long/path/site-packages/pkg/mod.py:12)`` -> ``fn (pkg/mod.py:12)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="direct gRPC load: extauthz vs bare server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-connections", type=int, default=2, help="h2load -c cap")
    parser.add_argument("--policies", type=Path, default=workload.POLICIES)
    parser.add_argument("--request", type=Path, help="CheckRequest JSON (default: bench one)")
    parser.add_argument("--expect", choices=("allow", "deny"), default="allow")
    parser.add_argument("--profile", type=float, default=0, help="seconds of py-spy after")
    parser.add_argument(
        "--serve-arg", action="append", default=[], help="extra flag for extauthz serve"
    )
    parser.add_argument(
        "--reference-src",
        type=Path,
        help="also run extauthz from this source tree (a copy of src/ before a change), "
        "as extauthz-ref, in the same rounds",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 0 < args.duration <= 120:
        parser.error("--rounds 1..20 and --duration up to 120 s")
    require("h2load")

    request = workload.load_request(args.request) if args.request else workload.check_request()
    shapes = [Shape.of(c, args.max_connections) for c in args.concurrency]
    work = Path(tempfile.mkdtemp(prefix="extauthz-grpc-load-"))
    data_file = work / "check.bin"
    data_file.write_bytes(workload.grpc_frame(request.SerializeToString()))

    names = ("bare", "extauthz", *((REFERENCE,) if args.reference_src else ()))
    servers: dict[str, GrpcServer] = {}
    try:
        servers["bare"] = GrpcServer("bare", bare_argv, work)
        ext_argv = extauthz_argv(args.policies, *args.serve_arg)
        servers["extauthz"] = GrpcServer("extauthz", ext_argv, work)
        if args.reference_src:
            ref_env = {"PYTHONPATH": str(args.reference_src.resolve())}
            servers[REFERENCE] = GrpcServer(REFERENCE, ext_argv, work, ref_env)
        for server in servers.values():
            server.wait_serving()
        checks = [verify(servers[n], request, data_file, args.expect) for n in names]
        for line in checks:
            print("verified", line, flush=True)

        runs: dict[tuple[str, int], list[LoadResult]] = collections.defaultdict(list)
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for shape in shapes:
                for name in order:
                    server = servers[name]
                    result = h2load(
                        f"http://{server.address}{CHECK_PATH}", data_file,
                        clients=shape.clients, streams=shape.streams,
                        duration=args.duration, warmup=args.warmup,
                        log_file=work / f"{name}-c{shape.concurrency}-r{r}.log",
                    )  # fmt: skip
                    server.check_alive()
                    if result.errors > 0.01 * max(1, result.requests):
                        raise SystemExit(f"{name}: {result.errors} errors ({result.detail})")
                    runs[(name, shape.concurrency)].append(result)
                    print(
                        f"round {r + 1} c={shape.concurrency:<3} {name:<8} "
                        f"{result.rps:9.0f} req/s  p50 {result.p50_ms:.3f} ms  "
                        f"p99 {result.p99_ms:.3f} ms  errors {result.errors}",
                        flush=True,
                    )
        report = render(args, names, shapes, runs, checks)
        if args.profile > 0:
            busiest = max(shapes, key=lambda s: s.concurrency)
            report += "\n## Profile of extauthz under load (py-spy)\n\n"
            report += profile(servers["extauthz"], data_file, args.profile, busiest, work)
            report += "\n"
        sys.stdout.write("\n" + report)
        print(f"\nwritten to {write_result('grpc_load', report)} (raw logs in {work})")
    finally:
        for server in servers.values():
            server.stop()
    return 0


def render(
    args: argparse.Namespace,
    names: tuple[str, ...],
    shapes: list[Shape],
    runs: dict[tuple[str, int], list[LoadResult]],
    checks: list[str],
) -> str:
    rows: list[list[object]] = []
    ratios: list[list[object]] = []
    for shape in shapes:
        c = shape.concurrency
        for name in names:
            rs = runs[(name, c)]
            rows.append(
                [
                    c, f"{shape.clients}x{shape.streams}", name,
                    f"{median([r.rps for r in rs]):.0f}",
                    f"{median([r.p50_ms for r in rs]):.3f}",
                    f"{median([r.p99_ms for r in rs]):.3f}",
                    sum(r.errors for r in rs), sum(r.requests for r in rs),
                ]
            )  # fmt: skip
        bare = runs[("bare", c)]
        for name in names[1:]:
            ext = runs[(name, c)]
            tput = median([e.rps / b.rps for e, b in zip(ext, bare, strict=True)])
            p50 = median([e.p50_ms / b.p50_ms for e, b in zip(ext, bare, strict=True)])
            p99 = median([e.p99_ms / b.p99_ms for e, b in zip(ext, bare, strict=True)])
            added = median([e.p50_ms - b.p50_ms for e, b in zip(ext, bare, strict=True)])
            verdict = "met" if tput >= 0.85 else "NOT met"
            ratios.append(
                [
                    c, name, f"{tput:.2f}x ({verdict})", f"{p50:.2f}x", f"{p99:.2f}x",
                    f"{added:+.3f}",
                ]
            )  # fmt: skip
    return "\n".join(
        [
            "# Direct gRPC load: extauthz vs bare grpc.aio server",
            "",
            f"{args.rounds} alternating rounds, {args.duration:g} s each after "
            f"{args.warmup:g} s warm-up; h2load over h2c; policies {args.policies}; "
            f"request {args.request or 'bench/workload.py'}; "
            f"extauthz flags {' '.join(args.serve_arg) or '(defaults)'}"
            + (f"; extauthz-ref: {args.reference_src}" if args.reference_src else "")
            + ".",
            "Verified: " + "; ".join(checks) + ".",
            "",
            table(
                ("C", "conns x streams", "server", "req/s", "p50 ms", "p99 ms", "errors", "ok"),
                rows,
            ),
            "",
            "extauthz / bare (median of per-round ratios; target throughput >= 0.85x):",
            "",
            table(("C", "server", "throughput", "p50", "p99", "p50 added ms"), ratios),
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
