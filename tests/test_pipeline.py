"""pipeline: identity -> tenant -> authn -> engine -> Outcome, in memory, without a server."""

from __future__ import annotations

from collections.abc import Mapping

from extauthz import pipeline as pipeline_module
from extauthz.authn import JwksCache
from extauthz.catalog import DeferredSource
from extauthz.decode import decode
from extauthz.documents import load_documents
from extauthz.errors import Reason
from extauthz.identity import TrustedProxies
from extauthz.loader import compile_all
from extauthz.model import RequestView
from extauthz.options import CheckOptions
from extauthz.outcome import Outcome
from extauthz.pathnorm import PathNormalization
from extauthz.pipeline import (
    HEADER_PRINCIPAL,
    HEADER_REQUEST_PRINCIPAL,
    HEADER_TENANT,
    CheckPipeline,
)
from extauthz.pipeline import route as pipeline_route
from extauthz.registry import Registry, Snapshot
from extauthz.sources import TenantSource
from extauthz.tenancy import TenantMatch, TenantSpec
from tests.helpers import Issuer, check_request, policy_yaml, tenant_yaml

PEER = "spiffe://cluster.local/ns/shop/sa/frontend"
PROXY = "spiffe://cluster.local/ns/istio-system/sa/gateway"
READS = "  action: ALLOW\n  rules:\n  - to:\n    - operation: {methods: [GET], paths: ['/open/*']}"
FROM_OFFICE = (
    "  action: ALLOW\n  rules:\n  - from:\n    - source: {remoteIpBlocks: [203.0.113.0/24]}"
)


def snapshot(*docs: str) -> Snapshot:
    documents = [d for text in docs for d in load_documents(text, "test.yaml")]
    tenants, errors = compile_all(documents, JwksCache())
    assert not errors
    return Snapshot.build(tenants)


SHOP = snapshot(
    tenant_yaml("shop", match="{hosts: [shop.test]}"), "---\n", policy_yaml("reads", "shop", READS)
)


def decide(snap: Snapshot, options: CheckOptions = CheckOptions(), **request: object) -> Outcome:
    return CheckPipeline(options)(snap, decode(check_request(**request)))  # type: ignore[arg-type]


def test_allow_names_tenant_policy_and_rule() -> None:
    """A request an ALLOW rule matches is allowed, naming the tenant, policy and rule."""
    outcome = decide(SHOP, host="shop.test", path="/open/x", principal=PEER)
    assert (outcome.allowed, outcome.reason, outcome.status) == (True, Reason.ALLOWED, 200)
    assert (outcome.tenant, outcome.policy, outcome.rule) == ("shop", "shop/reads", 0)
    assert outcome.principal == PEER


def test_allow_sets_our_headers_and_strips_client_copies() -> None:
    """An allow sets the tenant and principal headers, and removes those it does not set."""
    outcome = decide(SHOP, host="shop.test", path="/open/x", headers={HEADER_PRINCIPAL: "forged"})
    assert (HEADER_TENANT, "shop") in outcome.headers_to_add
    assert HEADER_PRINCIPAL not in dict(outcome.headers_to_add)
    assert HEADER_PRINCIPAL in outcome.headers_to_remove


def test_no_allow_match_denies() -> None:
    """A request no ALLOW rule matches is a 403 no_allow_match."""
    outcome = decide(SHOP, host="shop.test", path="/admin")
    assert (outcome.allowed, outcome.reason, outcome.status) == (False, Reason.NO_ALLOW_MATCH, 403)
    assert outcome.headers_to_add == ()


def test_unknown_tenant_denies() -> None:
    """A request no tenant claims is denied tenant_unknown."""
    outcome = decide(SHOP, host="other.test", path="/open/x")
    assert outcome.reason is Reason.TENANT_UNKNOWN


