"""What an Envoy bootstrap of ``extauthz envoy-config`` depends on (``envoyconfig`` builds it).

Kept apart from the generator so that the command line, which every ``extauthz`` command
parses, does not load the Envoy message library (about a second of start-up).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from extauthz.pathnorm import PathNormalization

__all__ = ["DEFAULT_BODY_BYTES", "EnvoyOptions", "HostPort", "TlsFiles", "XfccMode"]

DEFAULT_BODY_BYTES: Final = 8192


@dataclass(frozen=True, slots=True)
class HostPort:
    """``host:port`` (``[v6]:port`` for IPv6); host is an IP address or a DNS name."""

    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> HostPort:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError(f"port out of range in {value!r}")
        return cls(host, number)

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for an mTLS listener: the CA that client certificates must chain to, and
    the listener's own certificate chain and key."""

    ca: Path
    cert: Path
    key: Path


class XfccMode(StrEnum):
    """How a gateway forwards ``x-forwarded-client-cert`` (Envoy's names)."""

    SANITIZE_SET = "SANITIZE_SET"  # replace the client's header with this connection's cert
    APPEND_FORWARD = "APPEND_FORWARD"  # keep the client's elements, append this connection's


@dataclass(frozen=True, slots=True)
class EnvoyOptions:
    """Everything the bootstrap depends on."""

    extauthz: HostPort
    upstream: HostPort
    listen: HostPort = HostPort("127.0.0.1", 10000)
    admin_port: int = 9901
    tls: TlsFiles | None = None
    timeout: float = 0.5
    with_request_body: int | None = None  # max bytes buffered for the Check; None: off
    xfcc: XfccMode | None = None
    path_normalization: PathNormalization = PathNormalization.BASE
    include_tls_session: bool = False  # send the TLS session (SNI) in the Check

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError("timeout must be positive")
        if self.with_request_body is not None and self.with_request_body <= 0:
            raise ValueError("with_request_body must be a positive number of bytes")
        if self.xfcc is not None and self.tls is None:
            raise ValueError("x-forwarded-client-cert forwarding needs an mTLS listener")
        if not 0 < self.admin_port < 65536:
            raise ValueError("admin port out of range")
