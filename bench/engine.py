"""In-process time per Check, stage by stage, for the bench tenant (20 policies, JWT cached).

    python bench/engine.py [--iterations 20000] [--max-seconds 8]
    python bench/engine.py --reference-src /tmp/before/src [--rounds 3]   # A/B, alternating

The request and tenant are bench/workload.py's (allowed by the 15th policy, no AUDIT
match). Each stage runs a warm-up, then ``--iterations`` timed calls (each call timed on its
own with ``time.perf_counter_ns``, stopping early after ``--max-seconds``); the table gives
the median, p99 and mean in microseconds. Stages:

- ``evaluate``: the policy engine alone (``policy.evaluate`` on a prebuilt Subject);
- ``authenticate``: the tenant's Authenticator with the token already verified (cache hit);
- ``pipeline``: ``CheckPipeline.__call__`` (identity, tenant, authn with a cached token,
  Subject, engine, Outcome); target: a median of at most 30 us;
- ``decode`` and ``response``: the request's bytes -> RequestView (protobuf's parse included
  where the build uses it), Outcome -> the CheckResponse as sent;
- ``decode+pipeline+response``: the three, from the request's bytes;
- ``servicer.Check (wire)``: what the server runs per call besides grpc itself:
  ``AuthorizationServicer.Check`` (driven without an event loop, it never awaits) from the
  request's bytes to the response's bytes (protobuf parse and serialize included).

- ``served Check, decision log all|none``: the same, with the servicer ``extauthz serve``
  builds (``extauthz.app.build``: telemetry with metrics on, as by default, and decision log
  as observer; log lines go to /dev/null through the server's logging setup). Time spent by
  the log writer thread is not in these numbers, only what the Check itself waits for.

``timer`` is an empty call: the floor every other row includes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload
from benchlib import check_argument, request_decoder, response_encoder, wire_of

from extauthz.authn import JwksCache
from extauthz.catalog import compile_documents
from extauthz.decode import decode
from extauthz.documents import load_documents
from extauthz.logs import configure_logging
from extauthz.pipeline import CheckPipeline
from extauthz.policy import evaluate
from extauthz.registry import Registry, Snapshot
from extauthz.servicer import AuthorizationServicer
from extauthz.settings import Settings
from extauthz.sources import TenantSource

TARGET_PIPELINE_US = 30.0


@dataclass(frozen=True, slots=True)
class Row:
    stage: str
    n: int
    median_us: float
    p99_us: float
    mean_us: float


class _Context:
    """The one ServicerContext method Check calls."""

    def time_remaining(self) -> float | None:
        return None


def percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def measure(
    stage: str, fn: Callable[[], object], iterations: int, max_seconds: float, warmup: int
) -> Row:
    for _ in range(warmup):
        fn()
    gc.collect()
    clock = time.perf_counter_ns
    samples: list[int] = []
    append = samples.append
    deadline = clock() + int(max_seconds * 1e9)
    for _ in range(iterations):
        start = clock()
        fn()
        end = clock()
        append(end - start)
        if end > deadline:
            break
    samples.sort()
    return Row(
        stage,
        len(samples),
        percentile(samples, 0.5) / 1000,
        percentile(samples, 0.99) / 1000,
        statistics.fmean(samples) / 1000,
    )


def drive(coro: Any) -> Any:
    """Run a coroutine that never awaits to its end, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("Check awaited; it must decide without awaiting")


