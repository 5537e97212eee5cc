"""Compile a tenant's AuthorizationPolicy documents into frozen matchers.

Each rule becomes ``CompiledRule``: its ``from`` entries, ``to`` entries and ``when``
conditions as labelled ``Check`` objects (what ``explain`` walks) plus closures over the
same matchers: ``match`` runs them all, ``run`` (what ``evaluate`` calls) those the index has
not decided. Rules are ordered the way Envoy orders the policies of
one RBAC filter (by the name Istio gives them, ``ns[<ns>]-policy[<name>]-rule[<i>]``), so the
first match is the rule Envoy reports as the effective policy.

Values that cannot be turned into a matcher (an invalid port, IP/CIDR, header or claim key, an
unknown ``when`` key) are handled as Istio's builder handles them, with a warning: in an ALLOW
policy the whole rule is dropped (it never matches), in a DENY or AUDIT policy only the bad
value (or the bad condition) is dropped, so the rule matches more, never less.

Each ``Check`` of a field also carries its ``Need`` (``index.py``), and the rules of a tenant
are indexed on them (``CompiledPolicies.index``): ``evaluate`` runs only the rules a request
can match, and of those only the checks the index has not already decided.

Identical fields share their compiled matcher, across the policies of every tenant: a matcher
is a pure function of the values that reach ``build`` and of the few inputs its builder reads
(``_Shared`` keys name them all), and holds no tenant, file or line. Validation and warnings
still run per document, so each message names its own file and line; only what is built from
the values that passed is shared. Custom conditions (CEL, time windows) read their tenant's
context and are never shared.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from types import FunctionType
from typing import Final, Generic, TypeVar

from mypy_extensions import mypyc_attr

from extauthz.documents import Document, Path, field_name
from extauthz.policy.custom import CUSTOM_PREFIX, CustomContext, custom_condition
from extauthz.policy.index import (
    DIMENSIONS,
    Need,
    RuleIndex,
    conditions_need,
    entries_need,
    host_need,
    method_need,
    path_need,
    principal_need,
)
from extauthz.policy.matchers import (
    Ctx,
    IPSet,
    Matcher,
    StringSet,
    ValueForms,
    ascii_lower,
    parse_cidr,
    parse_port,
    split_claim,
)
from extauthz.policy.paths import TemplateError, is_template, template_regex
from extauthz.policy.schema import ConditionSpec, PolicySpec, RuleSpec, parse_policy
from extauthz.policy.spiffe import (
    SPIFFE,
    expand_trust_domains,
    namespace_set,
    principal_set,
    service_account_set,
    trust_domain_set,
)

__all__ = [
    "ALLOW",
    "AUDIT",
    "DENY",
    "DRY_ALLOW",
    "DRY_AUDIT",
    "DRY_DENY",
    "GROUPS",
    "Check",
    "CompiledPolicies",
    "CompiledPolicy",
    "CompiledRule",
    "compile_policies",
]

_V = TypeVar("_V")
# The rule lists of CompiledPolicies (action, dry run), in the order of the index's groups.
GROUPS: Final = (
    ("DENY", False),
    ("ALLOW", False),
    ("AUDIT", False),
    ("DENY", True),
    ("ALLOW", True),
    ("AUDIT", True),
)
DENY, ALLOW, AUDIT, DRY_DENY, DRY_ALLOW, DRY_AUDIT = range(len(GROUPS))
ALWAYS_SPACE_DELIMITED: Final = ("scope", "permission")
_EXPERIMENTAL: Final = "experimental.envoy.filters."


# A plain Python class in the compiled build too: mypyc's native classes have no weakref slot,
# and the shared table holds Checks weakly.
@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True, weakref_slot=True)
class Check:
    """One field of a rule: ``field`` names it (``to[0].operation.paths``). Shared between
    identical fields, so it holds no tenant, file or line."""

    field: str
    fn: Matcher
    need: Need | None = None  # what a request must have for ``fn`` to hold (the index)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    policy: str  # namespace/name
    index: int
    action: str
    dry_run: bool
    envoy_id: str  # the RBAC policy name Istio generates; Envoy's evaluation order
    sources: tuple[tuple[Check, ...], ...]  # any entry, all checks; () = not checked
    operations: tuple[tuple[Check, ...], ...]
    conditions: tuple[Check, ...]  # all
    dropped: str = ""  # why this rule can never match, "" when it can
    # ``match`` for a rule the tenant's index has kept for the request: what evaluate runs
    run: Matcher = field(default=lambda ctx: False, repr=False, compare=False)

    @property
    def match(self) -> Matcher:
        """The rule's matcher with every check (no index): made when asked, by rate-limit
        rules and the tests that hold the index to it, and shared as every matcher is. Not
        kept on the rule: a served Check runs ``run``, and a tenant's memory is mostly its
        rules."""
        return _SHARED.rule(self.sources, self.operations, self.conditions, bool(self.dropped))


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    name: str  # namespace/name
    action: str
    dry_run: bool
    rules: tuple[CompiledRule, ...]  # in spec order; () for a policy without rules


@dataclass(frozen=True, slots=True)
class CompiledPolicies:
    """A tenant's policies, ready for ``evaluate``. Immutable."""

    policies: tuple[CompiledPolicy, ...]
    warnings: tuple[str, ...]
    space_delimited: frozenset[str]
    deny: tuple[CompiledRule, ...]  # enforced, Envoy order, matchable rules only
    allow: tuple[CompiledRule, ...]
    audit: tuple[CompiledRule, ...]
    dry_deny: tuple[CompiledRule, ...]
    dry_allow: tuple[CompiledRule, ...]
    dry_audit: tuple[CompiledRule, ...]
    has_allow: bool  # an enforced ALLOW policy exists (even one that matches nothing)
    has_dry_allow: bool
    has_dry_run: bool
    # the six lists above, in the order of GROUPS, indexed: the rules a request can match
    index: RuleIndex[CompiledRule]

    @property
    def policy_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.policies)

    def __len__(self) -> int:
        return len(self.policies)


