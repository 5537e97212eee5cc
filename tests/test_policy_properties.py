"""Property tests: the string, path-template and CIDR matchers against plain references, and
the engine's invariants (DENY never widens access, notX of a missing attribute always holds,
explain agrees with evaluate)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from extauthz.documents import load_documents
from extauthz.model import Subject
from extauthz.policy import CompiledPolicies, compile_policies, evaluate, explain
from extauthz.policy.matchers import Ctx, IPSet, StringSet, parse_cidr
from extauthz.policy.paths import template_regex
from tests.helpers import policy_documents

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALPHABET = "abAB/.-*x"
words = st.text(alphabet=ALPHABET, max_size=8)
subjects_text = st.text(alphabet="abAB/.-x", max_size=8)


def istio_reference(pattern: str, value: str, *, star_present: bool) -> bool:
    """Istio's value forms, read directly from the docs."""
    if pattern == "*":
        return True if star_present else (value != "" and "\n" not in value)
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


@FAST
@given(st.lists(words.filter(bool), min_size=1, max_size=4), subjects_text, st.booleans())
def test_string_set_matches_any_value_form(patterns: list[str], value: str, present: bool) -> None:
    """StringSet.istio agrees with the exact/prefix/suffix/* reference for any value."""
    matcher = StringSet.istio(patterns, star="present" if present else "nonempty")
    want = any(istio_reference(p, value, star_present=present) for p in patterns)
    assert matcher(value) == want


@FAST
@given(st.lists(words.filter(bool), min_size=1, max_size=4), subjects_text)
def test_ignore_case_folds_ascii(patterns: list[str], value: str) -> None:
    """ignore_case matches like the reference on lower-cased pattern and value."""
    matcher = StringSet.istio(patterns, star="present", ignore_case=True)
    want = any(istio_reference(p.lower(), value.lower(), star_present=True) for p in patterns)
    assert matcher(value) == want


def template_reference(tokens: list[str], s: str) -> bool:
    """Backtracking reference: "{*}" takes 1+ characters without "/", "{**}" takes 0+ of any."""
    if not tokens:
        return s == ""
    head, rest = tokens[0], tokens[1:]
    if head == "{*}":
        return any(
            "/" not in s[:k] and template_reference(rest, s[k:]) for k in range(1, len(s) + 1)
        )
    if head == "{**}":
        return any(template_reference(rest, s[k:]) for k in range(len(s) + 1))
    return s.startswith(head) and template_reference(rest, s[len(head) :])


@FAST
@given(
    st.lists(st.sampled_from(["{*}", "{**}", "a", "b.c"]), min_size=1, max_size=4),
    st.lists(st.sampled_from(["a", "b.c", "x", "", "a/b"]), max_size=5),
)
def test_path_templates(parts: list[str], path_parts: list[str]) -> None:
    """{*} is one non-empty segment, {**} any text (slashes too), literals match themselves."""
    assume(parts.count("{**}") <= 1)
    if "{**}" in parts:
        assume("{*}" not in parts[parts.index("{**}") :])
    template = "/" + "/".join(parts)
    path = "/" + "/".join(path_parts)
    tokens = [t for part in parts for t in ("/", part)]
    want = template_reference(tokens, path)
    assert (re.fullmatch(template_regex(template), path) is not None) == want


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1))
def test_cidr_v4(base: int, bits: int, probe: int) -> None:
    """An IPv4 CIDR contains exactly the addresses sharing its first `bits` bits."""
    net = f"{ipaddress.IPv4Address(base)}/{bits}"
    ips = IPSet([parse_cidr(net)])
    mask = ((1 << bits) - 1) << (32 - bits) if bits else 0
    assert ips(ipaddress.IPv4Address(probe)) == ((base & mask) == (probe & mask))
    assert not ips(ipaddress.IPv6Address(probe))


@FAST
@given(st.integers(0, 2**128 - 1), st.integers(0, 128), st.integers(0, 2**128 - 1))
def test_cidr_v6(base: int, bits: int, probe: int) -> None:
    """An IPv6 CIDR contains exactly the addresses sharing its first `bits` bits."""
    ips = IPSet([parse_cidr(f"{ipaddress.IPv6Address(base)}/{bits}")])
    mask = ((1 << bits) - 1) << (128 - bits) if bits else 0
    assert ips(ipaddress.IPv6Address(probe)) == ((base & mask) == (probe & mask))


