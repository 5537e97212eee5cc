"""The policy engine field by field: each Istio field and its notX, a match and a near miss,
missing attributes, combining, AUDIT, dry-run, warnings and compile errors."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import pytest
import yaml

from extauthz.documents import load_documents
from extauthz.errors import DocumentError, Reason
from extauthz.model import Subject
from extauthz.policy import (
    CompiledPolicies,
    RuleRef,
    compile_policies,
    evaluate,
    explain,
)
from extauthz.policy.matchers import compile_regex

ip = ipaddress.ip_address


def doc(spec: dict[str, Any], name: str = "p", annotations: dict[str, str] | None = None) -> str:
    meta: dict[str, Any] = {"name": name, "namespace": "acme"}
    if annotations:
        meta["annotations"] = annotations
    body = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": meta,
        "spec": spec,
    }
    return yaml.safe_dump(body, sort_keys=False)


def build(*texts: str, **kwargs: Any) -> CompiledPolicies:
    docs = [d for i, t in enumerate(texts) for d in load_documents(t, f"p{i}.yaml")]
    return compile_policies(docs, **kwargs)


def allow_rule(rule: dict[str, Any], **kwargs: Any) -> CompiledPolicies:
    return build(doc({"rules": [rule]}), **kwargs)


def src(**fields: Any) -> dict[str, Any]:
    return {"from": [{"source": fields}]}


def op(**fields: Any) -> dict[str, Any]:
    return {"to": [{"operation": fields}]}


def when(key: str, values: list[str] | None = None, not_values: list[str] | None = None) -> dict:
    cond: dict[str, Any] = {"key": key}
    if values is not None:
        cond["values"] = values
    if not_values is not None:
        cond["notValues"] = not_values
    return {"when": [cond]}


P = "spiffe://cluster.local/ns/a/sa/b"
CLAIMS = {"iss": "https://iss.example", "sub": "user-1", "aud": ["api", "web"], "azp": "cli"}

# (id, rule, matching subject fields, near-miss subject fields)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    (
        "principals exact",
        src(principals=["cluster.local/ns/a/sa/b"]),
        {"principal": P},
        {"principal": P + "b"},
    ),
    ("principals missing", src(principals=["cluster.local/ns/a/sa/b"]), {"principal": P}, {}),
    (
        "principals prefix",
        src(principals=["cluster.local/ns/a/*"]),
        {"principal": "spiffe://cluster.local/ns/a/sa/x"},
        {"principal": "spiffe://cluster.local/ns/b/sa/x"},
    ),
    (
        "principals suffix",
        src(principals=["*/sa/b"]),
        {"principal": "spiffe://x/ns/y/sa/b"},
        {"principal": "spiffe://x/ns/y/sa/bc"},
    ),
    ("principals any", src(principals=["*"]), {"principal": P}, {}),
    (
        "notPrincipals",
        src(notPrincipals=["cluster.local/ns/a/sa/b"]),
        {"principal": "spiffe://cluster.local/ns/a/sa/c"},
        {"principal": P},
    ),
    ("notPrincipals missing", src(notPrincipals=["*"]), {}, {"principal": P}),
    (
        "namespaces",
        src(namespaces=["a"]),
        {"principal": P},
        {"principal": "spiffe://cluster.local/ns/ab/sa/b"},
    ),
    (
        "namespaces prefix",
        src(namespaces=["a*"]),
        {"principal": "spiffe://td/ns/abc/sa/b"},
        {"principal": "spiffe://td/ns/ba/sa/b"},
    ),
    (
        "namespaces suffix",
        src(namespaces=["*-prod"]),
        {"principal": "spiffe://td/ns/x-prod/sa/b"},
        {"principal": "spiffe://td/ns/x-prod2/sa/b"},
    ),
    ("namespaces missing", src(namespaces=["*"]), {"principal": P}, {}),
    (
        "notNamespaces",
        src(notNamespaces=["a"]),
        {"principal": "spiffe://td/ns/b/sa/b"},
        {"principal": P},
    ),
    (
        "serviceAccounts ns/sa",
        src(serviceAccounts=["a/b"]),
        {"principal": P},
        {"principal": P + "c"},
    ),
    (
        "serviceAccounts bare sa uses the policy namespace",
        src(serviceAccounts=["b"]),
        {"principal": "spiffe://td/ns/acme/sa/b"},
        {"principal": P},
    ),
    ("notServiceAccounts", src(notServiceAccounts=["a/b"]), {}, {"principal": P}),
    (
        "trustDomains",
        src(trustDomains=["cluster.local"]),
        {"principal": P},
        {"principal": "spiffe://cluster.localx/ns/a/sa/b"},
    ),
    (
        "trustDomains prefix",
        src(trustDomains=["bad*"]),
        {"principal": "spiffe://bad-td/ns/a/sa/b"},
        {"principal": "spiffe://good/ns/bad/sa/b"},
    ),
    (
        "notTrustDomains",
        src(notTrustDomains=["evil"]),
        {"principal": P},
        {"principal": "spiffe://evil/ns/a/sa/b"},
    ),
    (
        "requestPrincipals exact",
        src(requestPrincipals=["https://iss.example/user-1"]),
        {"claims": CLAIMS},
        {"claims": {**CLAIMS, "sub": "user-2"}},
    ),
    ("requestPrincipals missing token", src(requestPrincipals=["*"]), {"claims": CLAIMS}, {}),
    (
        "requestPrincipals issuer prefix",
        src(requestPrincipals=["https://iss.example/*"]),
        {"claims": CLAIMS},
        {"claims": {**CLAIMS, "iss": "https://other"}},
    ),
    (
        "requestPrincipals suffix without slash",
        src(requestPrincipals=["*-1"]),
        {"claims": CLAIMS},
        {"claims": {**CLAIMS, "sub": "user-2"}},
    ),
    (
        "requestPrincipals without slash needs an empty sub",
        src(requestPrincipals=["iss"]),
        {"claims": {"iss": "iss", "sub": ""}},
        {"claims": {"iss": "iss"}},
    ),
    ("notRequestPrincipals", src(notRequestPrincipals=["*"]), {}, {"claims": CLAIMS}),
    (
        "ipBlocks cidr",
        src(ipBlocks=["10.0.0.0/8"]),
        {"source_ip": ip("10.1.2.3")},
        {"source_ip": ip("11.0.0.1")},
    ),
    ("ipBlocks missing", src(ipBlocks=["10.0.0.0/8"]), {"source_ip": ip("10.0.0.1")}, {}),
    (
        "ipBlocks single ip",
        src(ipBlocks=["1.2.3.4"]),
        {"source_ip": ip("1.2.3.4")},
        {"source_ip": ip("1.2.3.5")},
    ),
    (
        "ipBlocks ipv6",
        src(ipBlocks=["2001:db8::/32"]),
        {"source_ip": ip("2001:db8::1")},
        {"source_ip": ip("2001:db9::1")},
    ),
    (
        "notIpBlocks",
        src(notIpBlocks=["10.0.0.0/8"]),
        {"source_ip": ip("11.0.0.1")},
        {"source_ip": ip("10.0.0.1")},
    ),
    (
        "remoteIpBlocks",
        src(remoteIpBlocks=["192.168.0.0/16"]),
        {"remote_ip": ip("192.168.1.1")},
        {"source_ip": ip("192.168.1.1")},
    ),
    (
        "notRemoteIpBlocks",
        src(notRemoteIpBlocks=["192.168.0.0/16"]),
        {},
        {"remote_ip": ip("192.168.1.1")},
    ),
    (
        "hosts case-insensitive",
        op(hosts=["Example.com"]),
        {"host": "example.COM"},
        {"host": "example.com:8080"},
    ),
    (
        "hosts suffix",
        op(hosts=["*.example.com"]),
        {"host": "api.example.com"},
        {"host": "example.com"},
    ),
    ("hosts prefix", op(hosts=["api.*"]), {"host": "API.x"}, {"host": "apix"}),
    ("hosts any", op(hosts=["*"]), {"host": "a"}, {}),
    ("notHosts", op(notHosts=["admin.*"]), {"host": "www.x"}, {"host": "admin.x"}),
    ("ports", op(ports=["8080"]), {"destination_port": 8080}, {"destination_port": 80}),
    ("ports missing", op(ports=["8080"]), {"destination_port": 8080}, {}),
    ("notPorts", op(notPorts=["22"]), {"destination_port": 80}, {"destination_port": 22}),
    ("methods case-sensitive", op(methods=["GET"]), {"method": "GET"}, {"method": "get"}),
    ("notMethods", op(notMethods=["DELETE"]), {"method": "GET"}, {"method": "DELETE"}),
    ("paths exact", op(paths=["/a"]), {"path": "/a"}, {"path": "/a/"}),
    ("paths prefix", op(paths=["/api/*"]), {"path": "/api/x"}, {"path": "/api"}),
    ("paths suffix", op(paths=["*.png"]), {"path": "/x.png"}, {"path": "/x.png2"}),
    ("paths any", op(paths=["*"]), {"path": "/"}, {}),
    (
        "paths one-segment template",
        op(paths=["/a/{*}/c"]),
        {"path": "/a/b/c"},
        {"path": "/a/b/b/c"},
    ),
    ("paths tail template", op(paths=["/a/{**}"]), {"path": "/a/b/c/d"}, {"path": "/b/a"}),
    ("paths leading text glob", op(paths=["/{**}/edit"]), {"path": "/x/y/edit"}, {"path": "/edit"}),
    ("notPaths", op(notPaths=["/admin/*"]), {"path": "/x"}, {"path": "/admin/x"}),
    (
        "header",
        when("request.headers[X-Env]", ["prod"]),
        {"headers": {"x-env": "prod"}},
        {"headers": {"x-env": "Prod"}},
    ),
    (
        "header present even empty",
        when("request.headers[X-Env]", ["*"]),
        {"headers": {"x-env": ""}},
        {},
    ),
    (
        "header notValues missing",
        when("request.headers[X-Env]", not_values=["prod"]),
        {},
        {"headers": {"x-env": "prod"}},
    ),
    (
        "source.ip",
        when("source.ip", ["10.0.0.0/8"]),
        {"source_ip": ip("10.0.0.1")},
        {"remote_ip": ip("10.0.0.1")},
    ),
    (
        "remote.ip",
        when("remote.ip", ["10.0.0.1"]),
        {"remote_ip": ip("10.0.0.1")},
        {"remote_ip": ip("10.0.0.2")},
    ),
    (
        "destination.ip",
        when("destination.ip", ["10.0.0.0/24"]),
        {"destination_ip": ip("10.0.0.9")},
        {"destination_ip": ip("10.0.1.9")},
    ),
    (
        "destination.port",
        when("destination.port", ["443"]),
        {"destination_port": 443},
        {"destination_port": 444},
    ),
    (
        "connection.sni",
        when("connection.sni", ["*.example.com"]),
        {"sni": "a.example.com"},
        {"sni": "example.com"},
    ),
    ("connection.sni missing", when("connection.sni", ["*"]), {"sni": "a"}, {}),
    (
        "source.namespace",
        when("source.namespace", ["a"]),
        {"principal": P},
        {"principal": "spiffe://td/ns/b/sa/a"},
    ),
    (
        "source.principal",
        when("source.principal", ["cluster.local/ns/a/sa/b"]),
        {"principal": P},
        {"principal": "spiffe://other/ns/a/sa/b"},
    ),
    ("source.serviceAccount", when("source.serviceAccount", ["a/b"]), {"principal": P}, {}),
    (
        "request.auth.principal",
        when("request.auth.principal", ["https://iss.example/user-1"]),
        {"claims": CLAIMS},
        {"claims": {**CLAIMS, "iss": "x"}},
    ),
    (
        "audiences list",
        when("request.auth.audiences", ["web"]),
        {"claims": CLAIMS},
        {"claims": {**CLAIMS, "aud": ["api"]}},
    ),
    (
        "audiences string",
        when("request.auth.audiences", ["api"]),
        {"claims": {"aud": "api"}},
        {"claims": {"aud": "apix"}},
    ),
    (
        "presenter",
        when("request.auth.presenter", ["cli"]),
        {"claims": CLAIMS},
        {"claims": {**CLAIMS, "azp": "web"}},
    ),
    (
        "claim",
        when("request.auth.claims[group]", ["admin"]),
        {"claims": {"group": "admin"}},
        {"claims": {"group": "admins"}},
    ),
    (
        "claim list",
        when("request.auth.claims[groups]", ["admin"]),
        {"claims": {"groups": ["dev", "admin"]}},
        {"claims": {"groups": ["dev"]}},
    ),
    (
        "claim nested",
        when("request.auth.claims[a][b]", ["x*"]),
        {"claims": {"a": {"b": "xy"}}},
        {"claims": {"a": "xy"}},
    ),
    (
        "claim number never matches",
        when("request.auth.claims[level]", ["*"]),
        {"claims": {"level": "3"}},
        {"claims": {"level": 3}},
    ),
    (
        "claim boolean never matches",
        when("request.auth.claims[admin]", ["true"]),
        {"claims": {"admin": "true"}},
        {"claims": {"admin": True}},
    ),
    (
        "scope is space-delimited",
        when("request.auth.claims[scope]", ["write"]),
        {"claims": {"scope": "read write"}},
        {"claims": {"scope": "readwrite"}},
    ),
    (
        "claim notValues missing token",
        when("request.auth.claims[g]", not_values=["x"]),
        {},
        {"claims": {"g": ["x"]}},
    ),
    (
        "envoy filter metadata: notValues hold",
        when("experimental.envoy.filters.a.b[c]", not_values=["x"]),
        {},
        {"principal": None},
    ),
]
CASES = [c for c in CASES if c[0] != "envoy filter metadata: notValues hold"] + [
    (
        "envoy filter metadata never matches",
        {**when("experimental.envoy.filters.a.b[c]", not_values=["x"]), **src(principals=["*"])},
        {"principal": P},
        {},
    ),
]


@pytest.mark.parametrize(("rule", "hit", "miss"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_field_matches_and_near_miss(rule: dict[str, Any], hit: dict, miss: dict) -> None:
    """An ALLOW rule with one field allows the matching request and denies its near miss."""
    compiled = allow_rule(rule)
    assert evaluate(compiled, Subject(**hit)).allowed
    result = evaluate(compiled, Subject(**miss))
    assert not result.allowed
    assert result.reason is Reason.NO_ALLOW_MATCH


def test_experimental_values_never_match() -> None:
    """experimental.envoy.filters.* values never match in an ALLOW, and a warning says so."""
    compiled = allow_rule(when("experimental.envoy.filters.a.b[c]", ["*"]))
    assert not evaluate(compiled, Subject(principal=P)).allowed
    assert any("ALLOW rule never matches" in w for w in compiled.warnings)


def test_extra_space_delimited_claims() -> None:
    """Claims named in spaceDelimitedClaims are split at spaces like scope."""
    rule = when("request.auth.claims[roles]", ["admin"])
    subject = Subject(claims={"roles": "dev admin"})
    assert not evaluate(allow_rule(rule), subject).allowed
    assert evaluate(allow_rule(rule, space_delimited_claims=["roles"]), subject).allowed


def test_trust_domain_aliases_expand_principals() -> None:
    """With trust domains, a principal matches the same workload in every alias."""
    rule = src(principals=["cluster.local/ns/a/sa/b"])
    compiled = allow_rule(rule, trust_domains=["td1", "old-td"])
    assert evaluate(compiled, Subject(principal="spiffe://old-td/ns/a/sa/b")).allowed
    assert evaluate(compiled, Subject(principal="spiffe://td1/ns/a/sa/b")).allowed
    assert not evaluate(compiled, Subject(principal="spiffe://other/ns/a/sa/b")).allowed


def test_no_trust_domains_no_aliasing() -> None:
    """Without trust domains a principal matches only the trust domain it names."""
    compiled = allow_rule(src(principals=["td1/ns/a/sa/b"]))
    assert evaluate(compiled, Subject(principal="spiffe://td1/ns/a/sa/b")).allowed
    assert not evaluate(compiled, Subject(principal="spiffe://cluster.local/ns/a/sa/b")).allowed


# -- combining ---------------------------------------------------------------------------------


def test_no_policies_allow() -> None:
    """A tenant without policies allows."""
    result = evaluate(build(), Subject())
    assert result.allowed
    assert result.reason is Reason.ALLOWED


def test_deny_wins_over_allow() -> None:
    """A matching DENY policy denies even when an ALLOW policy matches, and is named."""
    compiled = build(
        doc({"action": "DENY", "rules": [op(methods=["DELETE"])]}, "no-delete"),
        doc({"rules": [{}]}, "all"),
    )
    result = evaluate(compiled, Subject(method="DELETE"))
    assert (result.allowed, result.reason, result.policy, result.rule) == (
        False,
        Reason.POLICY_DENIED,
        "acme/no-delete",
        0,
    )
    assert evaluate(compiled, Subject(method="GET")).allowed


def test_only_deny_policies_allow_the_rest() -> None:
    """With only DENY policies, a request they do not match is allowed."""
    compiled = build(doc({"action": "DENY", "rules": [op(methods=["DELETE"])]}))
    assert not compiled.has_allow
    assert evaluate(compiled, Subject(method="GET")).allowed


def test_empty_spec_denies_all() -> None:
    """spec: {} is an ALLOW policy with no rules: it matches nothing, so all is denied."""
    compiled = build(doc({}))
    assert compiled.has_allow
    result = evaluate(compiled, Subject(method="GET", principal=P))
    assert (result.allowed, result.reason) == (False, Reason.NO_ALLOW_MATCH)


def test_empty_rule_allows_all() -> None:
    """rules: [{}] matches every request."""
    result = evaluate(build(doc({"rules": [{}]})), Subject())
    assert (result.allowed, result.policy, result.rule) == (True, "acme/p", 0)


def test_empty_from_list_is_not_checked() -> None:
    """from: [] (and an entry without source) constrain nothing, as in Istio."""
    assert evaluate(allow_rule({"from": []}), Subject()).allowed
    assert evaluate(allow_rule({"from": [{}], "to": [{"operation": {}}]}), Subject()).allowed


def test_any_from_entry_and_all_conditions() -> None:
    """A rule needs any from entry, any to entry and every when condition."""
    rule = {
        "from": [{"source": {"principals": ["x"]}}, {"source": {"namespaces": ["a"]}}],
        "to": [{"operation": {"methods": ["PUT"]}}, {"operation": {"methods": ["GET"]}}],
        "when": [
            {"key": "request.headers[a]", "values": ["1"]},
            {"key": "request.headers[b]", "values": ["2"]},
        ],
    }
    compiled = allow_rule(rule)
    ok = Subject(principal=P, method="GET", headers={"a": "1", "b": "2"})
    assert evaluate(compiled, ok).allowed
    assert not evaluate(compiled, Subject(principal=P, method="GET", headers={"a": "1"})).allowed


def test_deciding_rule_in_envoy_order() -> None:
    """Among several matching rules, the deciding one is Envoy's first (by policy name)."""
    rules: list[dict[str, Any]] = [{} for _ in range(11)]
    compiled = build(doc({"rules": rules}, "b"), doc({"rules": [{}]}, "b-x"))
    result = evaluate(compiled, Subject())
    # Envoy sorts "ns[acme]-policy[b-x]-rule[0]" < "ns[acme]-policy[b]-rule[0]" and
    # "rule[10]" < "rule[1]".
    assert (result.policy, result.rule) == ("acme/b-x", 0)
    assert (evaluate(build(doc({"rules": rules}, "b")), Subject()).rule) == 0
    compiled = build(doc({"rules": [op(methods=["X"]), *rules[:10]]}, "b"))
    assert evaluate(compiled, Subject(method="GET")).rule == 10


