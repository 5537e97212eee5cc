"""``evaluate``: the decision for one request, a pure function of compiled policies and subject.

Istio's order, as Envoy runs the filters Istio generates (AUDIT, DENY, ALLOW):

1. an enforced DENY rule matches -> denied (``policy_denied``);
2. no enforced ALLOW policy -> allowed;
3. an enforced ALLOW rule matches -> allowed; otherwise denied (``no_allow_match``).

Within an action the deciding rule is the first match in Envoy's order (the generated policy
name, ``ns[..]-policy[..]-rule[..]``), the one Envoy reports as the effective policy. AUDIT rules
never decide; every match is listed. Dry-run policies are evaluated in the shadow only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple

from extauthz.errors import Reason
from extauthz.model import Subject, described, fields_hash, same_fields
from extauthz.policy.compile import ALLOW, AUDIT, DENY, GROUPS, CompiledPolicies, CompiledRule
from extauthz.policy.matchers import Ctx

__all__ = ["PolicyResult", "RuleLists", "RuleRef", "ShadowResult", "decide", "evaluate"]


@dataclass(frozen=True, slots=True)
class RuleRef:
    policy: str  # namespace/name
    rule: int


@dataclass(frozen=True, slots=True)
class ShadowResult:
    """What the dry-run policies would do.

    ``allowed``/``reason``/``policy``/``rule``: the decision if the dry-run policies were
    enforced alongside the others. ``deny_match`` and ``allow_match`` are Envoy's two shadow
    engines (stat prefixes ``istio_dry_run_deny_`` and ``istio_dry_run_allow_``): the first
    dry-run DENY / ALLOW rule that matched, each judged on its own. ``allow_match`` is only
    evaluated when the request passed the enforced DENY rules, as in Envoy, where the ALLOW
    filter never sees a request the DENY filter rejected.
    """

    allowed: bool
    reason: Reason
    policy: str
    rule: int
    deny_match: RuleRef | None
    allow_match: RuleRef | None
    audits: tuple[RuleRef, ...]


_RESULT_FIELDS: Final = ("allowed", "reason", "policy", "rule", "audits", "shadow")


class PolicyResult:
    """The decision of ``evaluate``. Immutable by convention, compared by value. A plain
    class: in the compiled build a native one, built without a Python-level call (a
    NamedTuple's constructor is one, on every Check)."""

    __slots__ = _RESULT_FIELDS

    def __init__(
        self,
        allowed: bool,
        reason: Reason,
        policy: str = "",  # namespace/name of the deciding policy, "" when none decided
        rule: int = -1,
        audits: tuple[RuleRef, ...] = (),
        shadow: ShadowResult | None = None,
    ) -> None:
        self.allowed: Final = allowed
        self.reason: Final = reason
        self.policy: Final = policy
        self.rule: Final = rule
        self.audits: Final = audits
        self.shadow: Final = shadow

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PolicyResult):
            return NotImplemented
        return same_fields(self, other, _RESULT_FIELDS)

    def __hash__(self) -> int:
        return fields_hash(self, _RESULT_FIELDS)

    def __repr__(self) -> str:
        return described(self, _RESULT_FIELDS)


def evaluate(compiled: CompiledPolicies, subject: Subject) -> PolicyResult:
    """The decision for ``subject``. Pure: no I/O, no state.

    Only the rules the index leaves (``RuleIndex.candidates``) are run, in their order, and
    only the checks the index has not decided (``CompiledRule.run``): a rule left out cannot
    match, so the decision, the deciding rule and the audits are those of running every rule
    (``decide`` over all of them; tests/test_policy_index.py holds the two together).
    """
    ctx = Ctx(subject, compiled.space_delimited)
    index = compiled.index
    bits = index.candidates(ctx)
    if compiled.has_dry_run:
        lists = RuleLists(*(index.select(bits, group) for group in range(len(GROUPS))))
        return decide(compiled, lambda rule: rule.run(ctx), lists)
    # The common case, without the per-rule indirection ``decide`` needs for explain():
    # the same order and outcomes.
    rules = index.rules
    masks = index.masks
    audit = bits & masks[AUDIT]
    audits = _audits(rules, audit, ctx) if audit else ()
    deny = bits & masks[DENY]
    while deny:
        low = deny & -deny
        rule = rules[low.bit_length() - 1]
        if rule.run(ctx):
            return PolicyResult(False, Reason.POLICY_DENIED, rule.policy, rule.index, audits)
        deny ^= low
    if not compiled.has_allow:
        return PolicyResult(True, Reason.ALLOWED, audits=audits) if audits else _ALLOWED
    allow = bits & masks[ALLOW]
    while allow:
        low = allow & -allow
        rule = rules[low.bit_length() - 1]
        if rule.run(ctx):
            return PolicyResult(True, Reason.ALLOWED, rule.policy, rule.index, audits)
        allow ^= low
    return PolicyResult(False, Reason.NO_ALLOW_MATCH, audits=audits) if audits else _NO_ALLOW_MATCH