def test_invalid_peer_denies() -> None:
    """A source principal that is not a SPIFFE ID is denied peer_invalid."""
    outcome = decide(SHOP, host="shop.test", path="/open/x", principal="not-spiffe")
    assert outcome.reason is Reason.PEER_INVALID


def test_strict_mtls_without_peer_denies() -> None:
    """A STRICT tenant denies a request without a peer identity."""
    strict = snapshot(
        tenant_yaml("shop", match="{hosts: [shop.test]}", mtls="STRICT"),
        "---\n",
        policy_yaml("reads", "shop", READS),
    )
    assert decide(strict, host="shop.test", path="/open/x").reason is Reason.MTLS_REQUIRED
    assert decide(strict, host="shop.test", path="/open/x", principal=PEER).allowed


def test_bad_token_is_401() -> None:
    """A token the tenant's jwtRules reject is a 401 with the authn reason."""
    issuer = Issuer()
    snap = snapshot(
        tenant_yaml("shop", match="{hosts: [shop.test]}", issuer=issuer),
        "---\n",
        policy_yaml("reads", "shop", READS),
    )
    bad = {"authorization": "Bearer " + Issuer().token()}  # another key, same issuer
    outcome = decide(snap, host="shop.test", path="/open/x", headers=bad)
    assert (outcome.allowed, outcome.status, outcome.reason) == (False, 401, Reason.JWT_INVALID)
    good = {"authorization": "Bearer " + issuer.token(sub="alice")}
    outcome = decide(snap, host="shop.test", path="/open/x", headers=good)
    assert outcome.allowed
    assert ("x-user", "alice") in outcome.headers_to_add


def test_allowed_headers_are_each_requests_own_through_the_memo() -> None:
    """One pipeline allowing many requests, peers and users alternating (each seen again, so
    most are answered from the headers kept for them), more of them than are kept: each
    allow carries its own principal and user, never another request's."""
    issuer = Issuer()
    snap = snapshot(
        tenant_yaml("shop", match="{hosts: [shop.test]}", issuer=issuer),
        "---\n",
        policy_yaml("reads", "shop", READS),
    )
    tokens = {user: "Bearer " + issuer.token(sub=user) for user in ("alice", "bob")}
    pipeline = CheckPipeline()
    seen = set()
    bound = pipeline_module._PARSED_CACHE
    pipeline_module._allowed_headers_memo.cache_clear()
    for n in range(bound + 400):
        peer = f"spiffe://cluster.local/ns/shop/sa/w{n % 3 if n < 300 else n}"
        user = ("alice", "bob")[n % 2]
        seen.add((peer, user))
        headers = {"authorization": tokens[user], HEADER_PRINCIPAL: "forged"}
        request = check_request(host="shop.test", path="/open/x", principal=peer, headers=headers)
        outcome = pipeline(snap, decode(request))
        assert outcome.allowed
        added = dict(outcome.headers_to_add)
        assert added[HEADER_PRINCIPAL] == peer
        assert added[HEADER_REQUEST_PRINCIPAL] == f"{issuer.iss}/{user}"
        assert added["x-user"] == user
        assert "authorization" in outcome.headers_to_remove
    kept = pipeline_module._allowed_headers_memo.cache_info()
    assert len(seen) > bound  # more than it keeps: some were evicted on the way
    assert kept.hits > 0
    assert kept.currsize == bound


def test_path_normalization_option() -> None:
    """The path is normalized as the options say before policies see it."""
    merge = CheckOptions(path_normalization=PathNormalization.MERGE_SLASHES)
    assert not decide(SHOP, host="shop.test", path="//open//x").allowed
    assert decide(SHOP, merge, host="shop.test", path="//open//x").allowed