def test_audit_never_decides_and_is_reported() -> None:
    """AUDIT matches are listed; they never change the decision."""
    compiled = build(
        doc({"action": "AUDIT", "rules": [op(methods=["GET"]), {}]}, "audit"),
        doc({"action": "DENY", "rules": [op(methods=["GET"])]}, "deny"),
    )
    result = evaluate(compiled, Subject(method="GET"))
    assert not result.allowed
    assert result.audits == (RuleRef("acme/audit", 0), RuleRef("acme/audit", 1))
    assert evaluate(compiled, Subject(method="PUT")).allowed
    assert build(doc({"action": "AUDIT"})).has_allow is False


# -- dry-run -----------------------------------------------------------------------------------


@pytest.mark.parametrize("annotation", ["istio.io/dry-run", "extauthz.io/dry-run"])
def test_dry_run_deny_only_in_shadow(annotation: str) -> None:
    """A dry-run DENY policy never denies; the shadow says it would have."""
    compiled = build(
        doc({"action": "DENY", "rules": [op(methods=["GET"])]}, "d", {annotation: "true"})
    )
    result = evaluate(compiled, Subject(method="GET"))
    assert result.allowed
    assert result.shadow is not None
    assert (result.shadow.allowed, result.shadow.policy, result.shadow.reason) == (
        False,
        "acme/d",
        Reason.POLICY_DENIED,
    )
    assert result.shadow.deny_match == RuleRef("acme/d", 0)


