"""``explain``: the decision of ``evaluate`` with the reasons, for ``extauthz check``.

It walks the same compiled ``Check`` objects that ``evaluate``'s closures are built from, one
field at a time, and reaches its decision through the same ``decide`` function, fed with the
per-rule outcomes it traced. For a rule that does not match it names the fields that failed,
taking the ``from``/``to`` entry that came closest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from extauthz.model import Subject
from extauthz.policy.compile import Check, CompiledPolicies, CompiledRule
from extauthz.policy.engine import PolicyResult, RuleRef, decide
from extauthz.policy.matchers import Ctx

__all__ = ["Explanation", "PolicyTrace", "RuleTrace", "explain"]


@dataclass(frozen=True, slots=True)
class RuleTrace:
    policy: str
    rule: int
    matched: bool
    failed: tuple[str, ...] = ()  # fields that did not match (closest from/to entry)
    dropped: str = ""  # why the rule can never match

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "matched": self.matched}
        if self.failed:
            out["failed"] = list(self.failed)
        if self.dropped:
            out["dropped"] = self.dropped
        return out


@dataclass(frozen=True, slots=True)
class PolicyTrace:
    policy: str
    action: str
    dry_run: bool
    matched: bool
    rules: tuple[RuleTrace, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "action": self.action,
            "dry_run": self.dry_run,
            "matched": self.matched,
            "rules": [r.to_dict() for r in self.rules],
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    result: PolicyResult
    policies: tuple[PolicyTrace, ...]
    nearest: RuleTrace | None  # the closest rule that would have changed the decision

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        out: dict[str, Any] = {
            "allowed": r.allowed,
            "reason": str(r.reason),
            "policy": r.policy,
            "rule": r.rule,
            "audits": [_ref(a) for a in r.audits],
            "policies": [p.to_dict() for p in self.policies],
            "nearest": None,
        }
        if self.nearest is not None:
            out["nearest"] = {"policy": self.nearest.policy, **self.nearest.to_dict()}
        if r.shadow is not None:
            s = r.shadow
            out["shadow"] = {
                "allowed": s.allowed,
                "reason": str(s.reason),
                "policy": s.policy,
                "rule": s.rule,
                "deny_match": _ref(s.deny_match) if s.deny_match else None,
                "allow_match": _ref(s.allow_match) if s.allow_match else None,
                "audits": [_ref(a) for a in s.audits],
            }
        return out

    def render(self) -> str:
        r = self.result
        lines = [f"decision: {'ALLOW' if r.allowed else 'DENY'} ({r.reason})"]
        if r.policy:
            lines.append(f"decided by: {r.policy} rule[{r.rule}]")
        for a in r.audits:
            lines.append(f"audited by: {a.policy} rule[{a.rule}]")
        if r.shadow is not None:
            s = r.shadow
            by = f" by {s.policy} rule[{s.rule}]" if s.policy else ""
            verdict = "ALLOW" if s.allowed else "DENY"
            lines.append(f"dry-run: would be {verdict} ({s.reason}){by}")
        for p in self.policies:
            dry = ", dry-run" if p.dry_run else ""
            lines.append(f"policy {p.policy} [{p.action}{dry}]: {_yes(p.matched)}")
            if not p.rules:
                lines.append("  no rules: matches nothing")
            for t in p.rules:
                lines.append(f"  rule[{t.rule}]: {_yes(t.matched)}{_why(t)}")
        if self.nearest is not None:
            n = self.nearest
            lines.append(f"nearest: {n.policy} rule[{n.rule}]{_why(n)}")
        return "\n".join(lines)


def explain(compiled: CompiledPolicies, subject: Subject) -> Explanation:
    """``evaluate``'s decision with a trace of every policy and rule."""
    ctx = Ctx(subject, compiled.space_delimited)
    traces: dict[tuple[str, int], RuleTrace] = {}
    policies = []
    for policy in compiled.policies:
        rules = tuple(_trace(rule, ctx) for rule in policy.rules)
        traces.update(((t.policy, t.rule), t) for t in rules)
        matched = any(t.matched for t in rules)
        policies.append(PolicyTrace(policy.name, policy.action, policy.dry_run, matched, rules))
    result = decide(compiled, lambda rule: traces[(rule.policy, rule.index)].matched)
    return Explanation(result, tuple(policies), _nearest(compiled, result, traces))


def _trace(rule: CompiledRule, ctx: Ctx) -> RuleTrace:
    if rule.dropped:
        return RuleTrace(rule.policy, rule.index, False, (), rule.dropped)
    failed = [c.field for c in rule.conditions if not c.fn(ctx)]
    failed += _closest(rule.sources, ctx)
    failed += _closest(rule.operations, ctx)
    return RuleTrace(rule.policy, rule.index, not failed, tuple(failed))


def _closest(entries: tuple[tuple[Check, ...], ...], ctx: Ctx) -> list[str]:
    """No failures if any entry matches (or there are none), else the smallest failure set."""
    best: list[str] | None = None
    for entry in entries:
        failed = [c.field for c in entry if not c.fn(ctx)]
        if not failed:
            return []
        if best is None or len(failed) < len(best):
            best = failed
    return best or []


def _nearest(
    compiled: CompiledPolicies, result: PolicyResult, traces: dict[tuple[str, int], RuleTrace]
) -> RuleTrace | None:
    candidates: Sequence[CompiledRule]
    if not result.allowed and result.policy == "":
        candidates = compiled.allow  # denied for want of an ALLOW match
    elif result.allowed:
        candidates = compiled.deny  # what would have denied it
    else:
        return None
    misses = [traces[(r.policy, r.index)] for r in candidates]
    misses = [t for t in misses if not t.matched]
    return min(misses, key=lambda t: len(t.failed), default=None)


def _ref(ref: RuleRef) -> dict[str, Any]:
    return {"policy": ref.policy, "rule": ref.rule}


def _yes(matched: bool) -> str:
    return "match" if matched else "no match"


def _why(trace: RuleTrace) -> str:
    if trace.dropped:
        return f" (dropped: {trace.dropped})"
    if trace.failed:
        return f" (failed: {', '.join(trace.failed)})"
    return ""
