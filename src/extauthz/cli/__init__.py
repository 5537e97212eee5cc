"""The ``extauthz`` command: serve, manage policies, decide offline, probe health.

Every flag reads its default from ``EXTAUTHZ_<FLAG>`` (see ``extauthz.settings.env_name``),
so the same image is configured by flags locally and by environment in Kubernetes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from extauthz import __version__, compiled
from extauthz.cli import check, data, envoy, health, policy, ratelimit, serve

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="extauthz",
        description="External authorization for Envoy and Istio (ext_authz gRPC).",
    )
    parser.add_argument(
        "--version", action="version", version=f"extauthz {__version__} ({compiled.build()})"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, policy, data, ratelimit, check, health, envoy):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here, not at exit
    except BrokenPipeError:
        # The reader stopped early (``| head``): what it read stands. Later writes go
        # nowhere, and the status is the one a process ended by SIGPIPE reports.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