def test_dry_run_allow_does_not_make_the_tenant_deny_by_default() -> None:
    """Only dry-run ALLOW policies: the request is allowed; the shadow would deny a miss."""
    compiled = build(doc({"rules": [op(methods=["GET"])]}, "a", {"istio.io/dry-run": "true"}))
    assert not compiled.has_allow
    result = evaluate(compiled, Subject(method="PUT"))
    assert result.allowed
    assert result.shadow is not None
    assert (result.shadow.allowed, result.shadow.reason) == (False, Reason.NO_ALLOW_MATCH)
    assert result.shadow.allow_match is None
    hit = evaluate(compiled, Subject(method="GET")).shadow
    assert hit is not None
    assert hit.allow_match == RuleRef("acme/a", 0)


def test_dry_run_false_is_enforced() -> None:
    """istio.io/dry-run: "false" is an ordinary policy; no shadow is reported."""
    compiled = build(doc({"rules": [op(methods=["GET"])]}, "a", {"istio.io/dry-run": "false"}))
    result = evaluate(compiled, Subject(method="PUT"))
    assert not result.allowed
    assert result.shadow is None


def test_shadow_allow_engine_not_reached_after_enforced_deny() -> None:
    """As in Envoy, the ALLOW filter's shadow engine never sees a request DENY rejected."""
    compiled = build(
        doc({"action": "DENY", "rules": [{}]}, "d"),
        doc({"rules": [{}]}, "a", {"istio.io/dry-run": "true"}),
    )
    result = evaluate(compiled, Subject())
    assert result.shadow is not None
    assert result.shadow.allow_match is None
    assert (result.shadow.allowed, result.shadow.policy) == (False, "acme/d")


