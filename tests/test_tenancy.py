"""Tenant selection: what Envoy authenticated outranks what the client wrote.

Fast unit tests on ``TenantRouter`` and host normalization, and the same rules through a
served extauthz over gRPC.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import json_format

from extauthz.documents import load_documents
from extauthz.errors import DocumentError
from extauthz.tenancy import (
    TenantConflict,
    TenantRouter,
    TenantSpec,
    implicit_tenant,
    parse_tenant,
    request_host,
)
from tests.helpers import ServerProcess, check_request, policy_yaml, serving, tenant_yaml

FRONTEND = "spiffe://cluster.local/ns/frontend/sa/web"
EVIL = "spiffe://cluster.local/ns/evil/sa/x"


def dest(namespace: str) -> str:
    return f"spiffe://cluster.local/ns/{namespace}/sa/api"


def tenant(name: str, match: str) -> TenantSpec:
    return parse_tenant(load_documents(tenant_yaml(name, match=match), f"{name}.yaml")[0])


def routed(router: TenantRouter, host: str, ns: str | None = None, **headers: str) -> str:
    """The name of the chosen tenant, ``!name`` for a mismatch, ``-`` for none."""
    spec, matched = router.route(host, ns, headers)
    if spec is None:
        return "-"
    return spec.name if matched else f"!{spec.name}"


@pytest.fixture
def router() -> TenantRouter:
    return TenantRouter(
        [
            tenant("public", "{hosts: [www.example.com]}"),
            implicit_tenant("payments"),
            tenant(
                "acme",
                "{hosts: [acme.example.com, '*.acme.example.com'], destinationNamespaces: [acme]}",
            ),
            tenant("billing", "{destinationNamespaces: [billing], headers: {x-tenant: billing}}"),
            tenant("shop", "{hosts: ['SHOP.example.com.:443', '*.shop.example.com', '[FD00::1]']}"),
            tenant("beta", "{headers: {x-tenant: beta}}"),
            tenant("everything", "{}"),
        ]
    )


def test_destination_namespace_outranks_a_claimed_host(router: TenantRouter) -> None:
    """A request to payments naming another tenant's host is still decided by payments."""
    assert routed(router, "www.example.com", "payments") == "payments"


def test_owner_with_hosts_that_do_not_match_is_a_mismatch(router: TenantRouter) -> None:
    """The namespace's tenant checks its own hosts; another host is a mismatch, not a move."""
    assert routed(router, "www.example.com", "acme") == "!acme"
    assert routed(router, "x.acme.example.com", "acme") == "acme"


def test_headers_cannot_move_a_request_out_of_its_namespace(router: TenantRouter) -> None:
    """Headers naming another tenant neither leave billing nor satisfy its own header rule."""
    assert routed(router, "shop.example.com", "billing", **{"x-tenant": "beta"}) == "!billing"
    assert routed(router, "shop.example.com", "billing", **{"x-tenant": "billing"}) == "billing"


def test_unclaimed_namespace_routes_by_host_and_headers(router: TenantRouter) -> None:
    """Where no tenant owns the namespace (a gateway), host, headers and catch-all choose."""
    assert routed(router, "www.example.com", "istio-ingress") == "public"
    assert routed(router, "other.test", "istio-ingress", **{"x-tenant": "beta"}) == "beta"
    assert routed(router, "other.test", None) == "everything"


def test_namespace_tenants_are_not_reached_by_host_alone(router: TenantRouter) -> None:
    """acme's hosts do not select acme for a request whose namespace is not acme's."""
    assert routed(router, "acme.example.com", None) == "everything"


@pytest.mark.parametrize(
    "authority",
    [
        "shop.example.com",
        "SHOP.Example.COM",
        "shop.example.com.",
        "shop.example.com:8080",
        "ShOp.example.com.:443",
        "x.shop.example.com.",
        "X.SHOP.example.com.:443",
        "[fd00::1]",
        "[FD00::1]:8443",
    ],
)
def test_every_spelling_of_a_host_selects_its_tenant(router: TenantRouter, authority: str) -> None:
    """Case, a port and one trailing dot never make a host fall through to the catch-all."""
    assert routed(router, authority) == "shop"


@pytest.mark.parametrize(
    "authority",
    ["shop.example.com..", "shop.example.com..:443", "shop..example.com", "fd00::1", "a b", "x:y"],
)
def test_malformed_host_matches_no_tenant(router: TenantRouter, authority: str) -> None:
    """A host that is not a DNS name after one dot is dropped reaches no tenant, not even {}."""
    assert routed(router, authority) == "-"


def test_malformed_host_still_reaches_its_namespace_owner(router: TenantRouter) -> None:
    """A namespace owner without hosts decides whatever the host; with hosts it refuses."""
    assert routed(router, "shop.example.com..", "payments") == "payments"
    assert routed(router, "acme.example.com..", "acme") == "!acme"


def test_empty_host_matches_no_host_tenant(router: TenantRouter) -> None:
    """No :authority selects no host tenant (a wildcard needs a label before its suffix)."""
    assert routed(router, "") == "everything"
    assert routed(router, ".shop.example.com") == "-"


def test_request_host_normalization() -> None:
    """Lower case, no port, at most one trailing dot dropped, IPv6 literals kept bracketed."""
    assert request_host("ACME.example.com.:443") == "acme.example.com"
    assert request_host("[::1]:80") == "[::1]"
    assert request_host("") == ""
    assert request_host("acme.example.com..") is None
    assert request_host("::1") is None


