"""Settings: resolved once from flags and ``EXTAUTHZ_*`` variables, checked before serving.

Every flag has an environment variable named ``EXTAUTHZ_`` + the flag in upper case with
``-`` as ``_`` (``--redis-url`` -> ``EXTAUTHZ_REDIS_URL``). A flag given on the command
line wins over the variable. Anything invalid fails here, before a port is opened.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from extauthz.identity import XFCC_MODES, TrustedProxies, parse_spiffe_id
from extauthz.pathnorm import PathNormalization
from extauthz.pipeline import CheckOptions

__all__ = ["Settings", "SettingsError", "env_name", "parse_hostport"]

ENV_PREFIX = "EXTAUTHZ_"


class SettingsError(ValueError):
    """A setting is invalid; the message names the flag and its variable."""


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def parse_hostport(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"--{flag} ({env_name(flag)}): expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True, slots=True)
class Settings:
    """What ``extauthz serve`` runs with."""

    listen: str = "0.0.0.0:9191"
    policies: Path = Path("policies")
    redis_url: str | None = None
    metrics_listen: str | None = None
    xff_num_trusted_hops: int = 0
    trusted_proxy_principals: tuple[str, ...] = ()
    trusted_proxy_cidrs: tuple[str, ...] = ()
    trusted_proxy_xfcc: str = "SANITIZE_SET"  # the proxies' forward_client_cert_details
    path_normalization: PathNormalization = PathNormalization.BASE
    jwks_ca_file: str | None = None
    poll_interval: float = 1.0
    ratelimit_sync_interval: float = 0.1  # seconds between rate limit counter syncs (Redis)
    grace_period: float = 10.0
    log_level: str = "info"
    log_format: str = "json"
    metrics_max_tenants: int = 100  # tenant label values before "_other"
    decision_log: str = "deny"  # all, deny, none (AUDIT matches are always logged)
    decision_log_sample: float = 1.0
    mask_headers: tuple[str, ...] = ()
    workers: int = 1
    reuse_port: bool = False  # set for the workers of a supervisor (SO_REUSEPORT)
    extra: Mapping[str, str] = field(default_factory=dict)

    def check(self) -> Settings:
        """Validate; returns self. Raises SettingsError."""
        parse_hostport(self.listen, "listen")
        if self.metrics_listen:
            parse_hostport(self.metrics_listen, "metrics-listen")
        if self.xff_num_trusted_hops < 0:
            raise SettingsError("--xff-num-trusted-hops must be >= 0")
        for principal in self.trusted_proxy_principals:
            try:
                parse_spiffe_id(principal)
            except ValueError as exc:
                raise SettingsError(f"--trusted-proxy-principal {principal!r}: {exc}") from None
        for cidr in self.trusted_proxy_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise SettingsError(f"--trusted-proxy-cidr {cidr!r}: {exc}") from None
        if self.trusted_proxy_xfcc not in XFCC_MODES:
            raise SettingsError(f"--trusted-proxy-xfcc must be one of {', '.join(XFCC_MODES)}")
        if self.redis_url is None and not self.policies.exists():
            raise SettingsError(
                f"--policies ({env_name('policies')}): {self.policies} does not exist"
            )
        if self.log_format not in ("json", "console"):
            raise SettingsError("--log-format must be json or console")
        if self.decision_log not in ("all", "deny", "none"):
            raise SettingsError("--decision-log must be all, deny or none")
        if not 0.0 <= self.decision_log_sample <= 1.0:
            raise SettingsError("--decision-log-sample must be between 0 and 1")
        if not 0.01 <= self.ratelimit_sync_interval <= 10:
            raise SettingsError("--ratelimit-sync-interval must be between 0.01 and 10 seconds")
        if self.workers < 1:
            raise SettingsError("--workers must be >= 1")
        if self.metrics_max_tenants < 0:
            raise SettingsError("--metrics-max-tenants must be >= 0")
        if self.jwks_ca_file and not os.path.isfile(self.jwks_ca_file):
            raise SettingsError(f"--jwks-ca-file: {self.jwks_ca_file} does not exist")
        return self

    def check_options(self) -> CheckOptions:
        return CheckOptions(
            trusted_proxies=TrustedProxies(
                self.trusted_proxy_principals,
                self.trusted_proxy_cidrs,
                xfcc=self.trusted_proxy_xfcc,
            ),
            xff_num_trusted_hops=self.xff_num_trusted_hops,
            path_normalization=self.path_normalization,
        )