def test_xff_hops_pick_the_remote_ip() -> None:
    """remoteIpBlocks see the x-forwarded-for entry xff_num_trusted_hops says."""
    snap = snapshot(
        tenant_yaml("shop", match="{hosts: [shop.test]}"),
        "---\n",
        policy_yaml("office", "shop", FROM_OFFICE),
    )
    xff: Mapping[str, str] = {"x-forwarded-for": "203.0.113.9, 10.1.1.1"}
    assert not decide(snap, host="shop.test", headers=xff).allowed
    one_hop = CheckOptions(xff_num_trusted_hops=1)
    assert decide(snap, one_hop, host="shop.test", headers=xff).allowed


def test_xfcc_only_from_a_trusted_proxy() -> None:
    """The client of x-forwarded-client-cert counts only when a trusted proxy sent it."""
    xfcc = {"x-forwarded-client-cert": f"By=spiffe://cluster.local/ns/shop/sa/api;URI={PEER}"}
    untrusted = decide(SHOP, host="shop.test", path="/open/x", principal=PROXY, headers=xfcc)
    assert untrusted.principal == PROXY
    trusted = CheckOptions(trusted_proxies=TrustedProxies((PROXY,), ()))
    outcome = decide(SHOP, trusted, host="shop.test", path="/open/x", principal=PROXY, headers=xfcc)
    assert outcome.principal == PEER


def _routing_registry() -> Registry:
    """Every kind of routing: a tenant by host, one owning a namespace with a host, one
    whose first documents failed (unavailable), one deferred, and a catch-all."""
    good = tenant_yaml("shop", match="{hosts: [shop.test]}") + "---\n"
    good += policy_yaml("p", "shop", "  rules: [{}]")
    owned = tenant_yaml("pay", match="{hosts: [pay.test], destinationNamespaces: [pay]}")
    broken = tenant_yaml("bad", match="{hosts: [bad.test]}") + "---\n"
    broken += policy_yaml("p", "bad", "  rules:\n  - to:\n    - operation: {pathz: [/a]}")
    later = tenant_yaml("later", match="{hosts: ['*.later.test'], headers: {x-t: '1'}}")
    registry = Registry(JwksCache())
    sources = {
        name: TenantSource(name, "1", tuple(load_documents(text, f"{name}.yaml")))
        for name, text in (("shop", good), ("pay", owned), ("all", tenant_yaml("all")))
    }
    registry.replace_all(
        {
            **sources,
            "bad": TenantSource("bad", "1", tuple(load_documents(broken, "bad.yaml"))),
            "later": DeferredSource(
                "later",
                "1",
                TenantSpec("later", TenantMatch(hosts=("*.later.test",), headers=(("x-t", "1"),))),
                lambda: TenantSource("later", "1", tuple(load_documents(later, "later.yaml"))),
            ),
        }
    )
    return registry


def test_pipeline_routes_as_the_snapshot() -> None:
    """The pipeline's routing (its shortcut for a served tenant, the snapshot's route for the
    rest) gives what ``Snapshot.route`` gives, for every kind of tenant and refusal; a
    deferred tenant is compiled by the first request that reaches it either way."""
    ours, theirs = _routing_registry(), _routing_registry()
    hosts = ("shop.test", "SHOP.test:443", "pay.test", "bad.test", "a.later.test", "x.test", "")
    seen = set()
    for host in hosts:
        for dest_ns in (None, "pay", "shop", "other"):
            for headers in ({}, {"x-t": "1"}, {"x-t": "2"}):
                view = RequestView(host=host, headers=headers)
                got = pipeline_route(ours.snapshot, view, dest_ns)
                want = theirs.snapshot.route(view, dest_ns)
                assert (got[0] and got[0].name, got[1], got[2]) == (
                    want.tenant and want.tenant.name,
                    want.refusal,
                    want.detail,
                ), (host, dest_ns, headers)
                seen.add(got[1])
    assert seen == {
        None,
        Reason.TENANT_UNAVAILABLE,
        Reason.TENANT_MISMATCH,
    }, seen
    assert "later" in ours.snapshot.tenants.compiled  # compiled on its first request
