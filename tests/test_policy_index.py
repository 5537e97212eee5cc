"""The rule index: ``evaluate`` runs only the rules that can match, and decides as if it ran
them all.

The property tests generate tenants whose operations and sources use every value form the
index reads (exact, prefix, suffix, ``*``, path templates, methods in any case, hosts with
case and ports, principals with trust-domain aliases), their negations, empty entries, values
dropped as invalid, ``source.principal`` conditions, AUDIT and dry-run policies, and hold:

- every rule the index leaves out does not match the request (the index is never wrong);
- ``evaluate`` (indexed) gives the very result ``decide`` gives running every rule in order
  (the linear engine): decision, reason, deciding policy and rule, audits, shadow.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extauthz.documents import load_documents
from extauthz.model import Subject
from extauthz.policy import CompiledPolicies, PolicyResult, compile_policies, evaluate
from extauthz.policy.engine import decide
from extauthz.policy.index import path_key, path_need
from extauthz.policy.matchers import Ctx
from tests.helpers import policy_documents

PROPERTY = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

METHODS = ["GET", "get", "Get", "POST", "G*", "*T", "*", "DELETE"]
HOSTS = ["a.example.com", "A.Example.COM", "a.example.com:80", "*.example.com", "a.*", "*"]
PATHS = [
    "/a",
    "/a/b",
    "/a/*",
    "/a*",
    "/*",
    "*.php",
    "*",
    "/",
    "/a/{*}",
    "/a/{*}/c",
    "/{*}/b",
    "/a/{**}",
    "/b/x.php",
]
PRINCIPALS = [
    "td/ns/a/sa/a",
    "cluster.local/ns/a/sa/a",
    "alias/ns/a/sa/b",
    "other/ns/a/sa/a",
    "td/ns/a/sa/*",
    "*/ns/a/sa/a",
    "*",
]
PORTS = ["80", "8080", "99999"]  # 99999 is invalid: dropped (DENY/AUDIT) or drops the rule


def _some(values: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(values), min_size=1, max_size=3, unique=True)


operation = st.sets(
    st.sampled_from(["methods", "notMethods", "hosts", "notHosts", "paths", "notPaths", "ports"]),
    max_size=3,
).flatmap(
    lambda keys: st.fixed_dictionaries(
        {
            k: _some(
                {"methods": METHODS, "hosts": HOSTS, "paths": PATHS, "ports": PORTS}[
                    k.removeprefix("not").lower()
                ]
            )
            for k in keys
        }
    )
)
source = st.dictionaries(
    st.sampled_from(["principals", "notPrincipals", "namespaces"]),
    _some(PRINCIPALS),
    max_size=2,
).map(lambda s: {k: (["a", "b*"] if k == "namespaces" else v) for k, v in s.items()})
condition = st.builds(
    lambda key, vals, negate: {"key": key, ("notValues" if negate else "values"): vals},
    st.sampled_from(["source.principal", "request.headers[x]"]),
    _some(PRINCIPALS),
    st.booleans(),
)
rule = st.fixed_dictionaries(
    {},
    optional={
        "from": st.lists(st.builds(lambda s: {"source": s}, source), max_size=2),
        "to": st.lists(st.builds(lambda o: {"operation": o}, operation), max_size=3),
        "when": st.lists(condition, max_size=2),
    },
)
policy = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["ALLOW", "DENY", "AUDIT"]),
        "rules": st.lists(rule, max_size=3),
        "dry": st.booleans(),
    }
)
subject = st.builds(
    Subject,
    principal=st.sampled_from(
        [
            None,
            "spiffe://td/ns/a/sa/a",
            "spiffe://alias/ns/a/sa/a",
            "spiffe://cluster.local/ns/a/sa/a",
            "spiffe://other/ns/a/sa/a",
            "spiffe://td/ns/a/sa/b",
            "spiffe://alias/ns/a/sa/b",
        ]
    ),
    method=st.sampled_from(["GET", "get", "Get", "POST", "PUT", "DELETE", ""]),
    host=st.sampled_from(
        ["a.example.com", "A.EXAMPLE.COM", "a.example.com:80", "b.example.com", "a.b", ""]
    ),
    path=st.sampled_from(
        ["/a", "/a/b", "/a/b/c", "/a/x/c", "/ab", "/b/x.php", "/b", "/", "", "a/b", "/a/"]
    ),
    headers=st.sampled_from([{}, {"x": "td/ns/a/sa/a"}, {"x": "y"}]),
    destination_port=st.sampled_from([None, 80, 8080]),
    claims=st.none(),
)


def tenant(policies: list[dict[str, Any]], trust_domains: tuple[str, ...]) -> CompiledPolicies:
    return compile_policies(policy_documents(policies), trust_domains=trust_domains)


def linear(compiled: CompiledPolicies, s: Subject) -> PolicyResult:
    """The engine without the index: ``decide`` running every rule of every list in order."""
    ctx = Ctx(s, compiled.space_delimited)
    return decide(compiled, lambda rule: rule.match(ctx))


trust_domains = st.sampled_from([(), ("td", "alias")])


@PROPERTY
@given(st.lists(policy, max_size=6), trust_domains, subject)
def test_a_rule_left_out_never_matches(
    policies: list[dict[str, Any]], tds: tuple[str, ...], s: Subject
) -> None:
    """Every rule the index leaves out for a request fails to match it; every rule it keeps
    matches without the checks the index decided (``run``) exactly when it matches."""
    compiled = tenant(policies, tds)
    bits = compiled.index.candidates(Ctx(s, compiled.space_delimited))
    for i, rule in enumerate(compiled.index.rules):
        matched = rule.match(Ctx(s, compiled.space_delimited))
        if bits >> i & 1:
            assert rule.run(Ctx(s, compiled.space_delimited)) == matched, (rule.envoy_id, s)
        else:
            assert not matched, (rule.envoy_id, s)


@PROPERTY
@given(st.lists(policy, max_size=6), trust_domains, subject)
def test_indexed_evaluate_equals_the_linear_engine(
    policies: list[dict[str, Any]], tds: tuple[str, ...], s: Subject
) -> None:
    """The indexed ``evaluate`` and ``decide`` over every rule give the same result: the
    decision, the deciding policy and rule, the audits and the dry-run shadow."""
    compiled = tenant(policies, tds)
    assert evaluate(compiled, s) == linear(compiled, s)


SUBJECT_VALUES: dict[str, list[str | None]] = {
    "method": ["GET", "get", "Get", "POST", "DELETE", ""],
    "host": ["a.example.com", "A.EXAMPLE.COM", "a.example.com:80", "b.example.com", ""],
    "path": ["/a", "/a/b", "/a/b/c", "/a/x/c", "/ab", "/b/x.php", "/", "", "a/b", "/a/"],
    "principal": [
        None,
        "spiffe://td/ns/a/sa/a",
        "spiffe://alias/ns/a/sa/a",
        "spiffe://cluster.local/ns/a/sa/a",
        "spiffe://other/ns/a/sa/a",
        "spiffe://alias/ns/a/sa/b",
    ],
}
SINGLE_FIELDS = [
    *(("to", "operation", "methods", "method", v) for v in METHODS),
    *(("to", "operation", "hosts", "host", v) for v in HOSTS),
    *(("to", "operation", "paths", "path", v) for v in PATHS),
    *(("from", "source", "principals", "principal", v) for v in PRINCIPALS),
    *(("when", "", "source.principal", "principal", v) for v in PRINCIPALS),
]


@pytest.mark.parametrize(("side", "kind", "field", "dim", "value"), SINGLE_FIELDS)
@pytest.mark.parametrize("tds", [(), ("td", "alias")])
def test_each_value_form_alone(
    side: str, kind: str, field: str, dim: str, value: str, tds: tuple[str, ...]
) -> None:
    """A rule of one field and one value: over every request value of its dimension, the
    rule is left out only when it does not match, and when kept, ``run`` matches as it does."""
    entry = {"key": field, "values": [value]} if side == "when" else {kind: {field: [value]}}
    compiled = tenant([{"action": "ALLOW", "rules": [{side: [entry]}], "dry": False}], tds)
    (rule,) = compiled.index.rules
    for seen in SUBJECT_VALUES[dim]:
        s = Subject(**{dim: seen})  # type: ignore[arg-type]
        ctx = Ctx(s, compiled.space_delimited)
        if rule.match(ctx):
            assert compiled.index.candidates(ctx) == 1, (value, seen)
            assert rule.run(ctx)
        elif compiled.index.candidates(ctx) == 1:
            assert not rule.run(ctx), (value, seen)


def _bench_like() -> CompiledPolicies:
    rules = [
        ("ALLOW", {"to": [{"operation": {"methods": ["GET"], "paths": ["/healthz"]}}]}),
        ("ALLOW", {"to": [{"operation": {"methods": ["POST"], "paths": ["/api/*"]}}]}),
        ("ALLOW", {"to": [{"operation": {"hosts": ["Internal.Example.com"]}}]}),
        ("ALLOW", {"from": [{"source": {"principals": ["td/ns/a/sa/x"]}}]}),
        ("ALLOW", {"to": [{"operation": {"paths": ["/api/v2/{*}/items"]}}]}),
        ("ALLOW", {"to": [{"operation": {"notMethods": ["GET"]}}]}),
        ("DENY", {"to": [{"operation": {"paths": ["/admin/*"]}}]}),
        ("DENY", {"to": [{"operation": {"paths": ["*.php"]}}]}),
        ("AUDIT", {"to": [{"operation": {"methods": ["DELETE"]}}]}),
    ]
    docs = []
    for i, (action, r) in enumerate(rules):
        body = {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": f"p{i}", "namespace": "t"},
            "spec": {"action": action, "rules": [r]},
        }
        docs += load_documents(yaml.safe_dump(body), f"p{i}.yaml")
    return compile_policies(docs, trust_domains=("td",))


def _candidates(compiled: CompiledPolicies, s: Subject) -> list[str]:
    bits = compiled.index.candidates(Ctx(s, compiled.space_delimited))
    return [r.policy for i, r in enumerate(compiled.index.rules) if bits >> i & 1]


def test_the_index_leaves_only_the_rules_that_can_match() -> None:
    """Method, lower-cased host, first path segment and principal each rule out rules."""
    compiled = _bench_like()
    get = Subject(method="GET", host="api.example.com", path="/api/v2/o/items")
    assert _candidates(compiled, get) == ["t/p7", "t/p4", "t/p5"]
    post = Subject(method="POST", host="INTERNAL.example.COM", path="/admin/x")
    assert _candidates(compiled, post) == ["t/p6", "t/p7", "t/p2", "t/p5"]
    peer = Subject(
        method="get", host="api.example.com", path="/healthz", principal="spiffe://td/ns/a/sa/x"
    )
    assert _candidates(compiled, peer) == ["t/p7", "t/p3", "t/p5"]
    for s in (get, post, peer):  # and the decision is the linear engine's
        assert evaluate(compiled, s) == linear(compiled, s)


@pytest.mark.parametrize(
    ("values", "keys"),
    [
        (["/a", "/a/b", "/"], {"/a", "/"}),
        (["/a/*", "/b/c*"], {"/a", "/b"}),
        (["/a/{*}/c", "/b/{**}"], {"/a", "/b"}),
        (["/a*"], None),  # the prefix ends inside the first segment
        (["/{*}/b"], None),
        (["/a", "*.php"], None),
        (["*"], None),
        (["ab/c"], {"ab"}),
    ],
)
def test_path_need(values: list[str], keys: set[str] | None) -> None:
    """A path field fixes the first segment only where every value does."""
    need = path_need(values)
    assert (None if need is None else set(need.keys)) == keys
    for value in values:  # an exact value's own key is among the keys
        if need is not None and "*" not in value and "{" not in value:
            assert path_key(value) in need.keys