def compile_policies(
    docs: Sequence[Document],
    *,
    trust_domains: Sequence[str] = (),
    space_delimited_claims: Sequence[str] = (),
    custom: CustomContext | None = None,
) -> CompiledPolicies:
    """Validate and compile a tenant's AuthorizationPolicy documents.

    ``trust_domains``: the tenant's trust domain followed by its aliases (empty: no aliasing).
    ``space_delimited_claims``: JWT claims split at spaces, besides scope and permission.
    ``custom``: the tenant's time zone and data sets, for the ``extauthz.io/`` conditions.
    Raises DocumentError for anything malformed.
    """
    seen: dict[str, Document] = {}
    warnings: list[str] = []
    policies: list[CompiledPolicy] = []
    tds = tuple(trust_domains)
    for doc in docs:
        spec = parse_policy(doc)
        if spec.ref in seen:
            raise doc.error(f"duplicate policy {spec.ref} (also in {seen[spec.ref].location()})")
        seen[spec.ref] = doc
        warnings.extend(spec.warnings)
        if custom is None:
            custom = CustomContext(doc.namespace)
        policy, policy_warnings = _compile_policy(spec, tds, custom)
        warnings.extend(policy_warnings)
        policies.append(policy)

    def pick(action: str, dry: bool) -> tuple[CompiledRule, ...]:
        rules = [
            r
            for p in policies
            if p.action == action and p.dry_run == dry
            for r in p.rules
            if not r.dropped
        ]
        return tuple(sorted(rules, key=lambda r: r.envoy_id))

    groups = tuple(pick(action, dry) for action, dry in GROUPS)
    return CompiledPolicies(
        policies=tuple(policies),
        warnings=tuple(warnings),
        space_delimited=frozenset((*ALWAYS_SPACE_DELIMITED, *space_delimited_claims)),
        deny=groups[DENY],
        allow=groups[ALLOW],
        audit=groups[AUDIT],
        dry_deny=groups[DRY_DENY],
        dry_allow=groups[DRY_ALLOW],
        dry_audit=groups[DRY_AUDIT],
        has_allow=any(p.action == "ALLOW" and not p.dry_run for p in policies),
        has_dry_allow=any(p.action == "ALLOW" and p.dry_run for p in policies),
        has_dry_run=any(p.dry_run for p in policies),
        index=RuleIndex(groups, _rule_needs),
    )


def _compile_policy(
    spec: PolicySpec, tds: tuple[str, ...], custom: CustomContext
) -> tuple[CompiledPolicy, list[str]]:
    warnings: list[str] = []
    rules = tuple(
        _RuleCompiler(spec, rule, tds, warnings, custom).compile() for rule in (spec.rules or ())
    )
    return CompiledPolicy(sys.intern(spec.ref), spec.action, spec.dry_run, rules), warnings


class _Bad(ValueError):
    """A value Istio's builder cannot turn into a matcher."""


Validate = Callable[[str], object]
Build = Callable[[list[str]], Matcher]
NeedOf = Callable[[list[str]], Need | None]


