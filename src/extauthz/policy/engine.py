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

from extauthz.errors import Reason
from extauthz.model import Subject
from extauthz.policy.compile import CompiledPolicies, CompiledRule
from extauthz.policy.matchers import Ctx

__all__ = ["PolicyResult", "RuleRef", "ShadowResult", "decide", "evaluate"]


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


@dataclass(frozen=True, slots=True)
class PolicyResult:
    allowed: bool
    reason: Reason
    policy: str = ""  # namespace/name of the deciding policy, "" when none decided
    rule: int = -1
    audits: tuple[RuleRef, ...] = ()
    shadow: ShadowResult | None = None


def evaluate(compiled: CompiledPolicies, subject: Subject) -> PolicyResult:
    """The decision for ``subject``. Pure: no I/O, no state."""
    ctx = Ctx(subject, compiled.space_delimited)
    if compiled.has_dry_run:
        return decide(compiled, lambda rule: rule.match(ctx))
    # The common case, without the per-rule indirection ``decide`` needs for explain():
    # the same order and outcomes (a property test holds the two to each other).
    audits = _audits(compiled.audit, ctx) if compiled.audit else ()
    for rule in compiled.deny:
        if rule.match(ctx):
            return PolicyResult(False, Reason.POLICY_DENIED, rule.policy, rule.index, audits)
    if not compiled.has_allow:
        return PolicyResult(True, Reason.ALLOWED, audits=audits) if audits else _ALLOWED
    for rule in compiled.allow:
        if rule.match(ctx):
            return PolicyResult(True, Reason.ALLOWED, rule.policy, rule.index, audits)
    return PolicyResult(False, Reason.NO_ALLOW_MATCH, audits=audits) if audits else _NO_ALLOW_MATCH


def _audits(rules: tuple[CompiledRule, ...], ctx: Ctx) -> tuple[RuleRef, ...]:
    return tuple(RuleRef(r.policy, r.index) for r in rules if r.match(ctx))


_ALLOWED = PolicyResult(True, Reason.ALLOWED)
_NO_ALLOW_MATCH = PolicyResult(False, Reason.NO_ALLOW_MATCH)


def decide(compiled: CompiledPolicies, matches: Callable[[CompiledRule], bool]) -> PolicyResult:
    """Combine rule matches into a decision; ``matches`` says whether one rule matches."""
    deny = _first(compiled.deny, matches)
    allow: CompiledRule | None = None
    decision: tuple[bool, Reason, CompiledRule | None]
    if deny is not None:
        decision = (False, Reason.POLICY_DENIED, deny)
    elif not compiled.has_allow:
        decision = (True, Reason.ALLOWED, None)
    else:
        allow = _first(compiled.allow, matches)
        decision = (True, Reason.ALLOWED, allow) if allow else (False, Reason.NO_ALLOW_MATCH, None)
    audits = _all(compiled.audit, matches) if compiled.audit else ()
    shadow = _shadow(compiled, matches, deny, allow) if compiled.has_dry_run else None
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
    matches: Callable[[CompiledRule], bool],
    deny: CompiledRule | None,
    allow: CompiledRule | None,
) -> ShadowResult:
    dry_deny = _first(compiled.dry_deny, matches)
    dry_allow = _first(compiled.dry_allow, matches)
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
        audits=_all(compiled.dry_audit, matches),
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