# -- warnings, drops and errors ------------------------------------------------------------


def test_selector_on_deny_is_a_warning_and_applies_to_the_tenant() -> None:
    """DENY selector is not evaluable: a warning with file:line and field; it denies tenant-wide."""
    spec = {"selector": {"matchLabels": {"app": "x"}}, "action": "DENY"}
    compiled = build(doc({**spec, "rules": [op(methods=["PUT"])]}))
    assert len(compiled.warnings) == 1
    assert compiled.warnings[0].startswith("p0.yaml:7: spec.selector:")
    assert not evaluate(compiled, Subject(method="PUT")).allowed
    audit = doc({"targetRefs": [], "action": "AUDIT"})
    assert any("spec.targetRefs" in w for w in build(audit).warnings)


@pytest.mark.parametrize(
    "key", ["selector", "targetRef", "targetRefs"]
)  # fmt: skip
def test_selector_or_target_on_allow_is_refused(key: str) -> None:
    """An ALLOW scoped to one workload would open it to the whole tenant: refused, with field."""
    with pytest.raises(DocumentError) as info:
        build(doc({key: {"matchLabels": {"app": "x"}}, "action": "ALLOW", "rules": [{}]}))
    assert f"spec.{key}:" in str(info.value)
    assert str(info.value).startswith("p0.yaml:")


