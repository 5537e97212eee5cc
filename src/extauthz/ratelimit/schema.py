"""``kind: RateLimit``: parse and compile a tenant's limits, once, at load time.

```yaml
apiVersion: extauthz.io/v1
kind: RateLimit
metadata: {name: per-user, namespace: acme}     # namespace = the tenant
spec:
  limits:
  - key: [request.auth.principal]   # attributes whose values pick a counter; tenant implied
    requests: 100
    per: minute                     # second | minute | hour | day
    rules: []                       # optional AuthorizationPolicy rules that narrow the limit
    onStoreOutage: local            # local (default) | deny
```
A limit applies to a request when it has no ``rules`` or one of them matches (Istio rule
semantics, CEL and time windows included). The rules are compiled as the rules of a DENY
policy would be, and any value that Istio's builder would only warn about is refused here:
a limit never applies to fewer requests than written.

Key attributes (their values, joined, are hashed into the counter's name):
``source.principal``, ``source.namespace``, ``source.ip``, ``remote.ip``,
``request.auth.principal``, ``request.auth.claims[name]`` (nested ``[a][b]``),
``request.headers[name]``, ``request.method``, ``request.host``, ``request.path``,
``request.path.prefix[N]`` (the first N segments of the normalized path) and ``tenant``.
An absent attribute is a value of its own: every request without it shares one counter,
so leaving out a header or a token never escapes the limit.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from extauthz.documents import KIND_POLICY, KIND_RATELIMIT, Document, Path
from extauthz.errors import DocumentError, Location
from extauthz.policy.compile import compile_policies
from extauthz.policy.custom import CustomContext
from extauthz.policy.matchers import MISSING, Ctx, Matcher

__all__ = [
    "KIND_RATELIMIT",
    "MAX_KEYS",
    "UNITS",
    "CompiledLimit",
    "RateLimits",
    "key_hash",
    "parse_ratelimits",
]

UNITS: Final[Mapping[str, int]] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
OUTAGE_MODES: Final = ("local", "deny")
MAX_LIMITS: Final = 64  # per document
MAX_KEY_PARTS: Final = 8
MAX_REQUESTS: Final = 1_000_000_000
MAX_KEYS: Final = 10_000  # distinct key values counted per limit and window on one replica
_SPEC_FIELDS: Final = frozenset({"limits"})
_LIMIT_FIELDS: Final = frozenset({"key", "requests", "per", "rules", "onStoreOutage", "maxKeys"})
_ABSENT: Final = "\x00"  # the value of an absent attribute (never a real header/claim value)
_NAME: Final = re.compile(r"[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?")
_PREFIX_N: Final = re.compile(r"request\.path\.prefix\[([1-9][0-9]?)\]")
_BRACKETED: Final = re.compile(r"\[([^\[\]]+)\]")

KeyPart = Callable[[Ctx, str], str]  # (request, tenant) -> value, _ABSENT when absent


@dataclass(frozen=True, slots=True)
class CompiledLimit:
    """One limit: ``requests`` per ``seconds``, counted per value of ``key``."""

    id: str  # "<document name>/<index>": names the limit in headers, metadata, Redis
    requests: int
    seconds: int
    key: tuple[str, ...]  # the attribute names, as written
    parts: tuple[KeyPart, ...]
    applies: Matcher | None  # None: every request of the tenant
    deny_on_outage: bool
    max_keys: int = MAX_KEYS
    policy_header: str = ""  # the IETF RateLimit-Policy item of this limit

    def key_of(self, ctx: Ctx, tenant: str) -> str:
        """The counter's field name: a hash of the key's values (fixed size, whatever sent)."""
        parts = self.parts
        if len(parts) == 1:
            return _digest(parts[0](ctx, tenant))
        return _digest("\x1f".join([part(ctx, tenant) for part in parts]))


@dataclass(frozen=True, slots=True)
class RateLimits:
    """A tenant's limits, in document then spec order. Immutable."""

    limits: tuple[CompiledLimit, ...]
    space_delimited: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.limits)


def key_hash(values: Sequence[str]) -> str:
    """The hex digest naming the counter of these key values (``ratelimit status --key``)."""
    return _digest("\x1f".join(values))


