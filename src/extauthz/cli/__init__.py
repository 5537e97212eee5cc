"""The ``extauthz`` command: serve, manage policies, decide offline, probe health.

Every flag reads its default from ``EXTAUTHZ_<FLAG>`` (see ``extauthz.settings.env_name``),
so the same image is configured by flags locally and by environment in Kubernetes.
"""

from __future__ import annotations

import argparse
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
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
