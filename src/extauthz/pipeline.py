"""The phases of one Check, named in one method: identity -> tenant -> authn -> engine.

``CheckPipeline`` is a callable built once from the settings; calling it with a snapshot and
a decoded request returns one ``Outcome``. It reads only memory: the snapshot, the JWT cache
and the JWKS keys already fetched. It never raises for bad input; a bug inside it is caught
by the servicer and becomes an ``internal`` deny.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Final

from extauthz.authn import AuthnResult
from extauthz.catalog import CompiledTenant
from extauthz.errors import Reason
from extauthz.identity import (
    XFCC_HEADER,
    PeerIdentityError,
    SpiffeId,
    parse_spiffe_id,
    peer_identity,
)
from extauthz.model import IPAddress, RequestView, Subject
from extauthz.options import CheckOptions
from extauthz.outcome import Outcome, deny
from extauthz.pathnorm import normalize_path
from extauthz.policy import PolicyResult, evaluate
from extauthz.ratelimit.limiter import Limiter, new_ctx
from extauthz.ratelimit.schema import RateLimits
from extauthz.registry import Snapshot

__all__ = [
    "HEADER_PRINCIPAL",
    "HEADER_REQUEST_PRINCIPAL",
    "HEADER_TENANT",
    "CheckPipeline",
    "route",
]

HEADER_TENANT: Final = "x-extauthz-tenant"
HEADER_PRINCIPAL: Final = "x-extauthz-principal"
HEADER_REQUEST_PRINCIPAL: Final = "x-extauthz-request-principal"
# Headers we set for the upstream; a client's own copies never reach it.
OWN_HEADERS: Final = (HEADER_TENANT, HEADER_PRINCIPAL, HEADER_REQUEST_PRINCIPAL)
# Parsed addresses and SPIFFE IDs, by their text: a few proxies and workloads send nearly every
# request, and the parsed values are immutable. Bounded in entries and in bytes (only texts of
# at most _MEMO_MAX_CHARS are memoized, longer ones are parsed each time), so varied input
# only costs misses: at most 4096 x 256 characters per memo.
_PARSED_CACHE: Final = 4096
_MEMO_MAX_CHARS: Final = 256
_MAX_IP_CHARS: Final = 64  # the longest IPv6 text with a zone id is shorter
_Headers = tuple[tuple[tuple[str, str], ...], tuple[str, ...]]


class CheckPipeline:
    """decode (done by the caller) -> identity -> tenant -> authn -> engine -> Outcome."""

    def __init__(
        self, options: CheckOptions = CheckOptions(), *, limiter: Limiter | None = None
    ) -> None:
        self.limiter = limiter if limiter is not None else Limiter()
        self._proxies = options.trusted_proxies
        self._hops = options.xff_num_trusted_hops
        self._paths = options.path_normalization
        self._clock = options.clock

    def __call__(self, snapshot: Snapshot, view: RequestView) -> Outcome:
        return self.trace(snapshot, view)[0]

    def trace(
        self, snapshot: Snapshot, view: RequestView
    ) -> tuple[Outcome, CompiledTenant | None, Subject | None]:
        """The outcome, with the tenant and the engine's input when it got that far."""
        # identity: the calling workload
        try:
            principal = self._principal(view)
        except PeerIdentityError as exc:
            return deny(Reason.PEER_INVALID, f"peer identity: {exc}"), None, None
        # tenant: whose rules apply
        tenant, refusal, detail = route(snapshot, view, _namespace_of(view.destination_principal))
        if tenant is None or refusal is not None:
            name = "" if tenant is None else tenant.name
            reason = refusal or Reason.TENANT_UNKNOWN
            return deny(reason, detail, tenant=name, principal=principal), None, None
        if not principal and tenant.spec.mtls_strict:
            outcome = deny(
                Reason.MTLS_REQUIRED, "STRICT mTLS and no peer identity", tenant=tenant.name
            )
            return outcome, tenant, None
        # authentication: the end user
        authn = tenant.authenticator.authenticate(view)
        if authn.error is not None:
            outcome = deny(
                authn.error.reason,
                authn.error.detail,
                status=401,
                tenant=tenant.name,
                principal=principal,
                jwt_cache_hit=authn.cache_hit,
            )
            return outcome, tenant, None
        # policy engine
        path = view.path
        subject = Subject(  # positional: half the cost of keywords, on every Check
            principal or None,  # principal
            _ip(view.source_address),  # source_ip
            self._remote_ip(view),  # remote_ip
            authn.claims,
            view.host,
            view.method,
            normalize_path(path, self._paths),  # path
            view.headers,
            _ip(view.destination_address),  # destination_ip
            view.destination_port or None,  # destination_port
            view.sni or None,  # sni
            self._clock(),  # time
            path.partition("?")[2].partition("#")[0] if "?" in path else "",  # query
            view.destination_principal or None,  # destination_principal
        )
        result = evaluate(tenant.policies, subject)
        outcome = self._outcome(tenant, result, principal, authn)
        limits = tenant.ratelimits
        if limits is not None and outcome.allowed:  # after authz: a deny costs no quota
            outcome = self._limit(outcome, tenant.name, limits, subject)
        return outcome, tenant, subject

    def _limit(
        self, outcome: Outcome, tenant: str, limits: RateLimits, subject: Subject
    ) -> Outcome:
        """The tenant's RateLimits on an allowed request: admitted with the RateLimit headers
        for the client, or a 429."""
        decision = self.limiter.check(tenant, limits, new_ctx(limits, subject))
        if decision is None:
            return outcome
        if decision.admitted:
            return outcome.replace(ratelimit=decision.limit, client_headers=decision.headers)
        reason = Reason.RATELIMIT_UNAVAILABLE if decision.outage else Reason.RATE_LIMITED
        return outcome.replace(
            allowed=False,
            reason=reason,
            status=429,
            detail=f"rate limit {decision.limit}",
            headers_to_add=(),
            headers_to_remove=(),
            ratelimit=decision.limit,
            client_headers=decision.headers,
        )

    def _outcome(
        self,
        tenant: CompiledTenant,
        result: PolicyResult,
        principal: str,
        authn: AuthnResult,
    ) -> Outcome:
        name = tenant.name
        request_principal = authn.request_principal or ""
        add: tuple[tuple[str, str], ...] = ()
        remove: tuple[str, ...] = ()
        if result.allowed:
            # memoized as the parsed identities are: by entries, and by the principal's length
            build = _allowed_headers_memo if len(principal) <= _MEMO_MAX_CHARS else _allowed_headers
            add, remove = build(
                name, principal, request_principal, authn.headers_to_add, authn.headers_to_remove
            )
        # Positional: keywords cost more in the pure build, on every Check.
        return Outcome(
            result.allowed,
            result.reason,
            200 if result.allowed else 403,  # status
            name,  # tenant
            result.policy,
            result.rule,
            principal,
            request_principal,
            "" if result.allowed else result.policy or "no ALLOW policy matched",  # detail
            add,  # headers_to_add
            remove,  # headers_to_remove
            tuple([f"{a.policy}[{a.rule}]" for a in result.audits]) if result.audits else (),
            result.shadow,
            authn.cache_hit,  # jwt_cache_hit
            tenant.version,
        )

    def _principal(self, view: RequestView) -> str:
        """The URI of ``peer_identity``, "" without one; without a trusted-proxy XFCC to read,
        ``source.principal`` itself once a memo has found it valid (a valid SPIFFE ID is its
        own URI: tests/test_identity.py::test_parser_never_accepts_what_it_cannot_rebuild)."""
        if self._proxies and XFCC_HEADER in view.headers:
            peer = peer_identity(view, self._proxies)
            return peer.uri if peer is not None else ""
        source = view.source_principal
        return source if _source_spiffe_id(source) is not None else ""

    def _remote_ip(self, view: RequestView) -> IPAddress | None:
        """The original client, from x-forwarded-for as Envoy does with xff_num_trusted_hops."""
        xff = view.headers.get("x-forwarded-for")
        if xff:
            entries = xff.split(",")
            if len(entries) > self._hops:
                return _ip(entries[-1 - self._hops].strip())
        return _ip(view.source_address)


