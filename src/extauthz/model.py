"""The small immutable values that flow through a Check, from decode to response.

``RequestView`` is what the CheckRequest says, decoded once. ``Subject`` is what the policy
engine reads: the request plus the verified identities. Neither holds protobuf objects, so
every stage after ``decode`` is plain Python and can be tested without gRPC.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "IPAddress",
    "RequestView",
    "Subject",
    "described",
    "fields_hash",
    "same_fields",
    "utc_now",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NONE: Final[Mapping[str, str]] = MappingProxyType({})

# Plain classes with slots, built positionally on the hot path: in the compiled build they are
# native classes (built and read in C, a tenth of a named tuple's cost on a path that builds
# one of each per Check and reads them in every matcher); in pure Python they cost what a
# named tuple costs. Their fields are Final: nothing assigns them after __init__ (the
# compiled build refuses it at run time too).

_REQUEST_FIELDS: Final = (
    "method",
    "host",
    "path",
    "scheme",
    "protocol",
    "request_id",
    "headers",
    "source_address",
    "source_port",
    "source_principal",
    "destination_address",
    "destination_port",
    "destination_principal",
    "sni",
    "context_extensions",
)


class RequestView:
    """The parts of an Envoy CheckRequest that extauthz uses. Absent values are empty."""

    __slots__ = _REQUEST_FIELDS

    def __init__(
        self,
        method: str = "",
        host: str = "",  # :authority as sent
        path: str = "",  # :path as sent, query included
        scheme: str = "",
        protocol: str = "",
        request_id: str = "",
        headers: Mapping[str, str] = _NONE,  # lower-case names, "," joined
        source_address: str = "",
        source_port: int = 0,
        source_principal: str = "",  # peer certificate URI SAN, as Envoy reports it
        destination_address: str = "",
        destination_port: int = 0,
        destination_principal: str = "",
        sni: str = "",
        context_extensions: Mapping[str, str] = _NONE,
    ) -> None:
        self.method: Final = method
        self.host: Final = host
        self.path: Final = path
        self.scheme: Final = scheme
        self.protocol: Final = protocol
        self.request_id: Final = request_id
        self.headers: Final = headers
        self.source_address: Final = source_address
        self.source_port: Final = source_port
        self.source_principal: Final = source_principal
        self.destination_address: Final = destination_address
        self.destination_port: Final = destination_port
        self.destination_principal: Final = destination_principal
        self.sni: Final = sni
        self.context_extensions: Final = context_extensions

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestView):
            return NotImplemented
        return same_fields(self, other, _REQUEST_FIELDS)

    __hash__ = None  # type: ignore[assignment]  # holds dicts, as the named tuple did

    def __repr__(self) -> str:
        return described(self, _REQUEST_FIELDS)


_SUBJECT_FIELDS: Final = (
    "principal",
    "source_ip",
    "remote_ip",
    "claims",
    "host",
    "method",
    "path",
    "headers",
    "destination_ip",
    "destination_port",
    "sni",
    "time",
    "query",
    "destination_principal",
)


class Subject:
    """Everything the policy engine reads about one request. Built once per Check.

    ``principal`` is the peer SPIFFE ID as a full URI (``spiffe://td/ns/a/sa/b``) or None
    without an mTLS identity. ``claims`` is the verified JWT payload or None without a
    verified token. ``path`` is normalized and has no query or fragment.
    """

    __slots__ = _SUBJECT_FIELDS

    def __init__(
        self,
        principal: str | None = None,
        source_ip: IPAddress | None = None,  # direct peer (ipBlocks, source.ip)
        remote_ip: IPAddress | None = None,  # original client (remoteIpBlocks, remote.ip)
        claims: Mapping[str, Any] | None = None,
        host: str = "",
        method: str = "",
        path: str = "",
        headers: Mapping[str, str] = _NONE,
        destination_ip: IPAddress | None = None,
        destination_port: int | None = None,
        sni: str | None = None,
        # for CEL conditions and time windows (extauthz.io/cel, extauthz.io/time-window):
        # the instant of the Check, from the pipeline's clock
        time: datetime.datetime | None = None,
        query: str = "",  # the query string of :path, without "?"
        destination_principal: str | None = None,
    ) -> None:
        self.principal: Final = principal
        self.source_ip: Final = source_ip
        self.remote_ip: Final = remote_ip
        self.claims: Final = claims
        self.host: Final = host
        self.method: Final = method
        self.path: Final = path
        self.headers: Final = headers
        self.destination_ip: Final = destination_ip
        self.destination_port: Final = destination_port
        self.sni: Final = sni
        self.time: Final = time
        self.query: Final = query
        self.destination_principal: Final = destination_principal

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Subject):
            return NotImplemented
        return same_fields(self, other, _SUBJECT_FIELDS)

    __hash__ = None  # type: ignore[assignment]  # holds dicts, as the named tuple did

    def __repr__(self) -> str:
        return described(self, _SUBJECT_FIELDS)


def same_fields(a: object, b: object, names: tuple[str, ...]) -> bool:
    """Whether ``a`` and ``b`` hold equal values in each attribute ``names`` lists."""
    return all(getattr(a, name) == getattr(b, name) for name in names)


def fields_hash(value: object, names: tuple[str, ...]) -> int:
    """The hash of the values of the attributes ``names`` lists (equal for ``same_fields``)."""
    return hash(tuple([getattr(value, name) for name in names]))


def described(value: object, names: tuple[str, ...]) -> str:
    """``Type(name=value, ...)`` for the attributes ``names`` lists."""
    fields = ", ".join(f"{name}={getattr(value, name)!r}" for name in names)
    return f"{type(value).__name__}({fields})"


def utc_now() -> datetime.datetime:
    """The instant a Check is decided at, by default (``CheckOptions.clock``): now, in UTC.
    Here, in a compiled module, so that reading it on every Check costs no Python-level call."""
    return datetime.datetime.now(datetime.UTC)