# -- engine invariants -------------------------------------------------------------------------

VALUES = ["a", "a*", "*a", "*", "ab", "b"]
SOURCE_FIELDS = ["principals", "namespaces", "requestPrincipals", "notPrincipals", "notNamespaces"]
OP_FIELDS = ["methods", "paths", "hosts", "notMethods", "notPaths"]
CONDS = ["request.headers[x]", "request.auth.claims[g]", "connection.sni", "source.namespace"]

values = st.lists(st.sampled_from(VALUES), min_size=1, max_size=3)
rule = st.fixed_dictionaries(
    {},
    optional={
        "from": st.lists(
            st.builds(
                lambda s: {"source": s},
                st.dictionaries(st.sampled_from(SOURCE_FIELDS), values, max_size=2),
            ),
            max_size=2,
        ),
        "to": st.lists(
            st.builds(
                lambda o: {"operation": o},
                st.dictionaries(st.sampled_from(OP_FIELDS), values, max_size=2),
            ),
            max_size=2,
        ),
        "when": st.lists(
            st.builds(
                lambda k, v, n: {"key": k, ("values" if n else "notValues"): v},
                st.sampled_from(CONDS),
                values,
                st.booleans(),
            ),
            max_size=2,
        ),
    },
)
policy = st.fixed_dictionaries(
    {"action": st.sampled_from(["ALLOW", "DENY", "AUDIT"]), "rules": st.lists(rule, max_size=3)},
    optional={"dry": st.booleans()},
)
text = st.sampled_from(["a", "ab", "b", "", "A", "ba"])
subject = st.builds(
    Subject,
    principal=st.none() | st.builds(lambda n: f"spiffe://td/ns/{n}/sa/{n}", text),
    claims=st.none()
    | st.fixed_dictionaries(
        {}, optional={"iss": text, "sub": text, "g": text | st.lists(text, max_size=2)}
    ),
    method=text,
    path=text,
    host=text,
    headers=st.dictionaries(st.just("x"), text, max_size=1),
    sni=st.none() | text,
)


def tenant(policies: list[dict[str, Any]], *, skip_dry: bool = False) -> CompiledPolicies:
    return compile_policies(policy_documents(policies, skip_dry=skip_dry))


@FAST
@given(st.lists(policy, max_size=4), st.lists(rule, min_size=1, max_size=2), subject)
def test_adding_a_deny_policy_never_allows_more(
    policies: list[dict[str, Any]], deny_rules: list[dict[str, Any]], s: Subject
) -> None:
    """A request denied without a DENY policy is still denied with it."""
    before = evaluate(tenant(policies), s)
    after = evaluate(tenant([*policies, {"action": "DENY", "rules": deny_rules}]), s)
    if not before.allowed:
        assert not after.allowed


@FAST
@given(st.sampled_from(SOURCE_FIELDS[:3] + OP_FIELDS[:3]), values)
def test_not_field_of_missing_attribute_always_holds(field: str, vals: list[str]) -> None:
    """notX of an attribute the request lacks is satisfied, X of it never is."""
    neg = "not" + field[0].upper() + field[1:]
    side, kind = ("from", "source") if field in SOURCE_FIELDS else ("to", "operation")
    empty = Subject()
    yes = tenant([{"action": "ALLOW", "rules": [{side: [{kind: {neg: vals}}]}]}])
    no = tenant([{"action": "ALLOW", "rules": [{side: [{kind: {field: vals}}]}]}])
    assert evaluate(yes, empty).allowed
    assert not evaluate(no, empty).allowed


@FAST
@given(st.sampled_from(CONDS), values)
def test_not_values_of_missing_attribute_always_hold(key: str, vals: list[str]) -> None:
    """A when condition's notValues hold for a request without that attribute (SNI aside)."""
    assume(key != "connection.sni")  # an unknown SNI fails in an ALLOW (test_policy_fields)
    compiled = tenant([{"action": "ALLOW", "rules": [{"when": [{"key": key, "notValues": vals}]}]}])
    assert evaluate(compiled, Subject()).allowed


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(policy, max_size=5), subject)
def test_explain_agrees_with_evaluate(policies: list[dict[str, Any]], s: Subject) -> None:
    """explain reaches evaluate's decision, deciding rule, audits and shadow."""
    compiled = tenant(policies)
    assert explain(compiled, s).result == evaluate(compiled, s)