def served_servicer(
    policies: Path, tenant: str, docs: tuple[Any, ...], decision_log: str
) -> AuthorizationServicer:
    """The servicer ``extauthz serve`` runs, with the given decision log mode."""
    from extauthz.app import build

    # Metrics on, as ``extauthz serve`` has them by default (no endpoint: nothing scrapes).
    settings = Settings(
        policies=policies.parent, decision_log=decision_log, metrics_listen="127.0.0.1:0"
    )
    components = build(settings)
    components.registry.replace_all({tenant: TenantSource(tenant, "v1", docs)})
    servicer: AuthorizationServicer = components.servicer
    return servicer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="in-process time per Check, per stage")
    parser.add_argument("--iterations", type=int, default=20_000, help="timed calls per stage")
    parser.add_argument("--warmup", type=int, default=2_000, help="untimed calls per stage")
    parser.add_argument("--max-seconds", type=float, default=8.0, help="time cap per stage")
    parser.add_argument("--policies", type=Path, default=workload.TENANT_FILE, help="YAML file")
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    parser.add_argument(
        "--reference-src", type=Path, help="A/B: also run extauthz from this src/, alternating"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per version (A/B only)")
    parser.add_argument("--rows-json", type=Path, help=argparse.SUPPRESS)  # a round's rows
    args = parser.parse_args(argv)
    if args.reference_src is not None:
        return compare(args)
    # As served (JSON lines through the writer thread), into /dev/null for the whole run.
    devnull = open(os.devnull, "w")  # noqa: SIM115
    with contextlib.redirect_stderr(devnull):
        configure_logging("error", "json")

    docs = load_documents(args.policies.read_bytes(), str(args.policies))
    jwks = JwksCache()
    tenant = compile_documents(workload.TENANT, docs, jwks)
    snapshot = Snapshot.build({tenant.name: tenant})
    pipeline = CheckPipeline()
    request = workload.check_request()
    wire = request.SerializeToString()
    view = decode(request)

    outcome, _, subject = pipeline.trace(snapshot, view)  # verifies and caches the token
    outcome, _, subject = pipeline.trace(snapshot, view)
    if not outcome.allowed or outcome.policy != workload.DECIDING_POLICY:
        raise SystemExit(f"unexpected decision for the bench request: {outcome}")
    if not outcome.jwt_cache_hit or subject is None:
        raise SystemExit("the token was not served from the cache")

    registry = Registry(jwks)
    registry.replace_all({tenant.name: TenantSource(tenant.name, "v1", tuple(docs))})
    servicer = AuthorizationServicer(registry, pipeline)
    context: Any = _Context()  # stands in for grpc.aio.ServicerContext
    parse = check_argument()
    decode_request = request_decoder()
    reply = external_auth_pb2.CheckResponse.FromString(
        wire_of(drive(servicer.Check(parse(wire), context)))
    )
    if reply.status.code != 0 or not reply.HasField("ok_response"):
        raise SystemExit(f"servicer did not allow the bench request: {reply}")

    policies = tenant.policies
    authenticator = tenant.authenticator
    served = {
        mode: served_servicer(args.policies, tenant.name, tuple(docs), mode)
        for mode in ("all", "none")
    }

    def served_check(mode: str) -> Callable[[], object]:
        check = served[mode].Check
        return lambda: wire_of(drive(check(parse(wire), context)))

    respond = response_encoder()

    def full() -> object:
        v = decode_request(wire)
        return respond(pipeline(snapshot, v), v.request_id)

    stages: list[tuple[str, Callable[[], object]]] = [
        ("timer", lambda: None),
        ("evaluate", lambda: evaluate(policies, subject)),
        ("authenticate (cached JWT)", lambda: authenticator.authenticate(view)),
        ("pipeline", lambda: pipeline(snapshot, view)),
        ("decode (request bytes, parse included)", lambda: decode_request(wire)),
        ("response", lambda: respond(outcome, view.request_id)),
        ("decode+pipeline+response", full),
        (
            "servicer.Check (wire)",
            lambda: wire_of(drive(servicer.Check(parse(wire), context))),
        ),
        ("served Check, decision log all", served_check("all")),
        ("served Check, decision log none", served_check("none")),
    ]
    rows = [measure(n, fn, args.iterations, args.max_seconds, args.warmup) for n, fn in stages]

    pipe = next(r for r in rows if r.stage == "pipeline")
    verdict = "met" if pipe.median_us <= TARGET_PIPELINE_US else "NOT met"
    lines = [
        f"# extauthz in-process Check time ({time.strftime('%Y-%m-%d %H:%M:%S')})",
        "",
        f"Tenant {args.policies.name}: {len(policies)} policies, decided by "
        f"{outcome.policy}; JWT cached. Python {platform.python_version()}, "
        f"{platform.machine()}.",
        "",
        "| stage | n | median us | p99 us | mean us |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {r.stage} | {r.n} | {r.median_us:.1f} | {r.p99_us:.1f} | {r.mean_us:.1f} |"
            for r in rows
        ),
        "",
        f"pipeline median {pipe.median_us:.1f} us: target <= {TARGET_PIPELINE_US:.0f} us {verdict}",
    ]
    text = "\n".join(lines) + "\n"
    if args.rows_json is not None:
        args.rows_json.write_text(json.dumps([dataclasses.asdict(r) for r in rows]))
        return 0
    sys.stdout.write(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


def compare(args: argparse.Namespace) -> int:
    """A/B: rounds of this benchmark in child processes, extauthz (this checkout's imports)
    and extauthz-ref (``PYTHONPATH`` = ``--reference-src``), alternating which goes first.
    Reported per stage: the median over rounds of each version's median, and the median of
    the per-round ratios extauthz / extauthz-ref."""
    names = ("extauthz", "extauthz-ref")
    envs = {
        "extauthz": dict(os.environ),
        "extauthz-ref": {**os.environ, "PYTHONPATH": str(args.reference_src.resolve())},
    }
    medians: dict[tuple[str, str], list[float]] = {}
    stages: list[str] = []
    with tempfile.TemporaryDirectory(prefix="extauthz-engine-") as tmp:
        for round_ in range(args.rounds):
            order = names if round_ % 2 == 0 else names[::-1]
            for name in order:
                out = Path(tmp) / f"{name}-{round_}.json"
                child = [
                    sys.executable, __file__, "--rows-json", str(out),
                    "--iterations", str(args.iterations), "--warmup", str(args.warmup),
                    "--max-seconds", str(args.max_seconds), "--policies", str(args.policies),
                ]  # fmt: skip
                subprocess.run(child, env=envs[name], check=True, timeout=900)
                for row in json.loads(out.read_text()):
                    if row["stage"] not in stages:
                        stages.append(row["stage"])
                    medians.setdefault((row["stage"], name), []).append(row["median_us"])
                print(f"round {round_ + 1}/{args.rounds}: {name} done", file=sys.stderr)
    lines = [
        f"# extauthz in-process Check time, A/B ({time.strftime('%Y-%m-%d %H:%M:%S')})",
        "",
        f"extauthz-ref: {args.reference_src}; {args.rounds} alternating rounds; "
        f"{os.cpu_count()} cores; Python {platform.python_version()}.",
        "",
        "| stage | extauthz median us | extauthz-ref median us | ratio (median of rounds) |",
        "|---|---:|---:|---:|",
    ]
    for stage in stages:
        new, ref = medians[(stage, names[0])], medians[(stage, names[1])]
        ratios = [a / b for a, b in zip(new, ref, strict=True) if b > 0]
        ratio = f"{statistics.median(ratios):.2f}" if ratios else "-"
        lines.append(
            f"| {stage} | {statistics.median(new):.1f} | {statistics.median(ref):.1f} | {ratio} |"
        )
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