def route(
    snapshot: Snapshot, view: RequestView, dest_ns: str | None
) -> tuple[CompiledTenant | None, Reason | None, str]:
    """``snapshot.route``: a compiled, available tenant whose routes match is read here, in
    the compiled build without a call into the registry; anything else (no tenant, deferred,
    unavailable, host or headers not matching the namespace's owner) is routed again by
    ``Snapshot.route`` (tests/test_pipeline.py holds the two equal)."""
    spec, matched = snapshot.router.route(view.host, dest_ns, view.headers)
    if spec is not None and matched:
        tenant = snapshot.tenants.compiled.get(spec.name)
        if tenant is not None and not tenant.unavailable:
            return tenant, None, ""
    routing = snapshot.route(view, dest_ns)
    return routing.tenant, routing.refusal, routing.detail


def _allowed_headers(
    tenant: str,
    principal: str,
    request_principal: str,
    token_headers_to_add: tuple[tuple[str, str], ...],
    token_headers_to_remove: tuple[str, ...],
) -> _Headers:
    """The headers an allow sets for the upstream, and those it removes."""
    add: list[tuple[str, str]] = [(HEADER_TENANT, tenant)]
    if principal:
        add.append((HEADER_PRINCIPAL, principal))
    if request_principal:
        add.append((HEADER_REQUEST_PRINCIPAL, request_principal))
    add.extend(token_headers_to_add)
    return tuple(add), _removals(add, token_headers_to_remove)


