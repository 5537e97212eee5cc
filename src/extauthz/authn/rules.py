"""``jwtRules`` of a Tenant: Istio RequestAuthentication JWTRule fields, validated once.

Same field names and meanings as Istio's JWTRule. Differences, all stricter:
- ``jwksUri`` or ``jwks`` is required (no OIDC discovery from the issuer), not both;
- ``jwksUri`` must be https; http is allowed only for loopback hosts (127.0.0.1, localhost,
  ::1), which local tests and sidecar-served key sets use;
- ``issuer`` must be unique within a tenant: the token's ``iss`` picks the rule.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple
from urllib.parse import urlsplit

from extauthz.authn.keys import JwksError, Key, parse_jwks
from extauthz.documents import Document, Path

__all__ = ["ClaimToHeader", "JwtRule", "TokenLocation", "parse_jwt_rules"]

DEFAULT_TIMEOUT: Final = 5.0
MAX_TIMEOUT: Final = 60.0
_FIELDS: Final = frozenset(
    {
        "issuer",
        "audiences",
        "jwksUri",
        "jwks",
        "fromHeaders",
        "fromParams",
        "fromCookies",
        "forwardOriginalToken",
        "outputPayloadToHeader",
        "outputClaimToHeaders",
        "spaceDelimitedClaims",
        "timeout",
    }
)
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_RESERVED_HEADERS: Final = frozenset({"host", "authority", "content-length", "transfer-encoding"})
# Headers a token's claims must never write: the identity headers extauthz sets itself (the
# pipeline's OWN_HEADERS, all under this prefix) and the peer identity Envoy forwards.
_IDENTITY_PREFIX: Final = "x-extauthz-"
_IDENTITY_HEADERS: Final = frozenset({"x-forwarded-client-cert"})
_DURATION: Final = re.compile(r"(?:(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns))+")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNITS: Final[Mapping[str, float]] = {
    "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9,
}  # fmt: skip
_LOOPBACK_NAMES: Final = frozenset({"localhost"})


class TokenLocation(NamedTuple):
    """Where a token may be: a header (with a prefix to strip), a query parameter, a cookie.
    (A NamedTuple: hashed on every Check with a token, and a tuple's hash is no Python-level
    call, where a frozen dataclass's is.)"""

    kind: Literal["header", "param", "cookie"]
    name: str  # header names lower-case
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class ClaimToHeader:
    header: str
    claim: str


DEFAULT_LOCATIONS: Final = (
    TokenLocation("header", "authorization", "Bearer "),
    TokenLocation("param", "access_token"),
)


@dataclass(frozen=True, slots=True)
class JwtRule:
    """One validated jwtRule. Exactly one of ``jwks_uri`` and ``jwks`` is set."""

    issuer: str
    audiences: frozenset[str]
    jwks_uri: str | None
    jwks: Mapping[str, Key] | None
    locations: tuple[TokenLocation, ...]
    forward_original_token: bool
    output_payload_to_header: str | None
    output_claim_to_headers: tuple[ClaimToHeader, ...]
    space_delimited_claims: frozenset[str]
    timeout: float


def parse_jwt_rules(doc: Document, path: Path) -> tuple[JwtRule, ...]:
    """Validate the jwtRules list at ``path`` in ``doc``. Absent: no rules.

    Raises DocumentError naming the field at fault.
    """
    value: Any = doc.body
    for part in path:
        if isinstance(part, int):
            value = value[part] if isinstance(value, list) and 0 <= part < len(value) else None
        else:
            value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ()
    if not isinstance(value, list):
        raise doc.error("jwtRules must be a list", path)
    rules: list[JwtRule] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(value):
        rule = _Parser(doc, (*path, index)).rule(item)
        if rule.issuer in seen:
            raise doc.error(
                f"issuer {rule.issuer!r} is already used by jwtRules[{seen[rule.issuer]}]",
                (*path, index, "issuer"),
            )
        seen[rule.issuer] = index
        rules.append(rule)
    return tuple(rules)


class _Parser:
    def __init__(self, doc: Document, path: Path) -> None:
        self._doc = doc
        self._path = path

    def _fail(self, message: str, *sub: str | int) -> Exception:
        return self._doc.error(message, (*self._path, *sub))

    def rule(self, item: Any) -> JwtRule:
        if not isinstance(item, Mapping):
            raise self._fail("a jwtRule must be a mapping")
        for name in item:
            if name not in _FIELDS:
                raise self._fail(f"unknown field {name!r}; known: {sorted(_FIELDS)}", name)
        issuer = item.get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise self._fail("issuer is required and must be a non-empty string", "issuer")
        jwks_uri, jwks = self._keys(item)
        locations = self._locations(item)
        forward = item.get("forwardOriginalToken", False)
        if not isinstance(forward, bool):
            raise self._fail("must be true or false", "forwardOriginalToken")
        token_headers = frozenset(loc.name for loc in locations if loc.kind == "header")
        payload_header = item.get("outputPayloadToHeader")
        if payload_header is not None:
            payload_header = self._output_header(
                payload_header, token_headers, "outputPayloadToHeader"
            )
        return JwtRule(
            issuer=issuer,
            audiences=frozenset(self._strings(item, "audiences")),
            jwks_uri=jwks_uri,
            jwks=jwks,
            locations=locations,
            forward_original_token=forward,
            output_payload_to_header=payload_header,
            output_claim_to_headers=self._claim_headers(item, token_headers),
            space_delimited_claims=frozenset(self._strings(item, "spaceDelimitedClaims")),
            timeout=self._timeout(item.get("timeout")),
        )

    def _keys(self, item: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Key] | None]:
        uri = item.get("jwksUri")
        inline = item.get("jwks")
        if uri is not None and inline is not None:
            raise self._fail("set jwksUri or jwks, not both", "jwks")
        if uri is None and inline is None:
            raise self._fail(
                "jwksUri or jwks is required (OIDC discovery from the issuer is not supported)",
                "jwksUri",
            )
        if inline is not None:
            if not isinstance(inline, str):
                raise self._fail("jwks must be a string holding the JWKS JSON", "jwks")
            try:
                return None, parse_jwks(inline)
            except JwksError as exc:
                raise self._fail(f"invalid inline JWKS: {exc}", "jwks") from None
        if not isinstance(uri, str):
            raise self._fail("jwksUri must be a string", "jwksUri")
        problem = _uri_problem(uri)
        if problem:
            raise self._fail(problem, "jwksUri")
        return uri, None

    def _locations(self, item: Mapping[str, Any]) -> tuple[TokenLocation, ...]:
        found: list[TokenLocation] = []
        headers = item.get("fromHeaders")
        if headers is not None:
            if not isinstance(headers, list):
                raise self._fail("fromHeaders must be a list of {name, prefix}", "fromHeaders")
            for i, entry in enumerate(headers):
                if not isinstance(entry, Mapping):
                    raise self._fail("must be a mapping {name, prefix}", "fromHeaders", i)
                for key in entry:
                    if key not in ("name", "prefix"):
                        raise self._fail(f"unknown field {key!r}", "fromHeaders", i, key)
                name = self._header_name(entry.get("name"), "fromHeaders", i, "name")
                prefix = entry.get("prefix", "")
                if not isinstance(prefix, str):
                    raise self._fail("prefix must be a string", "fromHeaders", i, "prefix")
                found.append(TokenLocation("header", name, prefix))
        for field, kind in (("fromParams", "param"), ("fromCookies", "cookie")):
            for name in self._strings(item, field):
                found.append(TokenLocation(kind, name))  # type: ignore[arg-type]
        if not found:
            return DEFAULT_LOCATIONS
        return tuple(dict.fromkeys(found))

    def _claim_headers(
        self, item: Mapping[str, Any], token_headers: frozenset[str]
    ) -> tuple[ClaimToHeader, ...]:
        entries = item.get("outputClaimToHeaders")
        if entries is None:
            return ()
        if not isinstance(entries, list):
            raise self._fail("must be a list of {header, claim}", "outputClaimToHeaders")
        out: list[ClaimToHeader] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                raise self._fail("must be a mapping {header, claim}", "outputClaimToHeaders", i)
            for key in entry:
                if key not in ("header", "claim"):
                    raise self._fail(f"unknown field {key!r}", "outputClaimToHeaders", i, key)
            header = self._output_header(
                entry.get("header"), token_headers, "outputClaimToHeaders", i, "header"
            )
            claim = entry.get("claim")
            if not isinstance(claim, str) or not claim:
                raise self._fail("claim must be a non-empty string", "outputClaimToHeaders", i,
                                 "claim")  # fmt: skip
            out.append(ClaimToHeader(header, claim))
        return tuple(out)

    def _header_name(self, value: Any, *sub: str | int) -> str:
        if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value.lower()):
            raise self._fail("must be a valid HTTP header name", *sub)
        name = value.lower()
        if name in _RESERVED_HEADERS:
            raise self._fail(f"header {name!r} cannot be used here", *sub)
        return name

    def _output_header(self, value: Any, token_headers: frozenset[str], *sub: str | int) -> str:
        """A header a claim may be written to: not an identity header, not a token's source."""
        name = self._header_name(value, *sub)
        if name.startswith(_IDENTITY_PREFIX) or name in _IDENTITY_HEADERS:
            raise self._fail(
                f"header {name!r} carries the identity extauthz and Envoy establish; "
                "a token claim cannot overwrite it",
                *sub,
            )
        if name in token_headers:
            raise self._fail(f"header {name!r} is where this rule reads its token from", *sub)
        return name

    def _strings(self, item: Mapping[str, Any], field: str) -> list[str]:
        value = item.get(field)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self._fail("must be a list of non-empty strings", field)
        return list(value)

    def _timeout(self, value: Any) -> float:
        if value is None:
            return DEFAULT_TIMEOUT
        if not isinstance(value, str) or not _DURATION.fullmatch(value):
            raise self._fail('must be a duration such as "5s" or "500ms"', "timeout")
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(value))
        if not 0 < seconds <= MAX_TIMEOUT:
            raise self._fail(f"must be more than 0 and at most {MAX_TIMEOUT:g}s", "timeout")
        return seconds


def _uri_problem(uri: str) -> str:
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "jwksUri is not a valid URL"
    if not host:
        return "jwksUri needs a host"
    if parts.scheme == "https":
        return ""
    if parts.scheme == "http" and _is_loopback(host):
        return ""
    return "jwksUri must be https (http only for 127.0.0.1, localhost or ::1)"


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host) in (
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("::1"),
        )
    except ValueError:
        return False
