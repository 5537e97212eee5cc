"""Parse and validate the spec of an AuthorizationPolicy document into plain, typed data.

Structure is checked strictly: an unknown field anywhere, a wrong type, an empty string value,
an unknown action, ``CUSTOM``, ``provider``, or ``selector``/``targetRef(s)`` on an ALLOW
policy (it would apply to the whole tenant) raise ``DocumentError`` naming file, line and
field. Values are not interpreted here (ports, CIDRs, keys): ``compile`` does that and applies
Istio's drop-the-rule / drop-the-value treatment to the ones it cannot use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from extauthz.documents import KIND_POLICY, Document, Path, field_name

__all__ = [
    "ACTIONS",
    "DRY_RUN_ANNOTATIONS",
    "OPERATION_FIELDS",
    "SOURCE_FIELDS",
    "ConditionSpec",
    "PolicySpec",
    "RuleSpec",
    "parse_policy",
]

ACTIONS: Final = ("ALLOW", "DENY", "AUDIT")
DRY_RUN_ANNOTATIONS: Final = ("istio.io/dry-run", "extauthz.io/dry-run")
SOURCE_FIELDS: Final = (
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "trustDomains",
    "notTrustDomains",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
)
OPERATION_FIELDS: Final = (
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
)
_SPEC_FIELDS: Final = ("selector", "targetRef", "targetRefs", "action", "rules", "provider")
_UNEVALUABLE: Final = ("selector", "targetRef", "targetRefs")
_RULE_FIELDS: Final = ("from", "to", "when")
_CONDITION_FIELDS: Final = ("key", "values", "notValues")
# Go's strconv.ParseBool, which Istio uses for the dry-run annotation.
_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})

Values = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConditionSpec:
    key: str
    values: Values
    not_values: Values


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule. ``sources``/``operations`` hold one mapping of field -> values per entry."""

    index: int
    sources: tuple[Mapping[str, Values], ...]
    operations: tuple[Mapping[str, Values], ...]
    conditions: tuple[ConditionSpec, ...]


@dataclass(frozen=True, slots=True)
class PolicySpec:
    doc: Document
    action: str
    dry_run: bool
    rules: tuple[RuleSpec, ...] | None  # None: no rules at all (matches nothing)
    warnings: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{self.doc.namespace}/{self.doc.name}"


def parse_policy(doc: Document) -> PolicySpec:
    if doc.kind != KIND_POLICY:
        raise doc.error(f"expected an {KIND_POLICY}, got {doc.kind}", ("kind",))
    spec = doc.spec
    _only(doc, spec, _SPEC_FIELDS, ("spec",))
    if "provider" in spec:
        raise doc.error(
            "provider is not supported: extauthz is the external provider itself",
            ("spec", "provider"),
        )
    action = spec.get("action", "ALLOW")
    if action == "CUSTOM":
        raise doc.error(
            "action CUSTOM is not supported: extauthz is the CUSTOM provider; "
            "use ALLOW, DENY or AUDIT",
            ("spec", "action"),
        )
    if action not in ACTIONS:
        raise doc.error(
            f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}", ("spec", "action")
        )
    if action == "ALLOW":
        for key in _UNEVALUABLE:
            if key in spec:
                raise doc.error(
                    f"{key} cannot be evaluated by an external authorizer (it does not see "
                    "workload labels or targets): on an ALLOW policy it would open the rules "
                    "to every workload of the tenant; remove it, or give the workload its own "
                    "tenant",
                    ("spec", key),
                )
    warnings = [
        f"{doc.location(('spec', key))}: spec.{key}: cannot be evaluated by an external "
        "authorizer (it does not see workload labels or targets); the policy applies to the "
        "whole tenant"
        for key in _UNEVALUABLE
        if key in spec
    ]
    rules: tuple[RuleSpec, ...] | None = None
    if "rules" in spec:
        raw = spec["rules"]
        path: Path = ("spec", "rules")
        if not isinstance(raw, list):
            raise doc.error("must be a list of rules", path)
        rules = tuple(_rule(doc, r, i) for i, r in enumerate(raw))
        if not rules:
            rules = None
    return PolicySpec(
        doc=doc,
        action=str(action),
        dry_run=_dry_run(doc),
        rules=rules,
        warnings=tuple(warnings),
    )


