"""``extauthz serve``: answer Envoy's Check calls."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from extauthz.cli._flags import add_settings_flags, settings_from_args
from extauthz.logs import configure_logging
from extauthz.settings import Settings, SettingsError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help="serve envoy.service.auth.v3.Authorization/Check"
    )
    add_settings_flags(p, "serve")
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace) -> Settings:
    if args.policies and args.redis_url:
        raise SettingsError(
            "--policies (EXTAUTHZ_POLICIES) and --redis-url (EXTAUTHZ_REDIS_URL) are both set;"
            " choose one store"
        )
    return settings_from_args(args, "serve")


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
    except SettingsError as exc:
        print(f"extauthz serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, settings.log_buffer)
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