def test_host_patterns_are_normalized_at_load() -> None:
    """A Tenant's hosts are stored in the spelling requests are compared in."""
    spec = tenant("t", "{hosts: ['ACME.example.com.:443', '*.Example.com.', '[FD00::1]:80']}")
    assert spec.match.hosts == ("acme.example.com", "*.example.com", "[fd00::1]")


@pytest.mark.parametrize("host", ["acme.example.com..", "*.example.com..", "*.[::1]", "a_b.com"])
def test_malformed_host_pattern_is_refused(host: str) -> None:
    """A host pattern that is not a DNS name (or [v6] literal) is refused with its field."""
    with pytest.raises(DocumentError, match=r"spec\.match\.hosts"):
        tenant("t", f"{{hosts: ['{host}']}}")


def test_two_tenants_cannot_own_one_namespace() -> None:
    """A namespace has one owner, even when the two tenants name different hosts."""
    with pytest.raises(TenantConflict, match="destinationNamespace"):
        TenantRouter(
            [
                tenant("a", "{hosts: [a.test], destinationNamespaces: [shared]}"),
                tenant("b", "{hosts: [b.test], destinationNamespaces: [shared]}"),
            ]
        )


def test_spellings_of_one_host_conflict() -> None:
    """Two tenants claiming one host in two spellings are a conflict, not two routes."""
    with pytest.raises(TenantConflict, match="host"):
        TenantRouter([tenant("a", "{hosts: [a.test]}"), tenant("b", "{hosts: ['A.test.:80']}")])


# -- through a served extauthz ---------------------------------------------------------------


WEB = FRONTEND.removeprefix("spiffe://")
ALLOW_FRONTEND = f"  action: ALLOW\n  rules:\n  - from:\n    - source: {{principals: [{WEB}]}}"
ONLY_SHOP_PATH = "  rules:\n  - to:\n    - operation: {paths: [/shop-only]}"


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("tenants")
    files = {
        "public.yaml": tenant_yaml("public", match="{hosts: [www.example.com]}"),
        "payments.yaml": policy_yaml("frontend-only", "payments", ALLOW_FRONTEND),
        "acme.yaml": tenant_yaml(
            "acme", match="{hosts: [acme.example.com], destinationNamespaces: [acme]}"
        )
        + "---\n"
        + policy_yaml("frontend-only", "acme", ALLOW_FRONTEND),
        "shop.yaml": tenant_yaml("shop", match="{hosts: [shop.example.com, '*.shop.example.com']}")
        + "---\n"
        + policy_yaml("shop-only", "shop", ONLY_SHOP_PATH),
        "everything.yaml": tenant_yaml("everything"),
    }
    for name, text in files.items():
        (root / name).write_text(text)
    with serving(["--policies", str(root)]) as server:
        yield server


def decide(server: ServerProcess, request: external_auth_pb2.CheckRequest) -> tuple[str, str, str]:
    meta = json_format.MessageToDict(server.check(request).dynamic_metadata)
    return str(meta["decision"]), str(meta["reason"]), str(meta.get("tenant", ""))


def test_client_host_cannot_pick_a_permissive_tenant(tenants: ServerProcess) -> None:
    """ns/evil calling payments with the host of policy-less tenant public is denied by payments."""
    request = check_request(
        host="www.example.com", principal=EVIL, destination_principal=dest("payments")
    )
    assert decide(tenants, request) == ("deny", "no_allow_match", "payments")


def test_payments_still_admits_its_frontend(tenants: ServerProcess) -> None:
    """The owner of the namespace decides whatever the host: frontend is allowed."""
    request = check_request(
        host="www.example.com", principal=FRONTEND, destination_principal=dest("payments")
    )
    assert decide(tenants, request) == ("allow", "allowed", "payments")


def test_owner_host_mismatch_is_denied(tenants: ServerProcess) -> None:
    """acme owns namespace acme and lists its hosts: another host is denied tenant_mismatch."""
    wrong = check_request(
        host="www.example.com", principal=FRONTEND, destination_principal=dest("acme")
    )
    assert decide(tenants, wrong) == ("deny", "tenant_mismatch", "acme")
    right = check_request(
        host="ACME.example.com.:443", principal=FRONTEND, destination_principal=dest("acme")
    )
    assert decide(tenants, right) == ("allow", "allowed", "acme")


@pytest.mark.parametrize(
    "host",
    ["shop.example.com", "SHOP.example.com.:443", "a.shop.example.com.", "Shop.Example.Com:80"],
)
def test_host_spellings_reach_the_host_tenant_over_grpc(tenants: ServerProcess, host: str) -> None:
    """Every spelling of shop's host is decided by shop, never by the allow-all catch-all."""
    assert decide(tenants, check_request(host=host, path="/x")) == (
        "deny",
        "no_allow_match",
        "shop",
    )


def test_double_trailing_dot_is_not_an_alias(tenants: ServerProcess) -> None:
    """``shop.example.com..`` is not shop's host, and does not reach the catch-all either."""
    request = check_request(host="shop.example.com..", path="/x")
    assert decide(tenants, request) == ("deny", "tenant_unknown", "")


def test_gateway_namespace_routes_by_host(tenants: ServerProcess) -> None:
    """A namespace no tenant claims (an ingress gateway) is routed by the host."""
    request = check_request(host="www.example.com", destination_principal=dest("istio-ingress"))
    assert decide(tenants, request) == ("allow", "allowed", "public")