class _RuleCompiler:
    def __init__(
        self,
        spec: PolicySpec,
        rule: RuleSpec,
        tds: tuple[str, ...],
        warnings: list[str],
        custom: CustomContext,
    ) -> None:
        self.spec = spec
        self.doc = spec.doc
        self.rule = rule
        self.tds = tds
        self.warnings = warnings
        self.custom = custom
        self.dropped = ""
        self.base: Path = ("spec", "rules", rule.index)

    def compile(self) -> CompiledRule:
        rule = self.rule
        sources = tuple(tuple(self._source(j, entry)) for j, entry in enumerate(rule.sources))
        operations = tuple(
            tuple(self._operation(j, entry)) for j, entry in enumerate(rule.operations)
        )
        conditions = tuple(
            c for j, cond in enumerate(rule.conditions) for c in self._condition(j, cond)
        )
        spec = self.spec
        doc = self.doc
        return CompiledRule(
            policy=sys.intern(spec.ref),
            index=rule.index,
            action=spec.action,
            dry_run=spec.dry_run,
            envoy_id=sys.intern(f"ns[{doc.namespace}]-policy[{doc.name}]-rule[{rule.index}]"),
            sources=sources,
            operations=operations,
            conditions=conditions,
            dropped=self.dropped,
            run=_SHARED.rule(sources, operations, conditions, bool(self.dropped), indexed=True),
        )

    # -- reporting -------------------------------------------------------------------------

    def _bad(self, path: Path, message: str, what: str = "value") -> None:
        where = f"{self.doc.location(path)}: {field_name(path)}"
        if self.spec.action == "ALLOW":
            if not self.dropped:
                self.dropped = f"{field_name(path)}: {message}"
            self.warnings.append(f"{where}: {message}; the rule is dropped (it never matches)")
        else:
            self.warnings.append(f"{where}: {message}; the {what} is ignored")

    # -- fields ----------------------------------------------------------------------------

    def _pair(
        self,
        label: str,
        path: Path,
        names: tuple[str, str],
        values: tuple[tuple[str, ...], tuple[str, ...]],
        validate: Validate | None,
        build: Build,
        build_not: Build | None = None,
        *,
        kind: tuple[Hashable, ...],
        need: NeedOf | None = None,
    ) -> list[Check]:
        """The checks of a field and its negation. ``kind`` names the builder and every input
        it reads besides the values: identical kinds and values share one matcher. ``need``
        gives the field's (not its negation's) necessary condition, for the index."""
        checks: list[Check] = []
        for name, vals, negate in ((names[0], values[0], False), (names[1], values[1], True)):
            good: list[str] = []
            for i, v in enumerate(vals):
                try:
                    if validate is not None:
                        validate(v)
                except TemplateError as bad:  # Envoy would reject the config: an error
                    message = f"invalid path template {v!r}: {bad}"
                    raise self.doc.error(message, (*path, name, i)) from None
                except ValueError as exc:
                    self._bad((*path, name, i), str(exc))
                    continue
                good.append(v)
            if good:
                if not negate:
                    make = build
                elif build_not is not None:
                    make = build_not
                else:
                    make = _negated(build)
                needs = None if negate else need
                key = (*kind, negate)
                checks.append(_SHARED.check(f"{label}.{name}", key, make, good, needs))
        return checks

    def _source(self, j: int, entry: Mapping[str, tuple[str, ...]]) -> list[Check]:
        label = f"from[{j}].source"
        path = (*self.base, "from", j, "source")
        checks: list[Check] = []
        for pos, neg in _SOURCE_FIELDS:
            vals = (entry.get(pos, ()), entry.get(neg, ()))
            if vals[0] or vals[1]:  # most fields are absent: build nothing for them
                builder, validate = self._source_kind(pos)
                kind = (pos, *self._reads(pos == "principals", pos == "serviceAccounts"))
                need = self._principal_need if pos == "principals" else None
                checks += self._pair(
                    label, path, (pos, neg), vals, validate, builder, kind=kind, need=need
                )
        return checks

    def _source_kind(self, pos: str) -> tuple[Build, Validate | None]:
        ns = self.doc.namespace
        if pos == "principals":
            return self._principals, None
        if pos == "requestPrincipals":
            return _request_principals, None
        if pos == "namespaces":
            return _on_principal(namespace_set), None
        if pos == "serviceAccounts":
            return _on_principal(lambda v: service_account_set(v, ns)), None
        if pos == "trustDomains":
            return _on_principal(trust_domain_set), None
        if pos == "ipBlocks":
            return _ip(attrgetter("subject.source_ip")), parse_cidr
        return _ip(attrgetter("subject.remote_ip")), parse_cidr  # remoteIpBlocks

    def _operation(self, j: int, entry: Mapping[str, tuple[str, ...]]) -> list[Check]:
        label = f"to[{j}].operation"
        path = (*self.base, "to", j, "operation")
        checks: list[Check] = []
        for pos, neg, builder, validate, need in _OPERATION_FIELDS:
            vals = (entry.get(pos, ()), entry.get(neg, ()))
            if vals[0] or vals[1]:
                checks += self._pair(
                    label, path, (pos, neg), vals, validate, builder, kind=(pos,), need=need
                )
        return checks

    def _principals(self, values: list[str]) -> Matcher:
        expanded = expand_trust_domains(values, self.tds)
        if len(expanded) == 1 and "*" not in (expanded[0][:1], expanded[0][-1:]):
            return _one_principal(SPIFFE + expanded[0])  # the common case, without a set
        return _on_principal(principal_set)(expanded)

    def _principal_need(self, values: list[str]) -> Need | None:
        return principal_need(expand_trust_domains(values, self.tds))

    def _condition(self, j: int, cond: ConditionSpec) -> list[Check]:
        label = f"when[{j}]"
        path = (*self.base, "when", j)
        key = cond.key
        if key.startswith(CUSTOM_PREFIX):  # CEL, time windows: refused, never dropped, if bad
            vals = (cond.values, cond.not_values)
            pairs = custom_condition(self.doc, self.spec.action, key, vals, path, self.custom)
            return [Check(f"{label}.{name}", fn) for name, fn in pairs]
        if key.startswith(_EXPERIMENTAL) and self.spec.action == "DENY":
            raise self.doc.error(
                f"condition {key!r} cannot be evaluated by an external authorizer (it never "
                "sees other filters' metadata), so this DENY rule would never fire; "
                "remove the condition or the rule",
                (*path, "key"),
            )
        try:
            validate, build, build_not = _condition_kind(
                key, self.doc.namespace, self._principals, self.spec.action == "ALLOW"
            )
        except _Bad as exc:
            self._bad((*path, "key"), str(exc), "condition")
            if self.spec.action != "ALLOW":
                return []  # the condition is dropped
            return [Check(f"{label}.key", _never)]
        vals = (cond.values, cond.not_values)
        if key == "connection.sni":
            self._warn_sni((*path, "key"))
        elif key.startswith(_EXPERIMENTAL):
            where = f"{self.doc.location((*path, 'key'))}: {field_name((*path, 'key'))}"
            self.warnings.append(
                f"{where}: {key} cannot be evaluated by an external authorizer; "
                f"this {self.spec.action} rule never matches"
            )
        names = ("values", "notValues")
        reads = self._reads(key == "source.principal", key == "source.serviceAccount")
        # connection.sni and request.headers build per action (see _condition_kind)
        kind = ("when", key, *reads, self.spec.action == "ALLOW")
        need = self._principal_need if key == "source.principal" else None
        return self._pair(
            label, path, names, vals, validate, build, build_not, kind=kind, need=need
        )

    def _reads(self, trust_domains: bool, namespace: bool) -> tuple[object, ...]:
        """The tenant inputs a builder reads, for the key of what it builds."""
        return (self.tds if trust_domains else None, self.doc.namespace if namespace else None)

    def _warn_sni(self, path: Path) -> None:
        where = f"{self.doc.location(path)}: {field_name(path)}"
        if self.spec.action == "ALLOW":
            effect = "this condition fails (the rule does not allow)"
        else:
            effect = f"this condition matches (the {self.spec.action} rule applies)"
        self.warnings.append(
            f"{where}: connection.sni is only known when Envoy sends the TLS session "
            f"(include_tls_session); a Check without an SNI cannot be evaluated and {effect}"
        )


