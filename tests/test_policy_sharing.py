"""Identical policies of different tenants share their compiled matchers, and still decide,
warn and fail each as its own tenant."""

from __future__ import annotations

import gc
from collections.abc import Sequence

import pytest

from extauthz.authn import JwksCache
from extauthz.catalog import CompiledTenant, compile_documents
from extauthz.documents import load_documents
from extauthz.errors import DocumentError
from extauthz.model import Subject
from extauthz.policy import evaluate
from extauthz.policy.compile import _SHARED, CompiledRule
from tests.helpers import policy_yaml, tenant_yaml

READS = (
    "  action: ALLOW\n  rules:\n  - from:\n"
    "    - source: {principals: [cluster.local/ns/web/sa/ui]}\n"
    "    to:\n    - operation: {methods: [GET], paths: [/api/*]}\n"
)


def tenant(name: str, spec: str = READS, trust_domains: Sequence[str] = ()) -> CompiledTenant:
    text = tenant_yaml(name, trust_domains=trust_domains) + "---\n" + policy_yaml("p", name, spec)
    return compile_documents(name, load_documents(text, f"{name}.yaml"), JwksCache())


def rule(compiled: CompiledTenant) -> CompiledRule:
    return compiled.policies.policies[0].rules[0]


def allowed(compiled: CompiledTenant, **subject: object) -> bool:
    fields = {"method": "GET", "path": "/api/x", **subject}
    return evaluate(compiled.policies, Subject(**fields)).allowed  # type: ignore[arg-type]


def test_identical_policies_share_checks_and_rule_matcher() -> None:
    """Two tenants with the same policy body hold the same Check objects and rule matcher."""
    a, b = tenant("ta"), tenant("tb")
    ra, rb = rule(a), rule(b)
    assert ra.match is rb.match
    assert all(x is y for x, y in zip(ra.operations[0], rb.operations[0], strict=True))
    assert ra.sources[0][0] is rb.sources[0][0]
    # what names the tenant is still its own
    assert (ra.policy, rb.policy) == ("ta/p", "tb/p")
    assert ra.envoy_id != rb.envoy_id


def test_shared_rules_decide_the_same_for_each_tenant() -> None:
    """A shared matcher allows the same requests in both tenants, and denies the others."""
    a, b = tenant("ta"), tenant("tb")
    for t in (a, b):
        assert allowed(t, principal="spiffe://cluster.local/ns/web/sa/ui")
        assert not allowed(t, principal="spiffe://cluster.local/ns/web/sa/other")


def test_different_trust_domains_do_not_share_principals() -> None:
    """Principals expand by the tenant's trust domains: a tenant with an alias accepts it,
    an identical policy in a tenant without that alias does not."""
    plain = tenant("ta", trust_domains=["cluster.local"])
    aliased = tenant("tb", trust_domains=["cluster.local", "old-td"])
    assert rule(plain).sources[0][0] is not rule(aliased).sources[0][0]
    assert rule(plain).operations[0][0] is rule(aliased).operations[0][0]
    old = "spiffe://old-td/ns/web/sa/ui"
    assert allowed(aliased, principal=old)
    assert not allowed(plain, principal=old)


def test_bare_service_accounts_do_not_share_across_namespaces() -> None:
    """A bare service account means the policy's own namespace: not shared between tenants."""
    spec = "  rules:\n  - from:\n    - source: {serviceAccounts: [svc]}\n"
    a, b = tenant("ta", spec), tenant("tb", spec)
    assert rule(a).sources[0][0] is not rule(b).sources[0][0]
    assert allowed(a, principal="spiffe://cluster.local/ns/ta/sa/svc")
    assert not allowed(b, principal="spiffe://cluster.local/ns/ta/sa/svc")
    assert allowed(b, principal="spiffe://cluster.local/ns/tb/sa/svc")


@pytest.mark.parametrize("key", ["request.headers[x-env]", "connection.sni"])
def test_action_dependent_conditions_do_not_share_between_allow_and_deny(key: str) -> None:
    """notValues of a header and SNI conditions are built per action, so never shared."""
    when = f"    when:\n    - key: {key}\n      notValues: [prod]\n"
    allow = tenant(
        "ta", f"  action: ALLOW\n  rules:\n  - to:\n    - operation: {{paths: [/a]}}\n{when}"
    )
    deny = tenant(
        "tb", f"  action: DENY\n  rules:\n  - to:\n    - operation: {{paths: [/a]}}\n{when}"
    )
    assert rule(allow).conditions[0] is not rule(deny).conditions[0]
    assert rule(allow).operations[0][0] is rule(deny).operations[0][0]


def test_warnings_name_each_documents_own_file_and_line() -> None:
    """A shared matcher still warns once per document, naming that document's file."""
    spec = "  rules:\n  - to:\n    - operation: {ports: ['80', 'http'], paths: [/a]}\n"
    a, b = tenant("ta", spec), tenant("tb", spec)
    assert rule(a).operations[0][0] is rule(b).operations[0][0]
    assert [w.split(":")[0] for w in a.warnings] == ["ta.yaml"]
    assert [w.split(":")[0] for w in b.warnings] == ["tb.yaml"]


def test_an_error_names_its_own_document_after_a_good_twin() -> None:
    """A compile error in one tenant names its own file and line, not the twin's."""
    good = tenant("ta")
    bad_spec = READS.replace("/api/*", "/api/{**}/{*}")
    with pytest.raises(DocumentError) as raised:
        tenant("tb", bad_spec)
    location = raised.value.location
    assert location is not None
    assert (location.source, location.line > 0) == ("tb.yaml", True)
    assert "ta.yaml" not in str(raised.value)
    assert allowed(good, principal="spiffe://cluster.local/ns/web/sa/ui")


def test_matchers_no_tenant_uses_are_freed() -> None:
    """The shared table holds its matchers weakly: dropping the tenants frees them."""
    unique = READS.replace("/api/*", "/only-here/*")
    held = [tenant("ta", unique), tenant("tb", unique)]
    before = len(_SHARED.checks)
    del held
    gc.collect()
    assert len(_SHARED.checks) < before


def test_a_freed_rule_matcher_is_never_handed_to_another_rule() -> None:
    """Tenants replaced again and again (reloads) each get the matcher of their own values.

    Each rule here has a matcher of its own (two checks the index does not decide), held
    weakly by the shared table. As tenants are dropped their matchers are freed, and a new
    rule must never be given a freed rule's entry (a stale weak reference, or an object at a
    reused address): it would then decide by another rule's values."""
    held: list[tuple[int, CompiledTenant]] = []  # every fifth tenant (two matchers of each rule)
    before = len(_SHARED.rules)
    for i in range(80):
        spec = (
            "  action: ALLOW\n  rules:\n  - to:\n"
            f"    - operation: {{paths: ['*/v{i}'], notMethods: [DELETE]}}\n"
        )
        t = tenant(f"t{i % 7}", spec)
        assert allowed(t, path=f"/x/v{i}"), i
        assert not allowed(t, path=f"/x/v{i - 1}"), i
        assert not allowed(t, path=f"/x/v{i}", method="DELETE"), i
        if i % 5 == 0:
            held.append((i, t))
        if i % 4 == 3:
            gc.collect()
    for i, t in held:  # what stayed alive still decides by its own values
        assert allowed(t, path=f"/x/v{i}"), i
        assert not allowed(t, path=f"/x/v{i + 1}"), i
    gc.collect()
    assert len(_SHARED.rules) <= before + 2 * len(held), "freed matchers leave the table"
