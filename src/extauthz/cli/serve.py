"""``extauthz serve``: answer Envoy's Check calls."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from extauthz.cli import _env
from extauthz.logs import configure_logging
from extauthz.pathnorm import PathNormalization
from extauthz.settings import Settings, SettingsError

METRICS_PORT = 9464


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help="serve envoy.service.auth.v3.Authorization/Check"
    )
    _env.add(p, "--policies", help="directory (or file) of YAML documents [default: policies]")
    _env.add(p, "--redis-url", help="redis://, rediss://, unix:// (tenant rules in Redis)")
    _env.add(p, "--listen", default="0.0.0.0:9191", help="gRPC address HOST:PORT")
    _env.add(
        p,
        "--metrics-listen",
        help="Prometheus address HOST:PORT (default: the --listen host, port 9464; off when empty)",
    )
    _env.add(
        p,
        "--metrics-max-tenants",
        default="100",
        help="tenants with their own metric label value; later ones count as _other",
    )
    _env.add(p, "--xff-num-trusted-hops", default="0", help="hops of x-forwarded-for to trust")
    _env.add(
        p,
        "--trusted-proxy-principal",
        action="append",
        help="SPIFFE ID whose x-forwarded-client-cert is trusted (repeatable)",
    )
    _env.add(
        p,
        "--trusted-proxy-cidr",
        action="append",
        help="peer network whose x-forwarded-client-cert is trusted (repeatable)",
    )
    _env.add(
        p,
        "--trusted-proxy-xfcc",
        default="SANITIZE_SET",
        choices=["SANITIZE_SET", "APPEND_FORWARD"],
        help="how the trusted proxies fill x-forwarded-client-cert (forward_client_cert_details)",
    )
    _env.add(
        p,
        "--path-normalization",
        default="BASE",
        choices=[m.value for m in PathNormalization],
        help="as Istio's meshConfig",
    )
    _env.add(p, "--jwks-ca-file", help="CA bundle for jwksUri fetches (default: system)")
    _env.add(p, "--poll-interval", default="1.0", help="seconds between policy file scans")
    _env.add(
        p,
        "--ratelimit-sync-interval",
        default="0.1",
        help="seconds between syncs of the rate limit counters with Redis",
    )
    _env.add(p, "--grace-period", default="10", help="seconds to finish in-flight Checks")
    _env.add(p, "--log-level", default="info", help="debug, info, warning, error")
    _env.add(p, "--log-format", default="json", choices=["json", "console"], help="log format")
    _env.add(
        p,
        "--decision-log",
        default="deny",
        choices=["all", "deny", "none"],
        help="which decisions get a log line (AUDIT matches and dry-run differences always"
        " do); 'all' costs about a third of the throughput",
    )
    _env.add(p, "--decision-log-sample", default="1.0", help="fraction of those to log (0..1)")
    _env.add(
        p,
        "--mask-header",
        action="append",
        help="header that decision logs mask, besides authorization and cookies (repeatable)",
    )
    _env.add(p, "--workers", default="1", help="processes sharing the port (SO_REUSEPORT)")
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace) -> Settings:
    if args.policies and args.redis_url:
        raise SettingsError(
            "--policies (EXTAUTHZ_POLICIES) and --redis-url (EXTAUTHZ_REDIS_URL) are both set;"
            " choose one store"
        )
    try:
        return Settings(
            listen=args.listen,
            policies=Path(args.policies or "policies"),
            redis_url=args.redis_url or None,
            metrics_listen=_metrics_listen(args.metrics_listen, args.listen),
            metrics_max_tenants=int(args.metrics_max_tenants),
            xff_num_trusted_hops=int(args.xff_num_trusted_hops),
            trusted_proxy_principals=tuple(args.trusted_proxy_principal or ()),
            trusted_proxy_cidrs=tuple(args.trusted_proxy_cidr or ()),
            trusted_proxy_xfcc=args.trusted_proxy_xfcc,
            path_normalization=PathNormalization(args.path_normalization),
            jwks_ca_file=args.jwks_ca_file or None,
            poll_interval=float(args.poll_interval),
            ratelimit_sync_interval=float(args.ratelimit_sync_interval),
            grace_period=float(args.grace_period),
            log_level=args.log_level,
            log_format=args.log_format,
            decision_log=args.decision_log,
            decision_log_sample=float(args.decision_log_sample),
            mask_headers=tuple(args.mask_header or ()),
            workers=int(args.workers),
        ).check()
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _metrics_listen(value: str | None, listen: str) -> str | None:
    """Unset: port 9464 on the --listen host. Empty (or "off"): no metrics endpoint."""
    if value is None:
        host = listen.rpartition(":")[0] or "0.0.0.0"
        return f"{host}:{METRICS_PORT}"
    return None if value.strip().lower() in ("", "off") else value


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
    except SettingsError as exc:
        print(f"extauthz serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        from extauthz.supervisor import Supervisor

        return Supervisor(settings).run()
    from extauthz.server import serve
    from extauthz.telemetry_env import TelemetryError

    try:
        serve(settings)
    except TelemetryError as exc:
        print(f"extauthz serve: {exc}", file=sys.stderr)
        return 2
    return 0