def test_invalid_port_in_allow_drops_the_rule() -> None:
    """ALLOW: an invalid port drops its rule (it never matches), with a warning."""
    compiled = build(doc({"rules": [op(ports=["80", "http"]), op(methods=["PUT"])]}))
    assert not evaluate(compiled, Subject(destination_port=80)).allowed
    assert evaluate(compiled, Subject(method="PUT")).allowed
    assert any("spec.rules[0].to[0].operation.ports[1]" in w for w in compiled.warnings)


def test_invalid_cidr_in_deny_drops_only_the_value() -> None:
    """DENY: an invalid CIDR is dropped; the other values still deny."""
    compiled = build(doc({"action": "DENY", "rules": [src(ipBlocks=["10.0.0.0/33", "1.2.3.4"])]}))
    assert not evaluate(compiled, Subject(source_ip=ip("1.2.3.4"))).allowed
    assert evaluate(compiled, Subject(source_ip=ip("10.0.0.1"))).allowed
    assert "spec.rules[0].from[0].source.ipBlocks[0]" in compiled.warnings[0]


def test_deny_with_only_invalid_values_matches_wider() -> None:
    """DENY: when every value of a field is invalid, the field no longer restricts the rule."""
    compiled = build(doc({"action": "DENY", "rules": [{**op(ports=["x"], methods=["GET"])}]}))
    assert not evaluate(compiled, Subject(method="GET", destination_port=1)).allowed


