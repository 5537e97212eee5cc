"""Tenants: what a Tenant document says, and which tenant a request belongs to.

A request selects a tenant by ``spec.match``: its host (exact, or ``*.`` wildcard), the
namespace of the destination workload's SPIFFE ID, and request headers. Within one tenant's
match every given criterion must hold.

What Envoy authenticated outranks what the client wrote. The destination namespace comes
from Envoy's own mTLS identity; the host and headers come from the client. A namespace named
in a tenant's ``destinationNamespaces`` (or implied, see below) belongs to that one tenant:
its requests are decided by that tenant or denied (``tenant_mismatch``, when the tenant's own
``hosts``/``headers`` do not match), never by another tenant. Only a request whose destination
namespace no tenant claims (an ingress gateway, a namespace without policies) is routed by
what the client sent: exact host, wildcard host (longest first), headers only, and last the
catch-all tenant (``match: {}``). Two tenants that claim the same namespace, or the same host
with the same headers, are a conflict and the newer one is refused.

Hosts are compared in one spelling (``request_host``): lower case, without the port and one
trailing dot; an ``:authority`` that is not then a DNS name or an IP literal matches no host
and is routed by its destination namespace only.

A namespace that has AuthorizationPolicies but no Tenant document is an *implicit* tenant
that matches its destination namespace, as an Istio policy applies to its own namespace.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

from extauthz.authn import JwtRule, parse_jwt_rules
from extauthz.documents import Document, Path
from extauthz.policy.timewindow import TimeWindowError, parse_zone

__all__ = [
    "Route",
    "TenantConflict",
    "TenantMatch",
    "TenantRouter",
    "TenantSpec",
    "check_document_names",
    "check_tenant_name",
    "group_by_tenant",
    "implicit_tenant",
    "normalize_host_pattern",
    "parse_tenant",
    "request_host",
    "tenant_of",
]

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# A host pattern once normalized: a DNS name (labels of [a-z0-9-]), optionally '*.'-prefixed.
_HOST = re.compile(r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# What a request's host may be once normalized: non-empty labels, or a bracketed IPv6 literal.
_REQUEST_HOST = re.compile(r"[a-z0-9_]([-a-z0-9_]*[a-z0-9_])?(\.[a-z0-9_]([-a-z0-9_]*[a-z0-9_])?)*")
_IPV6_LITERAL = re.compile(r"\[[0-9a-f:.]+\]")
SPEC_FIELDS: Final = frozenset({"match", "trustDomains", "mtls", "jwtRules", "timeZone"})
MATCH_FIELDS: Final = frozenset({"hosts", "destinationNamespaces", "headers"})
MTLS_MODES: Final = frozenset({"STRICT", "PERMISSIVE"})


def check_tenant_name(name: str) -> bool:
    """Tenant names are DNS labels (they are Kubernetes namespaces and Redis key parts)."""
    return _NAME.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class TenantMatch:
    """``spec.match``: every criterion given must hold; none given = catch-all."""

    hosts: tuple[str, ...] = ()
    destination_namespaces: frozenset[str] = frozenset()
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def catch_all(self) -> bool:
        return not (self.hosts or self.destination_namespaces or self.headers)

    def matches(self, host: str | None, dest_ns: str | None, headers: Mapping[str, str]) -> bool:
        """``host`` as ``request_host`` gives it (None: not a valid host, matches no host)."""
        # Loops, not any()/all() over generators: this runs on every Check.
        if self.hosts:
            if host is None:
                return False
            for pattern in self.hosts:
                if _host_matches(pattern, host):
                    break
            else:
                return False
        if self.destination_namespaces and dest_ns not in self.destination_namespaces:
            return False
        for name, value in self.headers:  # noqa: SIM110 - no generator frame per Check
            if headers.get(name) != value:
                return False
        return True


def _host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def request_host(authority: str) -> str | None:
    """``:authority`` as tenant matching sees it: lower case, without its port and without one
    trailing dot (``ACME.example.com.:443`` is ``acme.example.com``). ``""`` for no host; None
    when the rest is not a DNS name or a bracketed IPv6 literal (``a.example.com..``, a bare
    ``::1``, a bad port): such a host matches no tenant's hosts."""
    if not authority:
        return ""
    host = authority.lower()
    if host.startswith("["):  # [v6] or [v6]:port
        end = host.find("]")
        literal, rest = host[: end + 1], host[end + 1 :]
        if end < 0 or not _IPV6_LITERAL.fullmatch(literal) or not _is_port_suffix(rest):
            return None
        return literal
    name, colon, port = host.rpartition(":")
    if colon:
        if not _is_port_suffix(colon + port):
            return None
        host = name
    if host.endswith("."):
        host = host[:-1]
    return host if _REQUEST_HOST.fullmatch(host) else None