def _audits(rules: tuple[CompiledRule, ...], bits: int, ctx: Ctx) -> tuple[RuleRef, ...]:
    out: list[RuleRef] = []
    while bits:
        low = bits & -bits
        rule = rules[low.bit_length() - 1]
        if rule.run(ctx):
            out.append(RuleRef(rule.policy, rule.index))
        bits ^= low
    return tuple(out)


_ALLOWED = PolicyResult(True, Reason.ALLOWED)
_NO_ALLOW_MATCH = PolicyResult(False, Reason.NO_ALLOW_MATCH)


class RuleLists(NamedTuple):
    """The rule lists ``decide`` runs, in the order of ``GROUPS``: a tenant's, or the
    candidates among them."""

    deny: tuple[CompiledRule, ...]
    allow: tuple[CompiledRule, ...]
    audit: tuple[CompiledRule, ...]
    dry_deny: tuple[CompiledRule, ...]
    dry_allow: tuple[CompiledRule, ...]
    dry_audit: tuple[CompiledRule, ...]


def decide(
    compiled: CompiledPolicies,
    matches: Callable[[CompiledRule], bool],
    lists: RuleLists | None = None,
) -> PolicyResult:
    """Combine rule matches into a decision; ``matches`` says whether one rule matches.

    ``lists``: the rules to run (all of ``compiled``'s when None); a rule left out must be
    one that does not match."""
    if lists is None:
        lists = RuleLists(
            compiled.deny,
            compiled.allow,
            compiled.audit,
            compiled.dry_deny,
            compiled.dry_allow,
            compiled.dry_audit,
        )
    deny = _first(lists.deny, matches)
    allow: CompiledRule | None = None
    decision: tuple[bool, Reason, CompiledRule | None]
    if deny is not None:
        decision = (False, Reason.POLICY_DENIED, deny)
    elif not compiled.has_allow:
        decision = (True, Reason.ALLOWED, None)
    else:
        allow = _first(lists.allow, matches)
        decision = (True, Reason.ALLOWED, allow) if allow else (False, Reason.NO_ALLOW_MATCH, None)
    audits = _all(lists.audit, matches) if lists.audit else ()
    shadow = _shadow(compiled, lists, matches, deny, allow) if compiled.has_dry_run else None
    allowed, reason, rule = decision
    return PolicyResult(
        allowed=allowed,
        reason=reason,
        policy=rule.policy if rule else "",
        rule=rule.index if rule else -1,
        audits=audits,
        shadow=shadow,
    )


def _shadow(
    compiled: CompiledPolicies,
    lists: RuleLists,
    matches: Callable[[CompiledRule], bool],
    deny: CompiledRule | None,
    allow: CompiledRule | None,
) -> ShadowResult:
    dry_deny = _first(lists.dry_deny, matches)
    dry_allow = _first(lists.dry_allow, matches)
    would_deny = _earliest(deny, dry_deny)
    if would_deny is not None:
        allowed, reason, rule = False, Reason.POLICY_DENIED, would_deny
    elif not (compiled.has_allow or compiled.has_dry_allow):
        allowed, reason, rule = True, Reason.ALLOWED, None
    else:
        rule = _earliest(allow, dry_allow)
        allowed = rule is not None
        reason = Reason.ALLOWED if allowed else Reason.NO_ALLOW_MATCH
    return ShadowResult(
        allowed=allowed,
        reason=reason,
        policy=rule.policy if rule else "",
        rule=rule.index if rule else -1,
        deny_match=_ref(dry_deny),
        allow_match=_ref(dry_allow) if deny is None else None,
        audits=_all(lists.dry_audit, matches),
    )


def _first(
    rules: tuple[CompiledRule, ...], matches: Callable[[CompiledRule], bool]
) -> CompiledRule | None:
    for rule in rules:
        if matches(rule):
            return rule
    return None


def _all(
    rules: Iterable[CompiledRule], matches: Callable[[CompiledRule], bool]
) -> tuple[RuleRef, ...]:
    return tuple(RuleRef(r.policy, r.index) for r in rules if matches(r))


def _earliest(a: CompiledRule | None, b: CompiledRule | None) -> CompiledRule | None:
    if a is None or b is None:
        return a or b
    return a if a.envoy_id <= b.envoy_id else b


def _ref(rule: CompiledRule | None) -> RuleRef | None:
    return RuleRef(rule.policy, rule.index) if rule else None