def test_unknown_condition_key() -> None:
    """Unknown when key: ALLOW drops the rule; DENY drops only the condition."""
    rule = {**when("request.bogus", ["x"]), **op(methods=["GET"])}
    allow = build(doc({"rules": [rule]}))
    assert not evaluate(allow, Subject(method="GET")).allowed
    deny = build(doc({"action": "DENY", "rules": [rule]}))
    assert not evaluate(deny, Subject(method="GET")).allowed
    assert evaluate(deny, Subject(method="PUT")).allowed
    assert "spec.rules[0].when[0].key" in deny.warnings[0]


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"action": "CUSTOM"}, "spec.action", "CUSTOM"),
        ({"action": "allow"}, "spec.action", "unknown action"),
        ({"provider": {"name": "x"}}, "spec.provider", "provider"),
        (
            {"rules": [{"to": [{"operation": {"method": ["GET"]}}]}]},
            "spec.rules[0].to[0].operation.method",
            "unknown field 'method'",
        ),
        (
            {"rules": [{"from": [{"source": {"principals": "a"}}]}]},
            "spec.rules[0].from[0].source.principals",
            "list of strings",
        ),
        (
            {"rules": [{"to": [{"operation": {"ports": ["80", 443]}}]}]},
            "spec.rules[0].to[0].operation.ports[1]",
            "must be a string",
        ),
        (
            {"rules": [{"to": [{"operation": {"paths": [""]}}]}]},
            "spec.rules[0].to[0].operation.paths[0]",
            "empty",
        ),
        (
            {"rules": [{"to": [{"operation": {"paths": ["/a/{**}/{*}"]}}]}]},
            "spec.rules[0].to[0].operation.paths[0]",
            "template",
        ),
        ({"rules": [{"when": [{"key": "source.ip"}]}]}, "spec.rules[0].when[0]", "values"),
        (
            {"rules": [{"when": [{"key": "source.ip", "value": ["x"]}]}]},
            "spec.rules[0].when[0].value",
            "unknown field",
        ),
        ({"rulez": []}, "spec.rulez", "unknown field"),
        ({"rules": ["x"]}, "spec.rules[0]", "mapping"),
    ],
)
def test_compile_errors_name_file_line_and_field(spec: dict, field: str, words: str) -> None:
    """Malformed policies are rejected with file:line and the field at fault."""
    with pytest.raises(DocumentError) as info:
        build(doc(spec))
    err = info.value
    assert err.field == field
    assert err.location is not None
    assert err.location.source == "p0.yaml"
    assert err.location.line > 0
    assert words in err.message
    assert str(err).startswith(f"p0.yaml:{err.location.line}: {field}: ")