# -- the kinds of values ---------------------------------------------------------------------


def _never(ctx: Ctx) -> bool:
    return False


def _negate(fn: Matcher) -> Matcher:
    def negated(ctx: Ctx) -> bool:
        return not fn(ctx)

    return negated


def _negated(build: Build) -> Build:
    def build_negated(values: list[str]) -> Matcher:
        return _negate(build(values))

    return build_negated


def _on_principal(make: Callable[[list[str]], StringSet]) -> Build:
    def build(values: list[str]) -> Matcher:
        matcher = make(values).test

        def on_principal(ctx: Ctx) -> bool:
            principal = ctx.subject.principal
            return principal is not None and matcher(principal)

        return on_principal

    return build


def _one_principal(uri: str) -> Matcher:
    """What ``principal_set`` of one exact value tests, as one comparison."""

    def one_principal(ctx: Ctx) -> bool:
        return ctx.subject.principal == uri

    return one_principal


def _ip(get: Callable[[Ctx], object]) -> Build:
    def build(values: list[str]) -> Matcher:
        ips = IPSet([parse_cidr(v) for v in values])

        def on_ip(ctx: Ctx) -> bool:
            return ips(get(ctx))  # type: ignore[arg-type]

        return on_ip

    return build


def _check_path(value: str) -> None:
    if is_template(value):
        template_regex(value)