def _is_port_suffix(text: str) -> bool:
    """``""``, or ``":"`` followed by ASCII digits (or by nothing)."""
    if not text:
        return True
    port = text[1:]
    return text[0] == ":" and (not port or (port.isascii() and port.isdigit()))


def normalize_host_pattern(pattern: str) -> str | None:
    """A ``spec.match.hosts`` entry in the spelling ``request_host`` gives requests (the port
    and one trailing dot dropped, lower case), or None when it is not a DNS name, optionally
    ``*.``-prefixed, or a bracketed IPv6 literal."""
    text = pattern.lower()
    wildcard = text.startswith("*.")
    host = request_host(text[2:] if wildcard else text)
    if not host:
        return None
    if _IPV6_LITERAL.fullmatch(host):
        return None if wildcard else host
    normalized = f"*.{host}" if wildcard else host
    return normalized if _HOST.fullmatch(normalized) else None


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """A tenant's settings, from its Tenant document (or implied by its policies)."""

    name: str
    match: TenantMatch
    trust_domains: tuple[str, ...] = ()
    mtls_strict: bool = False
    jwt_rules: tuple[JwtRule, ...] = ()
    implicit: bool = False
    source: str = ""
    time_zone: str = "UTC"  # IANA name: time windows and CEL time functions use it
    warnings: tuple[str, ...] = field(default=(), compare=False)


def implicit_tenant(name: str) -> TenantSpec:
    """The tenant of a namespace that has policies but no Tenant document."""
    return TenantSpec(
        name=name,
        match=TenantMatch(destination_namespaces=frozenset({name})),
        implicit=True,
    )


def parse_tenant(doc: Document) -> TenantSpec:
    """Validate a Tenant document. Raises DocumentError naming file, line and field."""
    if not check_tenant_name(doc.name):
        raise doc.error("a tenant name must be a DNS label ([a-z0-9-], at most 63)", _META_NAME)
    if doc.namespace and doc.namespace != doc.name:
        raise doc.error("a Tenant's namespace, if given, must equal its name", _META_NS)
    spec = doc.spec
    _only(doc, spec, SPEC_FIELDS, ("spec",))
    match = _parse_match(doc, spec.get("match", {}))
    trust_domains = tuple(_strings(doc, spec.get("trustDomains", []), ("spec", "trustDomains")))
    mtls = spec.get("mtls", {})
    if not isinstance(mtls, Mapping):
        raise doc.error("must be a mapping like {mode: STRICT}", ("spec", "mtls"))
    _only(doc, mtls, frozenset({"mode"}), ("spec", "mtls"))
    mode = mtls.get("mode", "PERMISSIVE")
    if mode not in MTLS_MODES:
        raise doc.error(f"must be one of {sorted(MTLS_MODES)}", ("spec", "mtls", "mode"))
    rules = parse_jwt_rules(doc, ("spec", "jwtRules")) if "jwtRules" in spec else ()
    time_zone = spec.get("timeZone", "UTC")
    try:
        parse_zone(time_zone if isinstance(time_zone, str) else "")
    except TimeWindowError as exc:
        raise doc.error(str(exc), ("spec", "timeZone")) from None
    return TenantSpec(
        name=doc.name,
        match=match,
        trust_domains=trust_domains,
        mtls_strict=mode == "STRICT",
        jwt_rules=rules,
        source=str(doc.location()),
        time_zone=time_zone,
    )


_META_NAME: Final[Path] = ("metadata", "name")
_META_NS: Final[Path] = ("metadata", "namespace")


def _only(doc: Document, value: Mapping[str, Any], allowed: frozenset[str], path: Path) -> None:
    for key in value:
        if key not in allowed:
            raise doc.error(f"unknown field; expected one of {sorted(allowed)}", (*path, key))