def test_bad_dry_run_annotation_is_an_error() -> None:
    """A dry-run annotation that is not a boolean is rejected."""
    with pytest.raises(DocumentError, match="dry-run"):
        build(doc({}, annotations={"istio.io/dry-run": "yes"}))


def test_duplicate_policy_is_an_error() -> None:
    """Two documents with the same namespace/name are rejected."""
    with pytest.raises(DocumentError, match="duplicate"):
        build(doc({}), doc({}))


def test_compiled_policies_summary() -> None:
    """policy_names, len and has_allow describe the tenant."""
    compiled = build(doc({"action": "DENY"}, "d"), doc({}, "a"))
    assert compiled.policy_names == ("acme/d", "acme/a")
    assert len(compiled) == 2
    assert compiled.has_allow


# -- explain -------------------------------------------------------------------------------------


def test_explain_names_the_failed_field() -> None:
    """explain gives evaluate's decision and, for the nearest rule, the field that failed."""
    compiled = build(
        doc(
            {
                "rules": [
                    {**src(principals=["*"]), **op(paths=["/api/*"])},
                    op(methods=["X"], paths=["/y"]),
                ]
            }
        )
    )
    subject = Subject(principal=P, path="/web")
    exp = explain(compiled, subject)
    assert exp.result == evaluate(compiled, subject)
    assert exp.nearest is not None
    assert (exp.nearest.rule, exp.nearest.failed) == (0, ("to[0].operation.paths",))
    text = exp.render()
    assert "DENY (no_allow_match)" in text
    assert "to[0].operation.paths" in text
    data = json.loads(json.dumps(exp.to_dict()))
    assert data["allowed"] is False
    assert data["policies"][0]["rules"][1]["failed"] == [
        "to[0].operation.methods",
        "to[0].operation.paths",
    ]


def test_explain_reports_dropped_rules_and_empty_policies() -> None:
    """Dropped rules and policies without rules are shown as such."""
    compiled = build(doc({"rules": [op(ports=["x"])]}, "bad"), doc({}, "none"))
    text = explain(compiled, Subject()).render()
    assert "dropped: spec.rules[0].to[0].operation.ports[0]" in text
    assert "no rules: matches nothing" in text


# -- conditions the Check cannot supply --------------------------------------------------------


def test_experimental_condition_in_deny_is_refused() -> None:
    """A DENY on other filters' metadata would never fire: refused at validation, with field."""
    rule = when("experimental.envoy.filters.a.b[c]", ["x"])
    for dry in (None, {"istio.io/dry-run": "true"}):
        with pytest.raises(DocumentError) as info:
            build(doc({"action": "DENY", "rules": [rule]}, annotations=dry))
        assert "spec.rules[0].when[0].key:" in str(info.value)


@pytest.mark.parametrize("cond", [when("connection.sni", ["evil.test"]),
                                  when("connection.sni", not_values=["good.test"])])  # fmt: skip
def test_deny_on_unknown_sni_fails_closed(cond: dict[str, Any]) -> None:
    """A DENY on connection.sni denies a Check without an SNI (no TLS session sent)."""
    compiled = build(doc({"action": "DENY", "rules": [cond]}))
    for sni in (None, ""):
        result = evaluate(compiled, Subject(sni=sni))
        assert (result.allowed, result.reason) == (False, Reason.POLICY_DENIED)
        assert not explain(compiled, Subject(sni=sni)).result.allowed
    assert any("include_tls_session" in w for w in compiled.warnings)


def test_deny_on_known_sni_is_decided_as_written() -> None:
    """With the TLS session sent, a DENY on connection.sni denies only the named SNI."""
    compiled = build(doc({"action": "DENY", "rules": [when("connection.sni", ["evil.test"])]}))
    assert not evaluate(compiled, Subject(sni="evil.test")).allowed
    assert evaluate(compiled, Subject(sni="good.test")).allowed
    negated = build(doc({"action": "DENY", "rules": [when("connection.sni", None, ["ok.test"])]}))
    assert evaluate(negated, Subject(sni="ok.test")).allowed
    assert not evaluate(negated, Subject(sni="other.test")).allowed