def _paths(values: list[str]) -> Matcher:
    forms = ValueForms.split(v for v in values if not is_template(v))
    matcher = StringSet(
        exact=forms.exact,
        prefixes=forms.prefixes,
        suffixes=forms.suffixes,
        regexes=[template_regex(v) for v in values if is_template(v)],
        nonempty=forms.star,
    ).test

    def paths(ctx: Ctx) -> bool:
        value = ctx.subject.path
        return bool(value) and matcher(value)

    return paths


def _hosts(values: list[str]) -> Matcher:
    # Envoy's ignore_case: the values folded here, the host once per request (host_lower)
    matcher = StringSet.istio([ascii_lower(v) for v in values], star="present").test

    def hosts(ctx: Ctx) -> bool:
        return bool(ctx.subject.host) and matcher(ctx.host_lower)

    return hosts


def _methods(values: list[str]) -> Matcher:
    matcher = StringSet.istio(values, star="present").test

    def methods(ctx: Ctx) -> bool:
        value = ctx.subject.method
        return bool(value) and matcher(value)

    return methods


def _ports(values: list[str]) -> Matcher:
    ports = frozenset(parse_port(v) for v in values)

    def on_port(ctx: Ctx) -> bool:
        return ctx.subject.destination_port in ports

    return on_port


def _sni(unknown: bool, negate: bool) -> Build:
    """``connection.sni``: decided as written when the Check carries an SNI.

    Without one (Istio's ext_authz provider sends no TLS session by default) the condition
    cannot be evaluated: it answers ``unknown``, the answer on the safe side for the action
    (False in ALLOW, True in DENY and AUDIT), for ``values`` and ``notValues`` alike.
    """

    def build(values: list[str]) -> Matcher:
        matcher = StringSet.istio(values, star="nonempty").test

        def sni(ctx: Ctx) -> bool:
            value = ctx.subject.sni
            if not value:
                return unknown
            return matcher(value) is not negate

        return sni

    return build


def _header(name: str, allow: bool) -> tuple[Build, Build]:
    """``request.headers[name]`` for ``values`` and ``notValues``, with the two readings.

    Envoy joins a repeated header with ``,`` (no space) in the Check; its RBAC matches when any
    one of the values does. A value with a comma is read whole and split at ``,``: ``values``
    match if either reading does; ``notValues`` hold, in an ALLOW, only if both readings hold,
    and in a DENY or AUDIT if either does (see docs/semantics.md, "Repeated headers").
    """
    lowered = name.lower()

    def build(values: list[str]) -> Matcher:
        test = StringSet.istio(values, star="present").test

        def header(ctx: Ctx) -> bool:  # the whole value or a part matches
            value = ctx.subject.headers.get(lowered)
            if value is None:
                return False
            if test(value):
                return True
            return "," in value and any(map(test, value.split(",")))

        return header

    def build_not(values: list[str]) -> Matcher:
        test = StringSet.istio(values, star="present").test

        def not_header_allow(ctx: Ctx) -> bool:  # neither the whole value nor a part matches
            value = ctx.subject.headers.get(lowered)
            if value is None:
                return True
            if test(value):
                return False
            return "," not in value or not any(map(test, value.split(",")))

        def not_header_deny(ctx: Ctx) -> bool:  # the whole value, or every part, misses
            value = ctx.subject.headers.get(lowered)
            if value is None or not test(value):
                return True
            return "," in value and not any(map(test, value.split(",")))

        return not_header_allow if allow else not_header_deny

    return build, build_not