def _strings(doc: Document, value: Any, path: Path) -> list[str]:
    if not isinstance(value, list):
        raise doc.error("must be a list of strings", path)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise doc.error("must be a non-empty string", (*path, i))
    return value


def _parse_match(doc: Document, match: Any) -> TenantMatch:
    path: Path = ("spec", "match")
    if not isinstance(match, Mapping):
        raise doc.error("must be a mapping ({} matches every request)", path)
    _only(doc, match, MATCH_FIELDS, path)
    hosts: list[str] = []
    for i, raw in enumerate(_strings(doc, match.get("hosts", []), (*path, "hosts"))):
        host = normalize_host_pattern(raw)
        if host is None:
            raise doc.error(
                "a host is a DNS name, optionally '*.'-prefixed, or a [v6] literal; a port and "
                "one trailing dot are ignored (use match: {} to catch all)",
                (*path, "hosts", i),
            )
        if host not in hosts:
            hosts.append(host)
    namespaces = _strings(
        doc, match.get("destinationNamespaces", []), (*path, "destinationNamespaces")
    )
    headers = match.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise doc.error("must map header names to exact values", (*path, "headers"))
    return TenantMatch(
        hosts=tuple(hosts),
        destination_namespaces=frozenset(namespaces),
        headers=tuple((k.lower(), v) for k, v in headers.items()),
    )


class TenantConflict(ValueError):
    """Two tenants claim the same requests."""


Route = tuple[TenantSpec | None, bool]
"""Where a request goes, as (spec, matched): ``spec`` None = no tenant; ``matched`` False =
``spec`` owns the request's destination namespace but its own hosts/headers do not match
(deny). A plain tuple: the compiled build passes it without building an object."""


class TenantRouter:
    """Picks the tenant of a request; lookups are dict hits.

    Built from a set of specs (``TenantRouter(specs)`` raises TenantConflict when two claim
    the same requests), then changed one tenant at a time: ``put`` (add or change a tenant's
    routes) and ``discard`` cost O(that tenant's routes), and leave the router exactly as a
    new one built from the same specs would be. ``put`` refuses a conflicting spec before
    changing anything. Lists whose order decides (one host claimed with different headers,
    headers-only tenants) are kept in name order, as a build in name order makes them.
    """

    def __init__(self, specs: Iterable[TenantSpec] = ()) -> None:
        self._specs: dict[str, TenantSpec] = {}
        self._claims: dict[tuple[Any, ...], str] = {}  # what a spec claims -> its tenant
        self._namespace: dict[str, TenantSpec] = {}
        self._exact: dict[str, list[TenantSpec]] = {}
        # "*.example.com" -> under ".example.com": a host's suffixes at each dot, longest first
        self._wildcard: dict[str, list[TenantSpec]] = {}
        self._headers_only: list[TenantSpec] = []
        self._catch_all: TenantSpec | None = None
        for spec in sorted(specs, key=lambda s: s.name):
            self.put(spec)

    def __len__(self) -> int:
        return len(self._specs)

    def get(self, name: str) -> TenantSpec | None:
        """The spec ``name`` is routed by, if any."""
        return self._specs.get(name)

    def conflict(self, spec: TenantSpec) -> TenantConflict | None:
        """Why ``spec`` (replacing the routes of its tenant, if any) cannot be routed along
        the others, or None."""
        for key in _claims_of(spec):
            other = self._claims.get(key)
            if other is not None and other != spec.name:
                return TenantConflict(
                    f"tenants {min(other, spec.name)!r} and {max(other, spec.name)!r} "
                    f"both match {key[0]}={key[1]!r}"
                )
        return None

    def put(self, spec: TenantSpec) -> None:
        """Route ``spec.name`` by ``spec`` (in place of its routes so far). Raises
        TenantConflict, changing nothing, when another tenant claims the same requests."""
        conflict = self.conflict(spec)
        if conflict is not None:
            raise conflict
        self.discard(spec.name)
        self._specs[spec.name] = spec
        for key in _claims_of(spec):
            self._claims[key] = spec.name
        m = spec.match
        if m.destination_namespaces:
            for ns in m.destination_namespaces:
                self._namespace[ns] = spec
        elif m.catch_all:
            self._catch_all = spec
        elif m.hosts:
            for host in m.hosts:
                if host.startswith("*."):
                    _insort(self._wildcard.setdefault(host[1:], []), spec)
                else:
                    _insort(self._exact.setdefault(host, []), spec)
        else:
            _insort(self._headers_only, spec)

    def discard(self, name: str) -> None:
        """Stop routing to ``name`` (nothing if it has no routes)."""
        spec = self._specs.pop(name, None)
        if spec is None:
            return
        for key in _claims_of(spec):
            if self._claims.get(key) == name:
                del self._claims[key]
        m = spec.match
        if m.destination_namespaces:
            for ns in m.destination_namespaces:
                if self._namespace.get(ns) is spec:
                    del self._namespace[ns]
        elif m.catch_all:
            if self._catch_all is spec:
                self._catch_all = None
        elif m.hosts:
            for host in m.hosts:
                if host.startswith("*."):
                    _remove(self._wildcard, host[1:], spec)
                else:
                    _remove(self._exact, host, spec)
        else:
            self._headers_only.remove(spec)

    def route(self, authority: str, dest_ns: str | None, headers: Mapping[str, str]) -> Route:
        if dest_ns is not None:
            owner = self._namespace.get(dest_ns)
            if owner is not None:
                host = _request_host(authority) if owner.match.hosts else ""
                return owner, owner.match.matches(host, dest_ns, headers)
        host = _request_host(authority)
        if host is None:
            return None, False
        # Tenants that own no namespace, most specific first: exact host (nearly every
        # Check ends here), wildcard host, headers only, catch-all.
        exact = self._exact.get(host)
        if exact is not None:
            for spec in exact:
                if spec.match.matches(host, dest_ns, headers):
                    return spec, True
        if self._wildcard:
            # Each suffix of the host that starts at a dot and leaves a label before it,
            # longest first: the wildcards that match, most specific first.
            dot = host.find(".", 1)
            while dot > 0:
                for spec in self._wildcard.get(host[dot:], ()):
                    if spec.match.matches(host, dest_ns, headers):
                        return spec, True
                dot = host.find(".", dot + 1)
        for spec in self._headers_only:
            if spec.match.matches(host, dest_ns, headers):
                return spec, True
        last = self._catch_all
        if last is not None and last.match.matches(host, dest_ns, headers):
            return last, True
        return None, False