def _dry_run(doc: Document) -> bool:
    dry = False
    for name in DRY_RUN_ANNOTATIONS:
        value = doc.annotations.get(name)
        if value is None:
            continue
        if value in _TRUE:
            dry = True
        elif value not in _FALSE:
            raise doc.error(
                f'annotation {name} must be "true" or "false", got {value!r}',
                ("metadata", "annotations", name),
            )
    return dry


def _rule(doc: Document, raw: Any, index: int) -> RuleSpec:
    path: Path = ("spec", "rules", index)
    if not isinstance(raw, Mapping):
        raise doc.error("a rule must be a mapping (use {} for a rule that matches all)", path)
    _only(doc, raw, _RULE_FIELDS, path)
    sources = tuple(
        _entry(doc, e, (*path, "from", j), "source", SOURCE_FIELDS)
        for j, e in enumerate(_list(doc, raw, "from", path))
    )
    operations = tuple(
        _entry(doc, e, (*path, "to", j), "operation", OPERATION_FIELDS)
        for j, e in enumerate(_list(doc, raw, "to", path))
    )
    conditions = tuple(
        _condition(doc, c, (*path, "when", j)) for j, c in enumerate(_list(doc, raw, "when", path))
    )
    return RuleSpec(index, sources, operations, conditions)


def _list(doc: Document, raw: Mapping[str, Any], key: str, path: Path) -> list[Any]:
    value = raw.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise doc.error("must be a list", (*path, key))
    return value


def _entry(
    doc: Document, raw: Any, path: Path, kind: str, fields: tuple[str, ...]
) -> Mapping[str, Values]:
    if not isinstance(raw, Mapping):
        raise doc.error(f"must be a mapping with a {kind!r} field", path)
    _only(doc, raw, (kind,), path)
    body = raw.get(kind)
    if body is None:
        return {}
    path = (*path, kind)
    if not isinstance(body, Mapping):
        raise doc.error("must be a mapping", path)
    _only(doc, body, fields, path)
    return {name: _strings(doc, body[name], (*path, name)) for name in fields if name in body}


def _condition(doc: Document, raw: Any, path: Path) -> ConditionSpec:
    if not isinstance(raw, Mapping):
        raise doc.error("a condition must be a mapping with key and values/notValues", path)
    _only(doc, raw, _CONDITION_FIELDS, path)
    key = raw.get("key")
    if not isinstance(key, str) or not key:
        raise doc.error("a condition needs a non-empty string key", (*path, "key"))
    values = _strings(doc, raw.get("values", []), (*path, "values"))
    not_values = _strings(doc, raw.get("notValues", []), (*path, "notValues"))
    if not values and not not_values:
        raise doc.error(f"condition {key!r} needs values or notValues", path)
    return ConditionSpec(key, values, not_values)


def _strings(doc: Document, raw: Any, path: Path) -> Values:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise doc.error("must be a list of strings", path)
    for i, v in enumerate(raw):
        if not isinstance(v, str):
            raise doc.error(f"must be a string, got {type(v).__name__} {v!r}", (*path, i))
        if not v:
            raise doc.error("empty values are not allowed", (*path, i))
    return tuple(raw)


def _only(doc: Document, raw: Mapping[str, Any], allowed: tuple[str, ...], path: Path) -> None:
    for key in raw:
        if key not in allowed:
            where = field_name(path) or "the document"
            raise doc.error(
                f"unknown field {key!r} in {where}; expected one of {', '.join(allowed)}",
                (*path, key),
            )
