"""Authenticate one request against a tenant's jwtRules. Synchronous, memory only.

The phases of ``authenticate``: find the tokens (none: no principal; several different ones:
ambiguous) -> cached? -> parse -> pick the rule by the unverified ``iss`` -> the rule's keys
-> signature -> ``exp``/``nbf`` -> audience -> output headers -> cache. Any failure is a
JWT_INVALID result; ``authenticate`` never raises.

Output headers: ``headers_to_add`` are meant to be *set* (overwriting what the client sent).
Every output header a rule names (outputPayloadToHeader, outputClaimToHeaders) that is not
added for this request is listed in ``headers_to_remove``, so a client cannot forge
``x-user`` by sending a token without that claim, or no token at all.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from extauthz.authn.cache import TokenCache
from extauthz.authn.jwks import JwksCache
from extauthz.authn.keys import Key
from extauthz.authn.rules import JwtRule, TokenLocation
from extauthz.authn.tokens import TokenFinder
from extauthz.authn.verify import (
    MAX_TOKEN_BYTES,
    InvalidToken,
    ParsedToken,
    check_times,
    parse_token,
    verify_signature,
)
from extauthz.errors import AuthnError, Reason
from extauthz.model import RequestView

__all__ = ["Authenticator", "AuthnResult"]

log = logging.getLogger("extauthz.authn")

NO_EXP_TTL: Final = 300.0  # a token without exp is re-verified at least this often
MAX_KIDLESS_TRIES: Final = 8  # keys tried for a token without kid (each is a signature check)


@dataclass(frozen=True, slots=True)
class AuthnResult:
    """What authentication concluded for one request."""

    claims: Mapping[str, Any] | None = None
    request_principal: str | None = None
    error: AuthnError | None = None
    headers_to_add: tuple[tuple[str, str], ...] = ()
    headers_to_remove: tuple[str, ...] = ()
    cache_hit: bool = False
    issuer: str | None = None


@dataclass(frozen=True, slots=True)
class _Verified:
    """A cache entry: everything about a verified token that does not depend on where it was."""

    rule: JwtRule
    key: Key
    kid_name: str
    claims: Mapping[str, Any]
    principal: str
    headers_to_add: tuple[tuple[str, str], ...]


class _Cached:
    """A cache entry: the verified token, and the result of its latest hit with the
    locations it was found in (the same locations give the same result)."""

    __slots__ = ("hit", "verified", "where")

    def __init__(self, verified: _Verified) -> None:
        self.verified = verified
        self.where: tuple[TokenLocation, ...] | None = None
        self.hit: AuthnResult | None = None


class Authenticator:
    """Compiled once per tenant from its rules; ``authenticate`` is the hot path."""

    def __init__(
        self,
        rules: Sequence[JwtRule],
        jwks: JwksCache,
        *,
        cache_size: int = 10_000,
        clock_skew: float = 60.0,
    ) -> None:
        self._rules = tuple(rules)
        self._jwks = jwks
        self._skew = clock_skew
        self._by_issuer = {rule.issuer: rule for rule in self._rules}
        self._finder = TokenFinder(loc for rule in self._rules for loc in rule.locations)
        self._locations = {rule.issuer: frozenset(rule.locations) for rule in self._rules}
        self._cache: TokenCache[_Cached] = TokenCache(cache_size)
        self._output_headers = tuple(
            dict.fromkeys(
                name
                for rule in self._rules
                for name in (
                    *([rule.output_payload_to_header] if rule.output_payload_to_header else []),
                    *(c.header for c in rule.output_claim_to_headers),
                )
            )
        )
        self._no_token = AuthnResult(headers_to_remove=self._output_headers)

    @property
    def jwks_uris(self) -> frozenset[str]:
        return frozenset(r.jwks_uri for r in self._rules if r.jwks_uri is not None)

    @property
    def jwks_timeouts(self) -> Mapping[str, float]:
        """Each jwksUri with its fetch deadline: the largest ``timeout`` of the rules using it."""
        out: dict[str, float] = {}
        for rule in self._rules:
            if rule.jwks_uri is not None:
                out[rule.jwks_uri] = max(rule.timeout, out.get(rule.jwks_uri, 0.0))
        return out

    @property
    def space_delimited_claims(self) -> frozenset[str]:
        return frozenset(c for r in self._rules for c in r.space_delimited_claims)

    @property
    def rules(self) -> tuple[JwtRule, ...]:
        return self._rules

    def authenticate(self, view: RequestView, now: float | None = None) -> AuthnResult:
        """Find, verify and map the request's token. Never raises."""
        try:
            return self._authenticate(view, time.time() if now is None else now)
        except InvalidToken as invalid:  # (a name of its own: the compiled build types it)
            return _invalid(invalid.detail)
        except Exception as exc:
            log.error("authentication failed unexpectedly", extra={"error": type(exc).__name__})
            return _invalid("token could not be verified")

    def _authenticate(self, view: RequestView, now: float) -> AuthnResult:
        if not self._rules:
            return self._no_token
        found = self._finder(view)
        if not found:
            return self._no_token
        if len(found) > 1:
            return AuthnResult(
                error=AuthnError(Reason.JWT_AMBIGUOUS, "several different tokens in the request")
            )
        ((token, where),) = found.items()
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("token too large")
        cached = self._cache.get(token, now)
        if cached is not None and self._still_valid(cached.verified, where):
            if cached.hit is None or cached.where != where:
                cached.hit = self._result(cached.verified, where, cache_hit=True)
                cached.where = where
            return cached.hit
        verified, not_before, not_after = self._verify(token, where, now)
        self._cache.put(token, not_before, not_after, _Cached(verified), cost=len(token))
        return self._result(verified, where, cache_hit=False)

    def _verify(
        self, token: str, where: tuple[TokenLocation, ...], now: float
    ) -> tuple[_Verified, float, float]:
        parsed = parse_token(token)
        issuer = parsed.payload.get("iss")
        rule = self._by_issuer.get(issuer) if isinstance(issuer, str) else None
        if rule is None:
            raise InvalidToken("issuer not configured")
        if self._locations[rule.issuer].isdisjoint(where):
            raise InvalidToken("token not in a location configured for its issuer")
        key, kid_name = self._check_signature(rule, parsed)
        exp, nbf = check_times(parsed.payload, now, self._skew)
        if rule.audiences and not _audience_ok(parsed.payload.get("aud"), rule.audiences):
            raise InvalidToken("audience not allowed")
        sub = parsed.payload.get("sub")
        verified = _Verified(
            rule=rule,
            key=key,
            kid_name=kid_name,
            claims=parsed.payload,
            principal=f"{rule.issuer}/{sub if isinstance(sub, str) else ''}",
            headers_to_add=_output_headers(rule, parsed),
        )
        not_after = exp + self._skew if exp is not None else now + NO_EXP_TTL
        not_before = nbf - self._skew if nbf is not None else float("-inf")
        return verified, not_before, not_after

    def _check_signature(self, rule: JwtRule, parsed: ParsedToken) -> tuple[Key, str]:
        keys = rule.jwks if rule.jwks is not None else self._jwks.keys(rule.jwks_uri or "")
        if keys is None:
            raise InvalidToken("signing keys not available yet")
        if parsed.kid is not None and parsed.kid in keys:
            names = [parsed.kid]
        else:
            # an unknown kid may be a rotation: refetch (rate-limited), even if a key without
            # kid is there to try meanwhile
            if parsed.kid is not None and rule.jwks_uri is not None:
                self._jwks.request_refresh(rule.jwks_uri)
            # a key without kid may verify any token; a token without kid may use any key
            names = [n for n, k in keys.items() if parsed.kid is None or k.kid is None]
            if not names:
                raise InvalidToken("unknown kid")
            names = [n for n in names if parsed.alg in keys[n].algorithms][:MAX_KIDLESS_TRIES]
        by_key = {id(keys[n]): n for n in names}
        key = verify_signature(parsed, (keys[n] for n in names))
        return key, by_key[id(key)]

    def _still_valid(self, hit: _Verified, where: tuple[TokenLocation, ...]) -> bool:
        """Found where its rule looks, and its key is still the current one for its kid."""
        rule = hit.rule
        if self._locations[rule.issuer].isdisjoint(where):
            return False
        keys = rule.jwks if rule.jwks is not None else self._jwks.keys(rule.jwks_uri or "")
        return keys is not None and keys.get(hit.kid_name) is hit.key

    def _result(
        self, verified: _Verified, where: tuple[TokenLocation, ...], *, cache_hit: bool
    ) -> AuthnResult:
        rule = verified.rule
        added = {name for name, _ in verified.headers_to_add}
        remove = [name for name in self._output_headers if name not in added]
        if not rule.forward_original_token:
            rule_locations = self._locations[rule.issuer]
            for loc in where:
                if loc.kind == "header" and loc in rule_locations and loc.name not in remove:
                    remove.append(loc.name)
        return AuthnResult(
            claims=verified.claims,
            request_principal=verified.principal,
            headers_to_add=verified.headers_to_add,
            headers_to_remove=tuple(remove),
            cache_hit=cache_hit,
            issuer=rule.issuer,
        )


