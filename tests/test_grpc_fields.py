"""Every field of SEMANTICS.md through the gRPC interface: a match and a near miss each.

One server serves one tenant per case (routed by host); each tenant has one ALLOW policy
with one rule that tests one field. The engine's own tests go deeper per field; these show
that the served pipeline (decode -> identity -> tenant -> authn -> engine) wires each
attribute to the field that reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from tests.helpers import Issuer, ServerProcess, check_request, policy_yaml, serving, tenant_yaml

P = "spiffe://cluster.local/ns/shop/sa/cart"
OTHER = "spiffe://cluster.local/ns/web/sa/front"
ISSUER = Issuer()

# name, rule (YAML flow), request that matches, near miss
CASES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    (
        "principals",
        "{from: [{source: {principals: [cluster.local/ns/shop/sa/cart]}}]}",
        {"principal": P},
        {"principal": OTHER},
    ),
    (
        "principals-prefix",
        "{from: [{source: {principals: [cluster.local/ns/shop/*]}}]}",
        {"principal": P},
        {"principal": OTHER},
    ),
    ("principals-missing", "{from: [{source: {principals: ['*']}}]}", {"principal": P}, {}),
    (
        "notPrincipals",
        "{from: [{source: {notPrincipals: [cluster.local/ns/web/*]}}]}",
        {"principal": P},
        {"principal": OTHER},
    ),
    (
        "notPrincipals-missing-satisfies",
        "{from: [{source: {notPrincipals: ['*']}}]}",
        {},
        {"principal": P},
    ),
    (
        "namespaces",
        "{from: [{source: {namespaces: [shop]}}]}",
        {"principal": P},
        {"principal": OTHER},
    ),
    (
        "notNamespaces",
        "{from: [{source: {notNamespaces: [shop]}}]}",
        {"principal": OTHER},
        {"principal": P},
    ),
    (
        "serviceAccounts",
        "{from: [{source: {serviceAccounts: [shop/cart]}}]}",
        {"principal": P},
        {"principal": OTHER},
    ),
    (
        "ipBlocks",
        "{from: [{source: {ipBlocks: [10.1.0.0/16]}}]}",
        {"source_ip": "10.1.2.3"},
        {"source_ip": "10.2.2.3"},
    ),
    (
        "notIpBlocks",
        "{from: [{source: {notIpBlocks: ['10.1.2.3']}}]}",
        {"source_ip": "10.1.2.4"},
        {"source_ip": "10.1.2.3"},
    ),
    (
        "remoteIpBlocks-xff",
        "{from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]}",
        {"headers": {"x-forwarded-for": "198.51.100.1, 203.0.113.7"}},
        {"headers": {"x-forwarded-for": "203.0.113.7, 198.51.100.1"}},
    ),
    (
        "remoteIpBlocks-no-xff-is-peer",
        "{from: [{source: {remoteIpBlocks: [10.1.2.3]}}]}",
        {"source_ip": "10.1.2.3"},
        {"source_ip": "10.1.2.4"},
    ),
    (
        "notRemoteIpBlocks",
        "{from: [{source: {notRemoteIpBlocks: [203.0.113.0/24]}}]}",
        {"headers": {"x-forwarded-for": "198.51.100.1"}},
        {"headers": {"x-forwarded-for": "203.0.113.9"}},
    ),
    (
        "requestPrincipals",
        "{from: [{source: {requestPrincipals: ['https://issuer.test/alice']}}]}",
        {"claims": {}},
        {"claims": {"sub": "bob"}},
    ),
    (
        "requestPrincipals-needs-token",
        "{from: [{source: {requestPrincipals: ['*']}}]}",
        {"claims": {}},
        {},
    ),
    (
        "notRequestPrincipals",
        "{from: [{source: {notRequestPrincipals: ['*/bob']}}]}",
        {"claims": {}},
        {"claims": {"sub": "bob"}},
    ),
    (
        "hosts-case-insensitive",
        "{to: [{operation: {hosts: ['HOSTS-CASE-INSENSITIVE.fields.test']}}]}",
        {},
        {"host_port": ":8080"},
    ),
    ("notHosts", "{to: [{operation: {notHosts: ['*:8080']}}]}", {}, {"host_port": ":8080"}),
    (
        "ports",
        "{to: [{operation: {ports: ['8080']}}]}",
        {"destination_port": 8080},
        {"destination_port": 9090},
    ),
    (
        "notPorts",
        "{to: [{operation: {notPorts: ['9090']}}]}",
        {"destination_port": 8080},
        {"destination_port": 9090},
    ),
    ("methods", "{to: [{operation: {methods: [GET]}}]}", {"method": "GET"}, {"method": "get"}),
    (
        "notMethods",
        "{to: [{operation: {notMethods: [DELETE]}}]}",
        {"method": "GET"},
        {"method": "DELETE"},
    ),
    (
        "paths-exact-ignores-query",
        "{to: [{operation: {paths: [/a/b]}}]}",
        {"path": "/a/b?x=1"},
        {"path": "/a/B"},
    ),
    (
        "paths-normalized",
        "{to: [{operation: {notPaths: [/admin*]}}]}",
        {"path": "/public/x"},
        {"path": "/public/../admin"},
    ),
    (
        "paths-template",
        "{to: [{operation: {paths: ['/api/{*}/items']}}]}",
        {"path": "/api/v1/items"},
        {"path": "/api/v1/x/items"},
    ),
    (
        "paths-template-tail",
        "{to: [{operation: {paths: ['/files/{**}']}}]}",
        {"path": "/files/a/b/c"},
        {"path": "/file/a"},
    ),
    (
        "notPaths",
        "{to: [{operation: {notPaths: ['*.php']}}]}",
        {"path": "/x.html"},
        {"path": "/x.php"},
    ),
    (
        "when-header",
        "{when: [{key: 'request.headers[X-Env]', values: [prod-*]}]}",
        {"headers": {"x-env": "prod-eu"}},
        {"headers": {"x-env": "Prod-eu"}},
    ),
    (
        "when-header-notValues",
        "{when: [{key: 'request.headers[x-env]', notValues: [dev]}]}",
        {"headers": {"x-env": "prod"}},
        {"headers": {"x-env": "dev"}},
    ),
    (
        "when-source.ip",
        "{when: [{key: source.ip, values: [10.1.2.3]}]}",
        {"source_ip": "10.1.2.3"},
        {"source_ip": "10.1.2.9"},
    ),
    (
        "when-remote.ip",
        "{when: [{key: remote.ip, values: [198.51.100.0/24]}]}",
        {"headers": {"x-forwarded-for": "198.51.100.4"}},
        {"headers": {"x-forwarded-for": "198.51.101.4"}},
    ),
    (
        "when-source.namespace",
        "{when: [{key: source.namespace, values: [shop]}]}",
        {"principal": P},
        {"principal": OTHER},
    ),
    (
        "when-source.principal",
        "{when: [{key: source.principal, values: ['*/sa/cart']}]}",
        {"principal": P},
        {"principal": OTHER},
    ),
    (
        "when-request.auth.principal",
        "{when: [{key: request.auth.principal, values: ['https://issuer.test/*']}]}",
        {"claims": {}},
        {},
    ),
    (
        "when-audiences",
        "{when: [{key: request.auth.audiences, values: [api]}]}",
        {"claims": {"aud": ["web", "api"]}},
        {"claims": {"aud": "web"}},
    ),
    (
        "when-presenter",
        "{when: [{key: request.auth.presenter, values: [mobile]}]}",
        {"claims": {"azp": "mobile"}},
        {"claims": {"azp": "web"}},
    ),
    (
        "when-claim",
        "{when: [{key: 'request.auth.claims[role]', values: [admin]}]}",
        {"claims": {"role": "admin"}},
        {"claims": {"role": "user"}},
    ),
    (
        "when-claim-list",
        "{when: [{key: 'request.auth.claims[groups]', values: [ops]}]}",
        {"claims": {"groups": ["dev", "ops"]}},
        {"claims": {"groups": ["dev"]}},
    ),
    (
        "when-claim-nested",
        "{when: [{key: 'request.auth.claims[realm][role]', values: [admin]}]}",
        {"claims": {"realm": {"role": "admin"}}},
        {"claims": {"role": "admin"}},
    ),
    (
        "when-claim-scope-split",
        "{when: [{key: 'request.auth.claims[scope]', values: [write]}]}",
        {"claims": {"scope": "read write"}},
        {"claims": {"scope": "read"}},
    ),
    (
        "when-claim-number-never",
        "{when: [{key: 'request.auth.claims[level]', values: ['3']}]}",
        {"claims": {"level": "3"}},
        {"claims": {"level": 3}},
    ),
    (
        "when-destination.ip",
        "{when: [{key: destination.ip, values: [10.0.0.0/8]}]}",
        {"destination_ip": "10.9.9.9"},
        {"destination_ip": "192.168.1.1"},
    ),
    (
        "when-destination.port",
        "{when: [{key: destination.port, values: ['8443']}]}",
        {"destination_port": 8443},
        {"destination_port": 8080},
    ),
    (
        "when-sni",
        "{when: [{key: connection.sni, values: ['*.shop.test']}]}",
        {"sni": "api.shop.test"},
        {"sni": "api.web.test"},
    ),
    ("empty-rule-matches-all", "{}", {}, {"deny_all": True}),
]


def _tenant_host(name: str) -> str:
    return f"{name.lower()}.fields.test"


@pytest.fixture(scope="module")
def fields_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("fields")
    docs = []
    for i, (name, rule, _, _) in enumerate(CASES):
        tenant = f"c{i}"
        docs.append(
            tenant_yaml(tenant, match=f"{{hosts: ['{_tenant_host(name)}']}}", issuer=ISSUER)
        )
        docs.append(policy_yaml("p", tenant, f"  rules: [{rule}]"))
    (root / "fields.yaml").write_text("---\n".join(docs))
    with serving(["--policies", str(root)]) as server:
        yield server


def _request(name: str, spec: dict[str, Any]) -> Any:
    spec = dict(spec)
    if spec.pop("deny_all", False):  # the near miss of "matches all" is another tenant's deny
        return check_request(host="nobody.fields.test")
    headers = dict(spec.pop("headers", {}))
    claims = spec.pop("claims", None)
    if claims is not None:
        headers["authorization"] = "Bearer " + ISSUER.token(**claims)
    host = _tenant_host(name) + spec.pop("host_port", "")
    return check_request(host=host, headers=headers, **spec)


@pytest.mark.parametrize(("name", "rule", "hit", "miss"), CASES, ids=[c[0] for c in CASES])
def test_field_match_and_near_miss(
    fields_server: ServerProcess, name: str, rule: str, hit: dict[str, Any], miss: dict[str, Any]
) -> None:
    """The matching request is allowed by the field's rule; the near miss is not."""
    got = json_format.MessageToDict(fields_server.check(_request(name, hit)).dynamic_metadata)
    assert (got["decision"], got["reason"]) == ("allow", "allowed"), got
    got = json_format.MessageToDict(fields_server.check(_request(name, miss)).dynamic_metadata)
    assert got["decision"] == "deny", got
