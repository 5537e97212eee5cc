"""Settings: resolved once from flags and ``EXTAUTHZ_*`` variables, checked before serving.

Every flag has an environment variable named ``EXTAUTHZ_`` + the flag in upper case with
``-`` as ``_`` (``--redis-url`` -> ``EXTAUTHZ_REDIS_URL``). A flag given on the command
line wins over the variable. Anything invalid fails here, before a port is opened.

Each setting is written once: its default on the ``Settings`` field, its flag and help text
in ``FLAGS``. ``extauthz serve`` has a flag for each; ``extauthz check`` for each that changes
a decision (``Flag.check``), so an offline decision is the server's.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Final

from extauthz.identity import XFCC_MODES, TrustedProxies, parse_spiffe_id
from extauthz.logs import DEFAULT_BUFFER
from extauthz.options import CheckOptions
from extauthz.pathnorm import PathNormalization

__all__ = [
    "FLAGS",
    "METRICS_PORT",
    "Flag",
    "Settings",
    "SettingsError",
    "env_name",
    "parse_hostport",
    "settings_from_flags",
]

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
    jwks_allow_private: bool = False  # jwksUri may resolve to loopback/private/link-local
    poll_interval: float = 1.0
    ratelimit_sync_interval: float = 0.1  # seconds between rate limit counter syncs (Redis)
    grace_period: float = 10.0
    log_level: str = "info"
    log_format: str = "json"
    log_buffer: int = DEFAULT_BUFFER  # log records queued for stderr; beyond, dropped
    metrics_max_tenants: int = 100  # tenant label values before "_other"
    decision_log: str = "deny"  # all, deny, none (AUDIT matches are always logged)
    decision_log_sample: float = 1.0
    mask_headers: tuple[str, ...] = ()
    workers: int = 1
    reuse_port: bool = False  # set for the workers of a supervisor (SO_REUSEPORT)

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
        if self.log_buffer < 1:
            raise SettingsError("--log-buffer must be at least 1")
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


METRICS_PORT: Final = 9464


@dataclass(frozen=True, slots=True)
class Flag:
    """The command-line side of one ``Settings`` field."""

    help: str
    name: str = ""  # the flag without "--", when it is not the field's name
    choices: tuple[str, ...] = ()
    check: bool = False  # changes a decision: ``extauthz check`` takes it too


# Field name -> flag, in the order of ``extauthz serve --help``. A repeatable flag is a tuple
# field; its variable holds comma-separated values. A bool field is a switch (its variable:
# 1, true, yes or on).
FLAGS: Final[dict[str, Flag]] = {
    "policies": Flag("directory (or file) of YAML documents", check=True),
    "redis_url": Flag("redis://, rediss://, unix:// (tenant rules in Redis)"),
    "listen": Flag("gRPC address HOST:PORT"),
    "metrics_listen": Flag(
        f"Prometheus address HOST:PORT (default: the --listen host, port {METRICS_PORT};"
        " off when empty)"
    ),
    "metrics_max_tenants": Flag(
        "tenants with their own metric label value; later ones count as _other"
    ),
    "xff_num_trusted_hops": Flag("hops of x-forwarded-for to trust", check=True),
    "trusted_proxy_principals": Flag(
        "SPIFFE ID whose x-forwarded-client-cert is trusted (repeatable)",
        name="trusted-proxy-principal",
        check=True,
    ),
    "trusted_proxy_cidrs": Flag(
        "peer network whose x-forwarded-client-cert is trusted (repeatable)",
        name="trusted-proxy-cidr",
        check=True,
    ),
    "trusted_proxy_xfcc": Flag(
        "how the trusted proxies fill x-forwarded-client-cert (forward_client_cert_details)",
        choices=XFCC_MODES,
        check=True,
    ),
    "path_normalization": Flag(
        "as Istio's meshConfig", choices=tuple(m.value for m in PathNormalization), check=True
    ),
    "jwks_ca_file": Flag("CA bundle for jwksUri fetches (default: system)", check=True),
    "jwks_allow_private": Flag(
        "let jwksUri resolve to loopback, private or link-local addresses (refused by default:"
        " tenants could reach internal services and cloud metadata)",
        check=True,
    ),
    "poll_interval": Flag("seconds between policy file scans"),
    "ratelimit_sync_interval": Flag("seconds between syncs of the rate limit counters with Redis"),
    "grace_period": Flag("seconds to finish in-flight Checks"),
    "log_level": Flag("debug, info, warning, error"),
    "log_format": Flag("log format", choices=("json", "console")),
    "log_buffer": Flag(
        "log records held for stderr while it is slower than the server; beyond them records"
        " are dropped and counted (extauthz_log_records_dropped_total), never waited for"
    ),
    "decision_log": Flag(
        "which decisions get a log line (AUDIT matches and dry-run differences always do);"
        " a line costs about 20 us of the event loop",
        choices=("all", "deny", "none"),
    ),
    "decision_log_sample": Flag("fraction of those to log (0..1)"),
    "mask_headers": Flag(
        "header that decision logs mask, besides authorization and cookies (repeatable)",
        name="mask-header",
    ),
    "workers": Flag("processes sharing the port (SO_REUSEPORT)"),
}

# Field type (as annotated) -> how a flag's text becomes the value.
_PARSE: Final[dict[str, Callable[[Any], Any]]] = {
    "str": str,
    "int": int,
    "float": float,
    "Path": Path,
    "PathNormalization": PathNormalization,
    "str | None": lambda value: value or None,
    "bool": bool,
    "tuple[str, ...]": tuple,
}


def flag_name(field_name: str) -> str:
    return "--" + (FLAGS[field_name].name or field_name.replace("_", "-"))


def default_of(field_name: str) -> Any:
    (spec,) = [f for f in fields(Settings) if f.name == field_name]
    return None if spec.default is MISSING else spec.default


def settings_from_flags(values: Mapping[str, Any]) -> Settings:
    """Settings from flag values as the command line gives them: text (from the flag or its
    variable), a list for a repeatable flag, None for one not given (the field's default).
    Raises SettingsError."""
    kwargs: dict[str, Any] = {}
    types = {f.name: str(f.type) for f in fields(Settings)}
    try:
        for name, value in values.items():
            if name == "metrics_listen":
                kwargs[name] = _metrics_listen(value, values.get("listen") or default_of("listen"))
            elif value is not None and (value != "" or types[name] != "Path"):
                kwargs[name] = _PARSE[types[name]](value)
        return Settings(**kwargs).check()
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _metrics_listen(value: str | None, listen: str) -> str | None:
    """Unset: port 9464 on the --listen host. Empty (or "off"): no metrics endpoint."""
    if value is None:
        host = listen.rpartition(":")[0] or "0.0.0.0"
        return f"{host}:{METRICS_PORT}"
    return None if value.strip().lower() in ("", "off") else value
