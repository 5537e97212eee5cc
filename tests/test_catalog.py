"""catalog and loader: one tenant's documents compiled once; a set compiled and routed."""

from __future__ import annotations

import pytest

from extauthz.authn import JwksCache
from extauthz.catalog import compile_documents, compile_tenant
from extauthz.documents import Document, load_documents
from extauthz.errors import DocumentError
from extauthz.loader import compile_all, route_conflict
from extauthz.sources import TenantSource
from extauthz.tenancy import TenantConflict
from tests.helpers import policy_yaml, tenant_yaml

READS = "  action: ALLOW\n  rules:\n  - to:\n    - operation: {methods: [GET]}"


def docs(*texts: str) -> list[Document]:
    return [d for text in texts for d in load_documents(text, "t.yaml")]


def test_tenant_with_policies() -> None:
    """A Tenant document and its policies compile into one tenant with its settings."""
    tenant = compile_documents(
        "shop",
        docs(tenant_yaml("shop", mtls="STRICT"), "---\n", policy_yaml("reads", "shop", READS)),
        JwksCache(),
        version="7",
    )
    assert (tenant.name, tenant.version, len(tenant.policies)) == ("shop", "7", 1)
    assert tenant.spec.mtls_strict
    assert not tenant.spec.implicit


def test_policies_alone_make_an_implicit_tenant() -> None:
    """Policies without a Tenant document make an implicit tenant of their namespace."""
    tenant = compile_documents("shop", docs(policy_yaml("reads", "shop", READS)), JwksCache())
    assert tenant.spec.implicit
    assert tenant.name == "shop"


def test_source_version_and_load_time_are_kept() -> None:
    """compile_tenant carries the source's version and the load time."""
    source = TenantSource("shop", "abc", tuple(docs(policy_yaml("reads", "shop", READS))))
    tenant = compile_tenant(source, JwksCache(), now=12.5)
    assert (tenant.version, tenant.loaded_at) == ("abc", 12.5)


def test_bad_tenant_name_names_the_field() -> None:
    """A tenant name that is not a DNS label is refused, naming metadata.namespace."""
    with pytest.raises(DocumentError, match=r"metadata\.namespace"):
        compile_documents("Shop_1", docs(policy_yaml("reads", "Shop_1", READS)), JwksCache())


def test_document_of_another_tenant_is_refused() -> None:
    """A document of another tenant in the group is an error naming both tenants."""
    with pytest.raises(DocumentError, match="belongs to tenant 'other'"):
        compile_documents("shop", docs(policy_yaml("reads", "other", READS)), JwksCache())


def test_compile_all_keeps_good_tenants_and_reports_bad_ones() -> None:
    """compile_all compiles every tenant it can and returns an error for each other."""
    bad = policy_yaml("bad", "broken", "  action: CUSTOM\n  rules: [{}]")
    tenants, errors = compile_all(
        docs(policy_yaml("reads", "shop", READS), "---\n", bad), JwksCache()
    )
    assert list(tenants) == ["shop"]
    assert len(errors) == 1
    assert "spec.action" in str(errors[0])


def test_compile_all_reports_clashing_routes() -> None:
    """Two tenants claiming the same host are a TenantConflict, and both still compile."""
    texts = (
        tenant_yaml("one", match="{hosts: [a.test]}"),
        "---\n",
        tenant_yaml("two", match="{hosts: [a.test]}"),
    )
    tenants, errors = compile_all(docs(*texts), JwksCache())
    assert sorted(tenants) == ["one", "two"]
    assert [type(e) for e in errors] == [TenantConflict]
    assert route_conflict(t.spec for t in tenants.values()) is not None
    assert route_conflict([tenants["one"].spec]) is None
