"""Who is calling: the peer's SPIFFE ID, from mTLS or (from trusted proxies) from XFCC.

Envoy reports the URI SAN of the peer certificate as ``attributes.source.principal``. When
the direct peer is a trusted proxy (an ingress gateway that terminated the client's mTLS),
the identity of the original client is in the element of ``x-forwarded-client-cert`` that
the proxy wrote: the only one (``SANITIZE_SET``, the default) or the last one
(``APPEND_FORWARD``, earlier elements being the client's own text).

Envoy writes ``URI``, ``DNS`` and ``By`` values as they are in the certificate, unquoted
(only ``Subject`` is quoted). A URI SAN holding ``,`` therefore reads as two elements, one
holding ``;URI=`` as two URIs, and one in quotes as a quoted value: none of those is
believed. Under ``SANITIZE_SET`` a header of more than one element is refused, which
defeats a forged trailing element; under ``APPEND_FORWARD`` that cannot be told from a
client's own earlier elements, so the proxy must accept only client certificates whose URI
SAN is a valid SPIFFE ID (docs/semantics.md).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from extauthz.model import RequestView

__all__ = [
    "XFCC_APPEND_FORWARD",
    "XFCC_MODES",
    "XFCC_SANITIZE_SET",
    "PeerIdentityError",
    "SpiffeId",
    "TrustedProxies",
    "parse_spiffe_id",
    "parse_xfcc",
    "peer_identity",
    "xfcc_client",
]

MAX_SPIFFE_ID_BYTES: Final = 2048
MAX_TRUST_DOMAIN_BYTES: Final = 255
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
XFCC_HEADER: Final = "x-forwarded-client-cert"
# How the trusted proxy fills XFCC (Envoy's forward_client_cert_details).
XFCC_SANITIZE_SET: Final = "SANITIZE_SET"  # its one element replaces whatever came in
XFCC_APPEND_FORWARD: Final = "APPEND_FORWARD"  # its element is appended to the client's
XFCC_MODES: Final = (XFCC_SANITIZE_SET, XFCC_APPEND_FORWARD)
# Values Envoy writes unquoted, from the certificates: a quoted one was not written by Envoy.
_UNQUOTED_KEYS: Final = frozenset({"by", "uri", "dns", "hash"})


class PeerIdentityError(ValueError):
    """The peer's identity is present but not a valid SPIFFE ID."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A validated SPIFFE ID (``spiffe://<trust domain><path>``)."""

    trust_domain: str
    path: str  # "" or "/seg/seg"

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"

    @property
    def namespace(self) -> str | None:
        """``ns`` of an Istio-style path ``/ns/<ns>/sa/<sa>``."""
        return self._after("ns")

    @property
    def service_account(self) -> str | None:
        return self._after("sa")

    def _after(self, key: str) -> str | None:
        parts = self.path.split("/")
        for i in range(1, len(parts) - 1):
            if parts[i] == key:
                return parts[i + 1]
        return None

    def __str__(self) -> str:
        return self.uri


def parse_spiffe_id(value: str) -> SpiffeId:
    """Parse ``value`` by the SPIFFE ID rules (SPIFFE-ID.md, section 2). Raises ValueError."""
    if len(value.encode("utf-8", "surrogatepass")) > MAX_SPIFFE_ID_BYTES:
        raise PeerIdentityError(f"longer than {MAX_SPIFFE_ID_BYTES} bytes")
    if not value.startswith("spiffe://"):
        raise PeerIdentityError("scheme must be spiffe://")
    rest = value[len("spiffe://") :]
    slash = rest.find("/")
    trust_domain, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    if not trust_domain:
        raise PeerIdentityError("empty trust domain")
    if len(trust_domain) > MAX_TRUST_DOMAIN_BYTES:
        raise PeerIdentityError(f"trust domain longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise PeerIdentityError(
            "trust domain may hold only lower-case letters, digits, '.', '-' and '_'"
        )
    if path:
        for segment in path[1:].split("/"):
            if not segment:
                raise PeerIdentityError("empty path segment (or trailing '/')")
            if segment in (".", ".."):
                raise PeerIdentityError("path segment '.' or '..'")
            if not _SEGMENT.fullmatch(segment):
                raise PeerIdentityError(
                    "path segments may hold only letters, digits, '.', '-', '_'"
                )
    return SpiffeId(trust_domain, path)


def parse_xfcc(header: str) -> list[list[tuple[str, str]]]:
    """Split an ``x-forwarded-client-cert`` value into elements of ``(key, value)`` pairs.

    Elements are separated by ``,`` and pairs by ``;``; a value may be double-quoted, with
    ``\\"`` escapes, and then may hold ``,`` ``;`` and ``=``. Keys are compared
    case-insensitively by callers. Raises ValueError on an unterminated quote or a pair
    without ``=``.
    """
    return [[(k, v) for k, v, _ in pairs] for pairs in _parse_xfcc(header)]