@FAST
@given(st.lists(policy, max_size=4), subject)
def test_dry_run_never_changes_the_decision(policies: list[dict[str, Any]], s: Subject) -> None:
    """Marking policies dry-run leaves the decision of the enforced ones unchanged."""
    got = evaluate(tenant(policies), s)
    want = evaluate(tenant(policies, skip_dry=True), s)
    assert (got.allowed, got.reason, got.policy, got.rule, got.audits) == (
        want.allowed,
        want.reason,
        want.policy,
        want.rule,
        want.audits,
    )


claim_values = st.recursive(
    st.sampled_from(["a", "b", "a b", " a  ", "", "ab"]) | st.integers(0, 2) | st.none(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("gh"), inner),
    max_leaves=5,
)
issuers = st.sampled_from(["a", "b", "a b"]) | claim_values
claim_sets = st.fixed_dictionaries(
    {},
    optional={"iss": issuers, "sub": issuers, "g": claim_values, "h": claim_values},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    claim_sets,
    st.sets(st.sampled_from(["iss", "sub", "g"])),
    st.sampled_from(["g", "g][h", "iss"]),
    st.lists(st.sampled_from(["a", "b", "a*", "*b", "*"]), min_size=1, max_size=2),
)
def test_claim_conditions_read_the_claims_as_ctx_claim(
    claims: dict[str, Any], delimited: set[str], path: str, vals: list[str]
) -> None:
    """A claim condition and requestPrincipals decide as Ctx.claim reads the claims (split
    where space-delimited, strings and lists of strings only, nested keys)."""
    when_rule = {"when": [{"key": f"request.auth.claims[{path}]", "values": vals}]}
    principal = {"from": [{"source": {"requestPrincipals": [f"{v}/{v}" for v in vals]}}]}
    for rule_doc in (when_rule, principal):
        docs = load_documents(
            yaml.safe_dump(
                {
                    "apiVersion": "security.istio.io/v1",
                    "kind": "AuthorizationPolicy",
                    "metadata": {"name": "p", "namespace": "t"},
                    "spec": {"action": "ALLOW", "rules": [rule_doc]},
                }
            ),
            "p.yaml",
        )
        compiled = compile_policies(docs, space_delimited_claims=sorted(delimited))
        s = Subject(claims=claims)
        ctx = Ctx(s, compiled.space_delimited)
        if rule_doc is when_rule:
            value = ctx.claim(tuple(path.split("][")))
            test = StringSet.istio(vals, star="nonempty")
            items = [value] if isinstance(value, str) else value if type(value) is list else []
            want = any(type(v) is str and test(v) for v in items)
        else:
            iss, sub = ctx.claim(("iss",)), ctx.claim(("sub",))
            want = (
                isinstance(iss, str)
                and isinstance(sub, str)
                and f"{iss}/{sub}" in {f"{v}/{v}" for v in vals if "*" not in v}
            )
            if any("*" in v for v in vals):
                continue  # the forms of requestPrincipals: tests/test_policy_fields.py
        assert evaluate(compiled, s).allowed == want, (rule_doc, claims, delimited)


@pytest.mark.parametrize("delimited", [[], ["iss"], ["sub"]])
def test_request_principal_of_space_delimited_claims(delimited: list[str]) -> None:
    """iss and sub read as Ctx.claim reads them: a space-delimited one is a list, no string,
    and makes no request principal."""
    rule_doc = {"from": [{"source": {"requestPrincipals": ["a/a"]}}]}
    body = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "t"},
        "spec": {"action": "ALLOW", "rules": [rule_doc]},
    }
    docs = load_documents(yaml.safe_dump(body), "p.yaml")
    compiled = compile_policies(docs, space_delimited_claims=delimited)
    assert evaluate(compiled, Subject(claims={"iss": "a", "sub": "a"})).allowed == (not delimited)
