"""Tenants a full load defers: routed at once, compiled whole on first use or by ``settle``.

A deferred tenant never serves a partial compile: the Check that first reaches it compiles
it before deciding. One whose documents fail to decode or compile is unavailable (its own
requests denied, ``tenant_unavailable``), counted and logged; one whose documents route
otherwise than its record said is routed by its documents from then on.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from extauthz.authn import JwksCache
from extauthz.catalog import DeferredSource
from extauthz.documents import load_documents
from extauthz.errors import DocumentError, Location, Reason
from extauthz.model import RequestView
from extauthz.registry import Registry, Routing
from extauthz.sources import TenantSource
from extauthz.tenancy import TenantMatch, TenantSpec
from tests.helpers import policy_yaml, tenant_yaml

SHOP = (
    tenant_yaml("shop", match="{hosts: [shop.test]}")
    + "---\n"
    + policy_yaml("p", "shop", "  rules:\n  - to:\n    - operation: {paths: [/a]}")
)
EVERYTHING = tenant_yaml("everything")


class Decoder:
    """A record's documents, decoded when asked (counting how often), or an error."""

    def __init__(self, name: str, text: str | None, version: str = "1") -> None:
        self.name, self.text, self.version = name, text, version
        self.calls = 0

    def __call__(self) -> TenantSource:
        self.calls += 1
        if self.text is None:
            raise DocumentError("not valid JSON", location=Location(f"redis:{self.name}"))
        docs = tuple(load_documents(self.text, f"{self.name}.yaml"))
        return TenantSource(self.name, self.version, docs)


def deferred(
    name: str, text: str | None, hosts: tuple[str, ...], version: str = "1"
) -> DeferredSource:
    routes = TenantSpec(name, TenantMatch(hosts=hosts))
    return DeferredSource(name, version, routes, Decoder(name, text, version))


def loaded(*tenants: DeferredSource) -> Registry:
    registry = Registry(JwksCache())
    everything = TenantSource("everything", "1", tuple(load_documents(EVERYTHING, "e.yaml")))
    registry.replace_all({"everything": everything, **{t.tenant: t for t in tenants}})
    return registry


def route(registry: Registry, host: str) -> Routing:
    return registry.snapshot.route(RequestView(host=host), None)


def test_deferred_tenant_is_compiled_by_its_first_check() -> None:
    """Ready with the tenant only routed; the first Check compiles it (decoding once)."""
    shop = deferred("shop", SHOP, ("shop.test",))
    registry = loaded(shop)
    assert registry.ready
    assert registry.pending == 1
    assert isinstance(shop.decode, Decoder)
    assert shop.decode.calls == 0
    tenant, refusal, _ = route(registry, "shop.test")
    assert refusal is None
    assert tenant is not None
    assert (tenant.name, tenant.version, tenant.policies.policy_names) == ("shop", "1", ("shop/p",))
    assert registry.pending == 0
    route(registry, "shop.test")
    assert shop.decode.calls == 1


