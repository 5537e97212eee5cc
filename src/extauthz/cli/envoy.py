"""``extauthz envoy-config``: print a bootstrap for an Envoy that asks extauthz first."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

from extauthz.cli import _env
from extauthz.envoyoptions import DEFAULT_BODY_BYTES, EnvoyOptions, HostPort, TlsFiles, XfccMode
from extauthz.pathnorm import PathNormalization

_add = functools.partial(_env.add, scope="envoy")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "envoy-config",
        help="print an Envoy bootstrap that calls extauthz like an Istio CUSTOM provider",
        description=(
            "Print a static Envoy bootstrap: one listener (mTLS with --tls-*, else plain HTTP) "
            "whose ext_authz filter asks extauthz over gRPC and fails closed (403), routing "
            "what is allowed to --upstream."
        ),
    )
    _add(p, "--extauthz", default="127.0.0.1:9191", help="extauthz gRPC address HOST:PORT")
    _add(p, "--listen", default="127.0.0.1:10000", help="listener address HOST:PORT")
    _add(p, "--upstream", required=False, help="where allowed requests go, HOST:PORT")
    _add(p, "--tls-ca", help="CA file that client certificates must chain to (mTLS)")
    _add(p, "--tls-cert", help="listener certificate chain file (mTLS)")
    _add(p, "--tls-key", help="listener private key file (mTLS)")
    _add(p, "--timeout", default="0.5", help="seconds Envoy waits for a Check")
    _add(
        p,
        "--with-request-body",
        nargs="?",
        const=str(DEFAULT_BODY_BYTES),
        metavar="MAX_BYTES",
        help=f"send the request body in the Check (up to MAX_BYTES, {DEFAULT_BODY_BYTES} "
        "when omitted)",
    )
    _add(
        p,
        "--xfcc",
        nargs="?",
        const=XfccMode.SANITIZE_SET.value,
        choices=[m.value for m in XfccMode],
        help="gateway: forward the client's certificate URI in x-forwarded-client-cert "
        f"({XfccMode.SANITIZE_SET.value} when no mode is given; needs --tls-*)",
    )
    # The same variable as serve's flag: Envoy and extauthz must normalize paths alike.
    _env.add(
        p,
        "--path-normalization",
        default="BASE",
        choices=[m.value for m in PathNormalization],
        help="what Envoy does to the path before the Check, as Istio's meshConfig",
    )
    _add(
        p,
        "--include-tls-session",
        action="store_true",
        help="send the TLS session (SNI) in the Check; connection.sni conditions need it",
    )
    _add(p, "--admin-port", default="9901", help="admin port (bound to 127.0.0.1)")
    _add(p, "--format", default="yaml", choices=["yaml", "json"], help="output format")
    p.set_defaults(func=run)


def options_from(args: argparse.Namespace) -> EnvoyOptions:
    """The generator's options from parsed flags. Raises ValueError on a bad flag."""
    if not args.upstream:
        raise ValueError("--upstream HOST:PORT is required")
    tls_flags = (args.tls_ca, args.tls_cert, args.tls_key)
    if any(tls_flags) and not all(tls_flags):
        raise ValueError("--tls-ca, --tls-cert and --tls-key go together")
    tls = (
        TlsFiles(Path(args.tls_ca), Path(args.tls_cert), Path(args.tls_key))
        if all(tls_flags)
        else None
    )
    return EnvoyOptions(
        extauthz=HostPort.parse(args.extauthz),
        upstream=HostPort.parse(args.upstream),
        listen=HostPort.parse(args.listen),
        admin_port=int(args.admin_port),
        tls=tls,
        timeout=float(args.timeout),
        with_request_body=int(args.with_request_body) if args.with_request_body else None,
        xfcc=XfccMode(args.xfcc) if args.xfcc else None,
        path_normalization=PathNormalization(args.path_normalization),
        include_tls_session=bool(args.include_tls_session),
    )


def run(args: argparse.Namespace) -> int:
    from extauthz.envoyconfig import render

    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"extauthz envoy-config: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render(options, args.format))
    return 0