def _claim(path: tuple[str, ...]) -> Build:
    """``request.auth.claims[...]`` (and the audiences, the presenter): ``ctx.claim(path)``
    matched as Envoy's claim matcher does (a string matches, a list if one of its strings
    does). A top-level claim is read here, split if space-delimited as ``ctx.claim`` does."""
    if len(path) > 1:

        def build_nested(values: list[str]) -> Matcher:
            test = StringSet.istio(values, star="nonempty").test

            def nested_claim(ctx: Ctx) -> bool:
                return _any_string(ctx.claim(path), test)

            return nested_claim

        return build_nested
    name = path[0]

    def build(values: list[str]) -> Matcher:
        test = StringSet.istio(values, star="nonempty").test

        def claim(ctx: Ctx) -> bool:
            claims = ctx.subject.claims
            if claims is None:
                return False
            value = claims.get(name)
            if isinstance(value, str):
                if name not in ctx.space_delimited:
                    return type(value) is str and test(value)
                value = split_claim(value)
            return _any_string(value, test)

        return claim

    return build


def _any_string(value: object, test: Callable[[str], bool]) -> bool:
    """Envoy's claim matcher on a claim value: a string matches, a list if one of its strings
    does (anything else, MISSING included, never)."""
    if type(value) is str:
        return test(value)
    if type(value) is list:
        for v in value:
            if type(v) is str and test(v):
                return True
    return False


_ANY: Final = StringSet(nonempty=True)


def _request_principal_pair(value: str) -> tuple[StringSet, StringSet]:
    """Istio's split of ``iss/sub`` forms into matchers on the ``iss`` and ``sub`` claims."""
    idx = value.rfind("/")
    found = idx >= 0
    iss, sub = (value[:idx], value[idx + 1 :]) if found else (value, "")
    if value == "*":
        return _ANY, _ANY
    if value.startswith("*"):
        if found:
            return (_ANY if iss == "*" else StringSet(suffixes=[iss[1:]])), StringSet(exact=[sub])
        return _ANY, StringSet(suffixes=[value[1:]])
    if value.endswith("*"):
        if found:
            return StringSet(exact=[iss]), (_ANY if sub == "*" else StringSet(prefixes=[sub[:-1]]))
        return StringSet(prefixes=[value[:-1]]), _ANY
    return StringSet(exact=[iss]), StringSet(exact=[sub])


def _request_principals(values: list[str]) -> Matcher:
    pairs = tuple((i.test, s.test) for i, s in map(_request_principal_pair, values))

    def request_principals(ctx: Ctx) -> bool:
        # ctx.claim(("iss",)) and ("sub",), read here: a space-delimited one is a list
        claims = ctx.subject.claims
        if claims is None:
            return False
        iss = claims.get("iss")
        sub = claims.get("sub")
        if not isinstance(iss, str) or not isinstance(sub, str):
            return False
        delimited = ctx.space_delimited
        if "iss" in delimited or "sub" in delimited:
            return False
        for i, s in pairs:  # noqa: SIM110 - a generator would cost a frame per call
            if i(iss) and s(sub):
                return True
        return False

    return request_principals


def _bracketed(rest: str, key: str) -> list[str]:
    """``[a]`` -> ["a"]; ``[a][b]`` -> ["a", "b"]."""
    if not (rest.startswith("[") and rest.endswith("]")) or len(rest) < 3:
        raise _Bad(f"invalid key {key!r}: expected the form name[<NAME>]")
    names = rest[1:-1].split("][")
    if any(not n or "[" in n or "]" in n for n in names):
        raise _Bad(f"invalid key {key!r}: expected the form name[<NAME>]")
    return names


Kind = tuple[Validate | None, Build, Build | None]  # validate, values, notValues (None: negate)


def _condition_kind(key: str, namespace: str, principals: Build, allow: bool) -> Kind:
    if key == "connection.sni":
        return None, _sni(not allow, False), _sni(not allow, True)
    if key.startswith("request.headers"):
        names = _bracketed(key[len("request.headers") :], key)
        if len(names) != 1:
            raise _Bad(f"invalid key {key!r}: expected request.headers[<NAME>]")
        return None, *_header(names[0], allow)
    validate, build = _plain_kind(key, namespace, principals)
    return validate, build, None