def _parse_xfcc(header: str) -> list[list[tuple[str, str, bool]]]:
    """``parse_xfcc`` with, for each pair, whether its value was quoted."""
    elements: list[list[tuple[str, str, bool]]] = []
    pairs: list[tuple[str, str, bool]] = []
    i, n = 0, len(header)
    while i < n:
        eq = header.find("=", i)
        if eq < 0:
            raise ValueError("XFCC pair without '='")
        key = header[i:eq].strip()
        if not key or any(c in key for c in ',;"'):
            raise ValueError("XFCC key is empty or malformed")
        i = eq + 1
        quoted = i < n and header[i] == '"'
        if quoted:
            i += 1
            buf: list[str] = []
            while True:
                if i >= n:
                    raise ValueError("XFCC value has an unterminated quote")
                c = header[i]
                if c == "\\" and i + 1 < n:
                    buf.append(header[i + 1])
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                buf.append(c)
                i += 1
            value = "".join(buf)
        else:
            j = i
            while j < n and header[j] not in ",;":
                j += 1
            value = header[i:j].strip()
            i = j
        pairs.append((key, value, quoted))
        if i < n and header[i] not in ",;":
            raise ValueError("XFCC value followed by garbage")
        if i >= n or header[i] == ",":
            elements.append(pairs)
            pairs = []
        i += 1
    if pairs:
        elements.append(pairs)
    return elements


class TrustedProxies:
    """Which direct peers may speak for the client through XFCC (by SPIFFE ID or address)."""

    def __init__(
        self,
        principals: Iterable[str] = (),
        cidrs: Iterable[str] = (),
        *,
        xfcc: str = XFCC_SANITIZE_SET,
    ) -> None:
        if xfcc not in XFCC_MODES:
            raise ValueError(f"XFCC mode must be one of {', '.join(XFCC_MODES)}, not {xfcc!r}")
        self._principals = frozenset(principals)
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self.xfcc = xfcc

    def __bool__(self) -> bool:
        return bool(self._principals or self._networks)

    def trusts(self, view: RequestView) -> bool:
        if view.source_principal and view.source_principal in self._principals:
            return True
        if self._networks and view.source_address:
            try:
                addr = ipaddress.ip_address(view.source_address)
            except ValueError:
                return False
            return any(addr in net for net in self._networks)
        return False


def peer_identity(view: RequestView, proxies: TrustedProxies) -> SpiffeId | None:
    """The calling workload's SPIFFE ID, or None without one. Raises PeerIdentityError.

    From a trusted proxy carrying XFCC, the URI of the element that proxy wrote is the
    client (see the module docstring). An element without a URI means the client had no
    SPIFFE identity.
    """
    if proxies and XFCC_HEADER in view.headers and proxies.trusts(view):
        return xfcc_client(view.headers[XFCC_HEADER], proxies.xfcc)
    if not view.source_principal:
        return None
    return parse_spiffe_id(view.source_principal)


# Headers remembered by their text, each at most this long: the memo holds at most
# 4096 x 4 KiB, whatever the clients send (a header may be up to 64 KiB).
XFCC_MEMO_ENTRIES: Final = 4096
XFCC_MEMO_MAX_BYTES: Final = 4096


def xfcc_client(header: str, mode: str = XFCC_SANITIZE_SET) -> SpiffeId | None:
    """The client's SPIFFE ID in the element the trusted proxy wrote; None without a URI.

    ``mode`` is how the proxy fills the header: ``SANITIZE_SET`` (exactly one element) or
    ``APPEND_FORWARD`` (its element is the last). Remembered by header text when short (a
    gateway sends the same few values again and again); an invalid header raises
    PeerIdentityError every time, as errors are not remembered.
    """
    if len(header) <= XFCC_MEMO_MAX_BYTES:
        return _remembered_xfcc_client(header, mode)
    return _xfcc_client(header, mode)


def _xfcc_client(header: str, mode: str) -> SpiffeId | None:
    try:
        elements = _parse_xfcc(header)
    except ValueError as exc:
        raise PeerIdentityError(f"malformed x-forwarded-client-cert: {exc}") from None
    if not elements:
        return None
    if mode == XFCC_SANITIZE_SET and len(elements) != 1:
        raise PeerIdentityError(
            f"x-forwarded-client-cert holds {len(elements)} elements; a SANITIZE_SET proxy "
            "writes one (a ',' in a certificate's URI SAN makes more)"
        )
    trusted = elements[-1]
    for key, _value, quoted in trusted:
        if quoted and key.lower() in _UNQUOTED_KEYS:
            raise PeerIdentityError(
                f"x-forwarded-client-cert {key} is quoted; Envoy writes it unquoted"
            )
    uris = [v for k, v, _ in trusted if k.lower() == "uri" and v]
    if not uris:
        return None
    if len(uris) > 1:
        raise PeerIdentityError(
            f"x-forwarded-client-cert element holds {len(uris)} URIs; a SPIFFE certificate has one"
        )
    return parse_spiffe_id(uris[0])


_remembered_xfcc_client = functools.lru_cache(maxsize=XFCC_MEMO_ENTRIES)(_xfcc_client)