@lru_cache(maxsize=4096)
def _digest(joined: str) -> str:
    """Memoized: a few principals send most requests; varied keys only cost misses."""
    return hashlib.blake2b(joined.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def parse_ratelimits(
    docs: Sequence[Document], custom: CustomContext, space_delimited: frozenset[str]
) -> RateLimits | None:
    """The tenant's compiled limits (None without RateLimit documents).

    Raises DocumentError naming file, line and field.
    """
    limits: list[CompiledLimit] = []
    for doc in docs:
        if doc.kind != KIND_RATELIMIT:
            continue
        if not _NAME.fullmatch(doc.name):
            raise doc.error(
                "a RateLimit name must be a DNS name ([a-z0-9.-], at most 63)", ("metadata", "name")
            )
        _only(doc, doc.spec, _SPEC_FIELDS, ("spec",))
        raw = doc.spec.get("limits")
        if not isinstance(raw, list) or not raw:
            raise doc.error("must be a non-empty list of limits", ("spec", "limits"))
        if len(raw) > MAX_LIMITS:
            raise doc.error(f"at most {MAX_LIMITS} limits per document", ("spec", "limits"))
        for i, entry in enumerate(raw):
            limits.append(_limit(doc, i, entry, custom))
    if not limits:
        return None
    return RateLimits(tuple(limits), space_delimited)


def _only(doc: Document, raw: Mapping[str, Any], allowed: frozenset[str], path: Path) -> None:
    for key in raw:
        if key not in allowed:
            raise doc.error(
                f"unknown field {key!r}; expected one of {sorted(allowed)}", (*path, key)
            )


def _limit(doc: Document, i: int, raw: Any, custom: CustomContext) -> CompiledLimit:
    path: Path = ("spec", "limits", i)
    if not isinstance(raw, dict):
        raise doc.error("a limit must be a mapping", path)
    _only(doc, raw, _LIMIT_FIELDS, path)
    requests = raw.get("requests")
    if type(requests) is not int or not 1 <= requests <= MAX_REQUESTS:
        raise doc.error(f"must be an integer from 1 to {MAX_REQUESTS}", (*path, "requests"))
    per = raw.get("per")
    if per not in UNITS:
        raise doc.error(f"must be one of {', '.join(UNITS)}", (*path, "per"))
    outage = raw.get("onStoreOutage", "local")
    if outage not in OUTAGE_MODES:
        raise doc.error("must be local or deny", (*path, "onStoreOutage"))
    max_keys = raw.get("maxKeys", MAX_KEYS)
    if type(max_keys) is not int or not 1 <= max_keys <= 1_000_000:
        raise doc.error("must be an integer from 1 to 1000000", (*path, "maxKeys"))
    key = raw.get("key", [])
    if not isinstance(key, list) or len(key) > MAX_KEY_PARTS:
        raise doc.error(f"must be a list of at most {MAX_KEY_PARTS} attributes", (*path, "key"))
    parts: list[KeyPart] = []
    for j, name in enumerate(key):
        part = _key_part(name) if isinstance(name, str) else None
        if part is None:
            raise doc.error(
                f"unknown key attribute {name!r} (see the RateLimit documentation)",
                (*path, "key", j),
            )
        parts.append(part)
    rules = raw.get("rules", [])
    if not isinstance(rules, list):
        raise doc.error("must be a list of AuthorizationPolicy rules", (*path, "rules"))
    return CompiledLimit(
        id=f"{doc.name}/{i}",
        requests=requests,
        seconds=UNITS[str(per)],
        key=tuple(key),
        parts=tuple(parts),
        applies=_rules(doc, i, rules, custom) if rules else None,
        deny_on_outage=outage == "deny",
        max_keys=max_keys,
        policy_header=f'"{doc.name}/{i}";q={requests};w={UNITS[str(per)]}',
    )


def _rules(doc: Document, i: int, rules: list[Any], custom: CustomContext) -> Matcher:
    """The limit's rules, compiled as a DENY policy's (a bad value widens, never narrows);
    anything the compiler would only warn about is refused."""
    head: Path = ("spec", "limits", i, "rules")
    lines = {("spec", "rules", *p[len(head) :]): n for p, n in doc.lines.items() if p[:4] == head}
    lines[("spec",)] = doc.lines.get(("spec", "limits", i), 0)
    probe = Document(
        api_version="security.istio.io/v1",
        kind=KIND_POLICY,
        name=f"{doc.name}.{i}",
        namespace=doc.namespace,
        body={"spec": {"action": "DENY", "rules": rules}},
        source=doc.source,
        lines=lines,
    )
    here = f"spec.limits[{i}].rules"
    try:
        compiled = compile_policies([probe], custom=custom)
    except DocumentError as exc:
        field = exc.field.replace("spec.rules", here, 1)
        raise DocumentError(exc.message, location=exc.location, field=field) from None
    if compiled.warnings:
        raise _refused(compiled.warnings[0], doc, here)
    matchers = tuple(rule.match for rule in compiled.policies[0].rules)

    def applies(ctx: Ctx) -> bool:
        for match in matchers:  # noqa: SIM110 - no generator frame per Check
            if match(ctx):
                return True
        return False

    return applies


_WARNING: Final = re.compile(r"(?s)(.*):(\d+): (spec\.rules\S*): (.*?)(; the \w+ is ignored)?")


def _refused(warning: str, doc: Document, here: str) -> DocumentError:
    """A compiler warning on a limit's rules, as the error that refuses the document."""
    found = _WARNING.fullmatch(warning)
    if found is None:
        return doc.error(f"{warning} (a RateLimit refuses what a policy would ignore)")
    source, line, field, message = found.group(1, 2, 3, 4)
    return DocumentError(
        f"{message} (a RateLimit refuses what a policy would ignore)",
        location=Location(source, int(line)),
        field=field.replace("spec.rules", here, 1),
    )


# -- key attributes ---------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is MISSING or value is None:
        return _ABSENT
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _source_principal(ctx: Ctx, tenant: str) -> str:
    principal = ctx.subject.principal
    return principal.removeprefix("spiffe://") if principal else _ABSENT


def _source_namespace(ctx: Ctx, tenant: str) -> str:
    principal = ctx.subject.principal or ""
    _, found, rest = principal.partition("/ns/")
    return rest.partition("/")[0] if found else _ABSENT


def _request_principal(ctx: Ctx, tenant: str) -> str:
    claims = ctx.subject.claims  # iss and sub are never space-delimited: the raw claims do
    if claims is None:
        return _ABSENT
    iss, sub = claims.get("iss"), claims.get("sub")
    if isinstance(iss, str) and isinstance(sub, str):
        return f"{iss}/{sub}"
    return _ABSENT


def _ip(attr: str) -> KeyPart:
    def ip(ctx: Ctx, tenant: str) -> str:
        value = getattr(ctx.subject, attr)
        return _ABSENT if value is None else str(value)

    return ip


def _tenant(ctx: Ctx, tenant: str) -> str:
    return tenant


def _method(ctx: Ctx, tenant: str) -> str:
    return ctx.subject.method or _ABSENT


def _host(ctx: Ctx, tenant: str) -> str:
    return ctx.host_lower or _ABSENT


def _path(ctx: Ctx, tenant: str) -> str:
    return ctx.subject.path or _ABSENT


def _path_prefix(n: int) -> KeyPart:
    def prefix(ctx: Ctx, tenant: str) -> str:
        path = ctx.subject.path
        if not path:
            return _ABSENT
        return "/".join(path.split("/", n + 1)[: n + 1])

    return prefix


def _header(name: str) -> KeyPart:
    def header(ctx: Ctx, tenant: str) -> str:
        value = ctx.subject.headers.get(name)
        return _ABSENT if value is None else value

    return header


def _claim(path: tuple[str, ...]) -> KeyPart:
    def claim(ctx: Ctx, tenant: str) -> str:
        return _text(ctx.claim(path))

    return claim


_SIMPLE: Final[Mapping[str, KeyPart]] = {
    "source.principal": _source_principal,
    "source.namespace": _source_namespace,
    "source.ip": _ip("source_ip"),
    "remote.ip": _ip("remote_ip"),
    "request.auth.principal": _request_principal,
    "request.method": _method,
    "request.host": _host,
    "request.path": _path,
    "tenant": _tenant,
}


def _key_part(name: str) -> KeyPart | None:
    simple = _SIMPLE.get(name)
    if simple is not None:
        return simple
    prefix = _PREFIX_N.fullmatch(name)
    if prefix:
        return _path_prefix(int(prefix.group(1)))
    for head, make in (("request.headers", _header_name), ("request.auth.claims", _claim_path)):
        if name.startswith(head + "["):
            rest = name[len(head) :]
            found = _BRACKETED.findall(rest)
            if found and "".join(f"[{f}]" for f in found) == rest:
                return make(found)
    return None


def _header_name(found: list[str]) -> KeyPart | None:
    if len(found) != 1 or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", found[0]):
        return None
    return _header(found[0].lower())


def _claim_path(found: list[str]) -> KeyPart | None:
    return _claim(tuple(found))