def _plain_kind(key: str, namespace: str, principals: Build) -> tuple[Validate | None, Build]:
    if key == "source.ip":
        return parse_cidr, _ip(attrgetter("subject.source_ip"))
    if key == "remote.ip":
        return parse_cidr, _ip(attrgetter("subject.remote_ip"))
    if key == "destination.ip":
        return parse_cidr, _ip(attrgetter("subject.destination_ip"))
    if key == "destination.port":
        return parse_port, _ports
    if key == "source.namespace":
        return None, _on_principal(namespace_set)
    if key == "source.principal":
        return None, principals
    if key == "source.serviceAccount":
        return None, _on_principal(lambda v: service_account_set(v, namespace))
    if key == "request.auth.principal":
        return None, _request_principals
    if key == "request.auth.audiences":
        return None, _claim(("aud",))
    if key == "request.auth.presenter":
        return None, _claim(("azp",))
    if key.startswith("request.auth.claims"):
        return None, _claim(tuple(_bracketed(key[len("request.auth.claims") :], key)))
    if key.startswith(_EXPERIMENTAL):
        if "[" not in key.removeprefix("experimental.").removesuffix("]"):
            raise _Bad(f"invalid key {key!r}: expected experimental.envoy.filters.<f>[<key>]")
        # We never hold other filters' metadata: in an ALLOW the rule can never match (safe);
        # a DENY is refused before this (it would never fire); an AUDIT never reports.
        return None, lambda values: _never
    raise _Bad(f"unknown condition key {key!r}")


def _negative(field: str) -> str:
    return "not" + field[0].upper() + field[1:]


_SOURCE_FIELDS: Final = tuple(
    (pos, _negative(pos))
    for pos in (
        "principals",
        "requestPrincipals",
        "namespaces",
        "serviceAccounts",
        "trustDomains",
        "ipBlocks",
        "remoteIpBlocks",
    )
)
_OPERATION_FIELDS: Final[tuple[tuple[str, str, Build, Validate | None, NeedOf | None], ...]] = (
    tuple(
        (pos, _negative(pos), build, validate, need)
        for pos, build, validate, need in (
            ("methods", _methods, None, method_need),
            ("ports", _ports, parse_port, None),
            ("paths", _paths, _check_path, path_need),
            ("hosts", _hosts, None, host_need),
        )
    )
)


# -- sharing ----------------------------------------------------------------------------------


class _Weak(Generic[_V]):
    """key -> value, held weakly: an entry goes when its value is freed. (A lean
    ``WeakValueDictionary``: a full load looks up every field of every policy.)"""

    __slots__ = ("_refs",)

    def __init__(self) -> None:
        self._refs: dict[Hashable, weakref.KeyedRef[Hashable, _V]] = {}

    def get(self, key: Hashable) -> _V | None:
        ref = self._refs.get(key)
        return None if ref is None else ref()

    def put(self, key: Hashable, value: _V) -> _V:
        self._refs[key] = weakref.KeyedRef(value, self._gone, key)
        return value

    def _gone(self, ref: weakref.KeyedRef[Hashable, _V]) -> None:
        if self._refs.get(ref.key) is ref:
            del self._refs[ref.key]

    def __len__(self) -> int:
        return len(self._refs)


class _Shared:
    """Checks and rule matchers already built, by what they were built from.

    Values are held weakly: an entry lives as long as some compiled policy uses it, so
    deleting or replacing tenants frees what only they used.
    """

    def __init__(self) -> None:
        self.checks: _Weak[Check] = _Weak()
        self.rules: _Weak[Matcher] = _Weak()

    def check(
        self,
        label: str,
        key: tuple[Hashable, ...],
        build: Build,
        good: list[str],
        need: NeedOf | None = None,
    ) -> Check:
        """The Check ``label`` of the values ``good``, built by ``build`` (and its ``need``)
        if new. ``key`` names the builder and every other input both read."""
        full = (label, *key, *good)
        check = self.checks.get(full)
        if check is None:
            made = Check(sys.intern(label), build(good), None if need is None else need(good))
            check = self.checks.put(full, made)
        return check

    def rule(
        self,
        sources: tuple[tuple[Check, ...], ...],
        operations: tuple[tuple[Check, ...], ...],
        conditions: tuple[Check, ...],
        dropped: bool,
        indexed: bool = False,
    ) -> Matcher:
        """The matcher of a rule (``indexed``: for a rule the index kept, see
        ``_rule_matcher``): the rule's own tuples of (shared) checks are the key."""
        if dropped:
            return _never
        key = (sources, operations, conditions, indexed)
        fn = self.rules.get(key)
        if fn is None:
            fn = _rule_matcher(sources, operations, conditions, indexed)
            if fn is _always or _is_check(fn, sources, operations, conditions):
                return fn  # no matcher of its own: nothing to share (nor to hold weakly)
            fn = self.rules.put(key, _weakly_held(fn))
        return fn