def _removals(added: list[tuple[str, str]], token_headers: tuple[str, ...]) -> tuple[str, ...]:
    """Our own headers that we do not set (a client's copy must not reach the upstream),
    and the token headers that are not forwarded. Set headers overwrite a client's copy."""
    # Loops, not comprehensions: each comprehension costs a frame (pure build).
    names = set()
    for name, _ in added:
        names.add(name)
    out = []
    for header in OWN_HEADERS:
        if header not in names:
            out.append(header)
    for header in token_headers:
        if header not in names:
            out.append(header)
    return tuple(out)


def _source_spiffe_id(source_principal: str) -> SpiffeId | None:
    """What ``peer_identity`` makes of ``source.principal`` (raises PeerIdentityError)."""
    if len(source_principal) > _MEMO_MAX_CHARS:
        return _parse_source(source_principal)
    return _source_memo(source_principal)


def _parse_source(source_principal: str) -> SpiffeId | None:
    return parse_spiffe_id(source_principal) if source_principal else None


def _ip(value: str) -> IPAddress | None:
    return _ip_memo(value) if len(value) <= _MAX_IP_CHARS else None


def _parse_ip(value: str) -> IPAddress | None:
    if not value:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _namespace_of(destination_principal: str) -> str | None:
    if len(destination_principal) > _MEMO_MAX_CHARS:
        return _parse_namespace(destination_principal)
    return _namespace_memo(destination_principal)


def _parse_namespace(destination_principal: str) -> str | None:
    if not destination_principal:
        return None
    try:
        spiffe: SpiffeId = parse_spiffe_id(destination_principal)
    except ValueError:
        return None
    return spiffe.namespace


_source_memo: Final = lru_cache(maxsize=_PARSED_CACHE)(_parse_source)
_ip_memo: Final = lru_cache(maxsize=_PARSED_CACHE)(_parse_ip)
_namespace_memo: Final = lru_cache(maxsize=_PARSED_CACHE)(_parse_namespace)
# The headers of an allow, by what they are made of (the token's headers are the tuples the
# token cache holds, so an entry adds references, not copies).
_allowed_headers_memo: Final = lru_cache(maxsize=_PARSED_CACHE)(_allowed_headers)