def _invalid(detail: str) -> AuthnResult:
    return AuthnResult(error=AuthnError(Reason.JWT_INVALID, detail))


def _audience_ok(aud: Any, allowed: frozenset[str]) -> bool:
    if isinstance(aud, str):
        return aud in allowed
    if isinstance(aud, list):
        return any(isinstance(a, str) and a in allowed for a in aud)
    return False


def _output_headers(rule: JwtRule, parsed: ParsedToken) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    if rule.output_payload_to_header:
        out.append((rule.output_payload_to_header, parsed.payload_segment))
    for mapping in rule.output_claim_to_headers:
        value = _claim_value(parsed.payload, mapping.claim)
        if value is not None:
            out.append((mapping.header, value))
    return tuple(out)


def _claim_value(payload: Mapping[str, Any], claim: str) -> str | None:
    """A claim (``a.b`` for nested) as a header value; None if absent, an object, or unsafe.

    Strings as they are, booleans ``true``/``false``, numbers in JSON form, lists of those
    joined with ``,``. A value with a control character (CR, LF, NUL...) is never emitted.
    """
    value: Any = payload.get(claim)
    if value is None and "." in claim:
        value = payload
        for part in claim.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, list):
        items = [_scalar(v) for v in value]
        if any(i is None for i in items):
            return None
        text = ",".join(i for i in items if i is not None)
    else:
        scalar = _scalar(value)
        if scalar is None:
            return None
        text = scalar
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return None
    return text


def _scalar(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return None