def _weakly_held(fn: Matcher) -> Matcher:
    """``fn`` as an object the weak table can track: a Python function as it is; a compiled
    one (the mypyc build) wrapped in a ``partial``, a plain Python object. A weak reference to
    a compiled closure is not dependable (its callback may never run, and its id may be
    reused while the table still maps a key to it), which could hand one rule another rule's
    matcher."""
    return fn if isinstance(fn, FunctionType) else partial(fn)


def _is_check(
    fn: Matcher,
    sources: tuple[tuple[Check, ...], ...],
    operations: tuple[tuple[Check, ...], ...],
    conditions: tuple[Check, ...],
) -> bool:
    """``fn`` is the matcher of one of the checks (a rule of one check runs it directly)."""
    return any(fn is c.fn for c in (*conditions, *(c for e in (*sources, *operations) for c in e)))


_SHARED: Final = _Shared()


# -- the fast path ---------------------------------------------------------------------------


def _rule_matcher(
    sources: tuple[tuple[Check, ...], ...],
    operations: tuple[tuple[Check, ...], ...],
    conditions: tuple[Check, ...],
    indexed: bool = False,
) -> Matcher:
    """One rule's matcher (a dropped rule never gets here: ``_Shared.rule`` gives it _never).

    ``indexed``: the matcher for a rule the index has kept, without the checks the index
    has already decided: a check whose Need is exact, in a condition or in the only entry of
    ``from`` or ``to`` (the rule's keys on that dimension are then within the check's, and
    a kept rule has the request's key among them). Of several entries, any one may match:
    their checks are all run."""
    # An empty entry (``from: [{}]``) matches anything: the list is then not checked.
    if any(not entry for entry in sources):
        sources = ()
    if any(not entry for entry in operations):
        operations = ()
    if indexed:
        if len(sources) == 1:
            sources = (_undecided(sources[0]),)
        if len(operations) == 1:
            operations = (_undecided(operations[0]),)
        conditions = _undecided(conditions)
    src = tuple(tuple(c.fn for c in entry) for entry in sources)
    ops = tuple(tuple(c.fn for c in entry) for entry in operations)
    cond = tuple(c.fn for c in conditions)

    if len(ops) <= 1 and len(src) <= 1:  # the common shape: all of one flat list
        return _all((*(ops[0] if ops else ()), *(src[0] if src else ()), *cond))

    # Cheapest first: operations (method, path, host, port), then sources, then conditions.
    def match(ctx: Ctx) -> bool:
        if ops:
            for entry in ops:
                for fn in entry:
                    if not fn(ctx):
                        break
                else:
                    break
            else:
                return False
        if src:
            for entry in src:
                for fn in entry:
                    if not fn(ctx):
                        break
                else:
                    break
            else:
                return False
        for fn in cond:  # noqa: SIM110 - a generator would cost a frame per rule
            if not fn(ctx):
                return False
        return True

    return match


def _rule_needs(rule: CompiledRule) -> dict[str, frozenset[str]]:
    """What a request must have for ``rule.match`` to hold, by dimension (the index).

    Read from the same checks as ``_rule_matcher``: any ``to`` entry and any ``from`` entry
    and all conditions (an entry without checks matches anything: no need)."""
    out: dict[str, frozenset[str]] = {}
    ops = tuple(tuple(c.need for c in entry) for entry in rule.operations)
    src = tuple(tuple(c.need for c in entry) for entry in rule.sources)
    cond = tuple(c.need for c in rule.conditions)
    for dim in DIMENSIONS:
        keys: frozenset[str] | None = None
        for part in (entries_need(dim, ops), entries_need(dim, src), conditions_need(dim, cond)):
            if part is not None:
                keys = part if keys is None else keys & part
        if keys is not None:
            out[dim] = keys
    return out


def _undecided(checks: tuple[Check, ...]) -> tuple[Check, ...]:
    """The checks the index has not decided (see ``_rule_matcher``)."""
    return tuple(c for c in checks if c.need is None or not c.need.exact)


def _all(fns: tuple[Matcher, ...]) -> Matcher:
    """A rule of at most one ``from`` and one ``to`` entry: every check holds, in order.
    No frame of its own for no check or one check, no loop for two."""
    if not fns:
        return _always
    if len(fns) == 1:
        return fns[0]
    if len(fns) == 2:
        first, second = fns

        def match_both(ctx: Ctx) -> bool:
            return first(ctx) and second(ctx)

        return match_both

    def match_all(ctx: Ctx) -> bool:
        for fn in fns:  # noqa: SIM110 - a generator would cost a frame per rule
            if not fn(ctx):
                return False
        return True

    return match_all


def _always(ctx: Ctx) -> bool:
    return True