@pytest.mark.parametrize(
    "text",
    [None, SHOP.replace("paths:", "pathz:")],
    ids=["does not decode", "does not compile"],
)
def test_deferred_tenant_that_fails_is_unavailable(
    text: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """Its requests are denied tenant_unavailable (never the catch-all's), counted, logged."""
    caplog.set_level(logging.ERROR)
    registry = loaded(deferred("shop", text, ("shop.test",)))
    tenant, refusal, _ = route(registry, "shop.test")
    assert refusal is Reason.TENANT_UNAVAILABLE
    assert tenant is not None
    assert tenant.name == "shop"
    assert tenant.unavailable
    assert registry.stats.rejected == 1
    assert "shop@1" in registry.stats.last_error
    assert route(registry, "other.test").refusal is None


def test_documents_route_otherwise_than_the_record_said() -> None:
    """The record said old.test, the documents say shop.test: once compiled, shop.test is the
    tenant's, and old.test falls to the catch-all (the first request re-routed too)."""
    registry = loaded(deferred("shop", SHOP, ("old.test",)))
    tenant, refusal, _ = route(registry, "old.test")
    assert tenant is not None
    assert (tenant.name, refusal) == ("everything", None)
    assert registry.snapshot.tenants["shop"].spec.match.hosts == ("shop.test",)
    assert route(registry, "shop.test").tenant.name == "shop"  # type: ignore[union-attr]


def test_documents_that_clash_with_another_tenant_leave_it_unavailable() -> None:
    """Documents routing onto another tenant's host: refused, held on the record's routes."""
    other = deferred("other", SHOP.replace("shop", "other"), ("other.test",))
    registry = loaded(other, deferred("shop", SHOP.replace("shop.test", "other.test"), ("s.test",)))
    assert route(registry, "other.test").tenant.name == "other"  # type: ignore[union-attr]
    routing = route(registry, "s.test")
    assert routing.refusal is Reason.TENANT_UNAVAILABLE
    assert "other.test" in registry.stats.last_error
    assert route(registry, "other.test").tenant.name == "other"  # type: ignore[union-attr]


def test_failed_update_of_a_deferred_tenant_keeps_its_good_version() -> None:
    """The deferred version is the last good one: a failing update does not replace it."""
    registry = loaded(deferred("shop", SHOP, ("shop.test",)))
    bad = TenantSource("shop", "2", tuple(load_documents(SHOP.replace("paths:", "pathz:"), "s")))
    registry.update("shop", bad)
    assert registry.snapshot.tenants["shop"].version == "1"
    assert route(registry, "shop.test").refusal is None


def test_rejected_record_of_a_deferred_good_tenant_keeps_it() -> None:
    """A later undecodable record of a deferred tenant leaves the deferred version served."""
    registry = loaded(deferred("shop", SHOP, ("shop.test",)))
    registry.reject("shop", "2", DocumentError("documents do not match their digest"))
    assert registry.snapshot.tenants["shop"].version == "1"
    assert not registry.snapshot.tenants["shop"].unavailable


def test_deleted_before_compiled() -> None:
    """A deferred tenant deleted before its first use is gone, routes and all."""
    registry = loaded(deferred("shop", SHOP, ("shop.test",)))
    registry.update("shop", None)
    assert "shop" not in registry.snapshot.tenants
    assert route(registry, "shop.test").tenant.name == "everything"  # type: ignore[union-attr]


async def test_settle_compiles_every_deferred_tenant() -> None:
    """settle compiles the rest in name order; failures are counted, good ones served."""
    good = [deferred(f"t{i}", SHOP.replace("shop", f"t{i}"), (f"t{i}.test",)) for i in range(30)]
    registry = loaded(*good, deferred("zz", None, ("zz.test",)))
    changes: list[int] = []
    registry.subscribe(lambda r: changes.append(r.pending))
    assert registry.pending == 31
    await registry.settle()
    assert registry.pending == 0
    assert changes == [0]
    assert len(registry.snapshot.tenants.compiled) == 32
    assert registry.stats.rejected == 1
    assert registry.snapshot.tenants["zz"].unavailable
    assert registry.snapshot.tenants["t7"].policies.policy_names == ("t7/p",)
    assert all(isinstance(t.decode, Decoder) and t.decode.calls == 1 for t in good)


async def test_settle_yields_to_the_event_loop_between_slices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between two slices of compiling, other work runs (Checks, notifications): with slices
    of one tenant, a task running alongside sees each tenant compiled in turn."""
    monkeypatch.setattr("extauthz.registry.SLICE_SECONDS", 0.0)
    tenants = [deferred(f"t{i}", SHOP.replace("shop", f"t{i}"), (f"t{i}.test",)) for i in range(5)]
    registry = loaded(*tenants)
    seen: list[int] = []

    async def watch() -> None:
        while registry.pending:
            seen.append(registry.pending)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)  # the watcher sees the load before any compile
    await registry.settle()
    await watcher
    assert seen[0] == 5
    assert sorted(set(seen), reverse=True) == [5, 4, 3, 2, 1]
