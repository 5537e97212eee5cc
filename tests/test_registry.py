"""The registry keeps a tenant whole: last good version, or unavailable when it has none."""

from __future__ import annotations

from extauthz.authn import JwksCache
from extauthz.documents import load_documents
from extauthz.errors import DocumentError, Reason
from extauthz.model import RequestView
from extauthz.registry import Registry
from extauthz.sources import TenantSource
from extauthz.store.files import sources_of
from tests.helpers import policy_yaml, tenant_yaml

GOOD = (
    tenant_yaml("shop", match="{hosts: [shop.test]}")
    + "---\n"
    + policy_yaml("p", "shop", "  rules:\n  - to:\n    - operation: {paths: [/a]}")
)
BAD = GOOD.replace("paths:", "pathz:")


def source(text: str, version: str) -> TenantSource:
    found = sources_of(load_documents(text, "shop.yaml"))["shop"]
    return TenantSource("shop", version, found.documents)


def refusal(registry: Registry, host: str, dest_ns: str | None = None) -> Reason | None:
    view = RequestView(host=host)
    return registry.snapshot.route(view, dest_ns).refusal


def loaded(*sources: TenantSource) -> Registry:
    registry = Registry(JwksCache())
    catch_all = sources_of(load_documents(tenant_yaml("everything"), "e.yaml"))
    registry.replace_all({**catch_all, **{s.tenant: s for s in sources}})
    return registry


def test_first_load_failure_is_unavailable_not_absent() -> None:
    """A tenant failing its first compile keeps its host; the catch-all does not take it."""
    registry = loaded(source(BAD, "1"))
    assert registry.snapshot.tenants["shop"].unavailable
    assert refusal(registry, "shop.test") is Reason.TENANT_UNAVAILABLE
    assert refusal(registry, "other.test") is None


def test_good_version_replaces_the_stand_in() -> None:
    """The first version that compiles is served in place of the unavailable stand-in."""
    registry = loaded(source(BAD, "1"))
    registry.update("shop", source(GOOD, "2"))
    assert refusal(registry, "shop.test") is None
    assert registry.snapshot.tenants["shop"].version == "2"


def test_failed_update_keeps_the_whole_last_good_version() -> None:
    """A failing update leaves the good version in place, not a stand-in."""
    registry = loaded(source(GOOD, "1"))
    good = registry.snapshot.tenants["shop"]
    registry.update("shop", source(BAD, "2"))
    assert registry.snapshot.tenants["shop"] is good
    assert registry.stats.rejected == 1


def test_rejected_record_claims_its_namespace_through_the_full_load() -> None:
    """A record rejected before the full load stays unavailable after it; a delete removes it."""
    registry = Registry(JwksCache())
    registry.reject("payments", "3", DocumentError("documents do not match their digest"))
    catch_all = sources_of(load_documents(tenant_yaml("everything"), "e.yaml"))
    registry.replace_all(catch_all)
    assert refusal(registry, "x.test", "payments") is Reason.TENANT_UNAVAILABLE
    registry.update("payments", None)
    assert refusal(registry, "x.test", "payments") is None


def test_file_store_reject_makes_no_stand_in() -> None:
    """A file's parse error (tenant ``*``) is counted but names no tenant to stand in for."""
    registry = loaded(source(GOOD, "1"))
    registry.reject("*", "policies/broken.yaml", DocumentError("invalid YAML"))
    assert set(registry.snapshot.tenants) == {"shop", "everything"}
    assert registry.stats.rejected == 1