def test_allow_on_unknown_sni_never_allows() -> None:
    """An ALLOW on connection.sni, values or notValues, never allows a Check without an SNI."""
    for cond in (when("connection.sni", ["*"]), when("connection.sni", None, ["evil.test"])):
        compiled = allow_rule(cond)
        assert not evaluate(compiled, Subject()).allowed
        assert not explain(compiled, Subject()).result.allowed
    compiled = allow_rule(when("connection.sni", None, ["evil.test"]))
    assert evaluate(compiled, Subject(sni="good.test")).allowed
    assert not evaluate(compiled, Subject(sni="evil.test")).allowed


# -- repeated headers: the two readings ----------------------------------------------------------


def _deny(cond: dict[str, Any]) -> CompiledPolicies:
    return build(doc({"action": "DENY", "rules": [cond]}))


@pytest.mark.parametrize("value", ["1,0", "0,1", "0,1,2", "1,1"])
def test_deny_on_header_matches_any_repeated_value(value: str) -> None:
    """A DENY on x-block: 1 denies a request that repeats x-block with 1 among the values."""
    compiled = _deny(when("request.headers[x-block]", ["1"]))
    subject = Subject(headers={"x-block": value})
    assert not evaluate(compiled, subject).allowed
    assert not explain(compiled, subject).result.allowed


def test_deny_on_header_keeps_the_whole_reading() -> None:
    """A DENY on a value with a comma still matches the value sent whole."""
    compiled = _deny(when("request.headers[x-a]", ["a,b"]))
    assert not evaluate(compiled, Subject(headers={"x-a": "a,b"})).allowed
    assert evaluate(compiled, Subject(headers={"x-a": "a"})).allowed


def test_split_reading_keeps_whitespace() -> None:
    """Envoy joins raw values with ',' and no space: ' 1' after a comma is not the value '1'."""
    compiled = _deny(when("request.headers[x-block]", ["1"]))
    assert evaluate(compiled, Subject(headers={"x-block": "0, 1"})).allowed
    assert not evaluate(compiled, Subject(headers={"x-block": "0,1"})).allowed
    prefix = _deny(when("request.headers[x-block]", ["1*"]))
    assert not evaluate(prefix, Subject(headers={"x-block": "0,1x"})).allowed


def test_deny_not_values_hold_if_either_reading_holds() -> None:
    """DENY notValues [ok]: 'ok,evil' is denied (whole reading is not ok); 'ok' alone is not."""
    compiled = _deny(when("request.headers[x-a]", None, ["ok"]))
    for value, allowed in (("ok", True), ("ok,evil", False), ("evil", False), ("ok,ok", False)):
        subject = Subject(headers={"x-a": value})
        assert evaluate(compiled, subject).allowed is allowed, value
        assert explain(compiled, subject).result.allowed is allowed, value


def test_allow_values_match_either_reading() -> None:
    """ALLOW values [1]: '0,1' and '1' allow (the client could send either form)."""
    compiled = allow_rule(when("request.headers[x-a]", ["1"]))
    for value, allowed in (("0,1", True), ("1", True), ("0,2", False), ("10,0", False)):
        subject = Subject(headers={"x-a": value})
        assert evaluate(compiled, subject).allowed is allowed, value
        assert explain(compiled, subject).result.allowed is allowed, value


def test_allow_not_values_hold_only_if_both_readings_hold() -> None:
    """ALLOW notValues [bad]: '0,bad' does not allow; 'bad,x' neither; 'a,b' does."""
    compiled = allow_rule(when("request.headers[x-a]", None, ["bad"]))
    for value, allowed in (("0,bad", False), ("bad,x", False), ("a,b", True), ("ok", True)):
        subject = Subject(headers={"x-a": value})
        assert evaluate(compiled, subject).allowed is allowed, value
        assert explain(compiled, subject).result.allowed is allowed, value


def test_many_wildcards_in_a_namespace_use_a_linear_time_engine() -> None:
    """A namespace glob with many `*`s is matched by RE2, so a long crafted peer ID is decided
    (Python's backtracking engine takes exponential time on this pair)."""
    glob = "a*" * 8 + "b"
    compiled = allow_rule(src(namespaces=[glob]))
    crafted = "spiffe://td/ns/" + "a" * 2000  # no "b/": must not match
    assert not evaluate(compiled, Subject(principal=crafted)).allowed
    assert evaluate(compiled, Subject(principal="spiffe://td/ns/" + "a" * 8 + "b/sa/x")).allowed


def test_simple_patterns_stay_with_pythons_engine() -> None:
    """Istio's ordinary forms keep the faster engine; only many repeats go to RE2."""
    assert isinstance(compile_regex(r".*/ns/web/.*"), re.Pattern)
    assert not isinstance(compile_regex(r".*/ns/a.*a.*a.*b/.*"), re.Pattern)