def _claims_of(spec: TenantSpec) -> list[tuple[Any, ...]]:
    """What a spec claims: two tenants claiming one key are a conflict."""
    m = spec.match
    if m.destination_namespaces:
        # A namespace has one owner, whatever its hosts and headers: what the client sends
        # must not choose between two tenants of one workload.
        return [("destinationNamespace", ns) for ns in sorted(m.destination_namespaces)]
    if m.catch_all:
        return [("match", "{}")]
    if m.hosts:
        return [("host", host, m.headers) for host in m.hosts]
    return [("headers", m.headers)]


def _insort(specs: list[TenantSpec], spec: TenantSpec) -> None:
    bisect.insort(specs, spec, key=_name)


def _remove(table: dict[str, list[TenantSpec]], key: str, spec: TenantSpec) -> None:
    specs = table.get(key)
    if specs is not None and spec in specs:
        specs.remove(spec)
        if not specs:
            del table[key]


def _name(spec: TenantSpec) -> str:
    return spec.name


# Normalized hosts, by their text: a few hosts make nearly every request. Bounded, so varied
# input only costs misses.
_request_host: Final = lru_cache(maxsize=4096)(request_host)


def tenant_of(doc: Document) -> str:
    """The tenant a document belongs to: a Tenant's name, a policy's namespace."""
    return doc.name if doc.kind == "Tenant" else doc.namespace


def group_by_tenant(docs: Sequence[Document]) -> dict[str, list[Document]]:
    out: dict[str, list[Document]] = {}
    for doc in docs:
        out.setdefault(tenant_of(doc), []).append(doc)
    return out


def check_document_names(docs: Sequence[Document]) -> None:
    """Names are unique per kind within a tenant. Raises DocumentError."""
    seen: dict[tuple[str, str], Document] = {}
    for doc in docs:
        first = seen.setdefault((doc.kind, doc.name), doc)
        if first is not doc:
            raise doc.error(f"{doc.ref} is defined twice (first at {first.location()})", _META_NAME)
