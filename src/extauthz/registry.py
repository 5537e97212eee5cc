"""The registry: one immutable snapshot of every compiled tenant, swapped whole on change.

The hot path reads ``registry.snapshot`` once per Check and never takes a lock: a change
builds a new snapshot off to the side and rebinds the attribute in one assignment. A tenant
whose new documents fail to compile (or would clash with another tenant's match) keeps its
last good version, whole; the failure is logged and counted, never served. A tenant that has
no good version yet (its first documents fail, or its store record cannot be decoded) is held
as *unavailable*: it keeps claiming its routes, and its requests are denied with
``tenant_unavailable`` instead of falling to another tenant.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import structlog

from extauthz.authn import JwksCache
from extauthz.catalog import CompiledTenant, compile_tenant, unavailable_tenant
from extauthz.errors import Reason
from extauthz.loader import route_conflict
from extauthz.model import RequestView
from extauthz.sources import TenantSource
from extauthz.tenancy import TenantConflict, TenantRouter, TenantSpec, check_tenant_name

__all__ = ["Registry", "Routing", "Snapshot"]

log = structlog.get_logger("extauthz.registry")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All tenants at one moment, with the router that picks among them."""

    tenants: Mapping[str, CompiledTenant] = field(default_factory=dict)
    router: TenantRouter = field(default_factory=lambda: TenantRouter(()))

    @classmethod
    def build(cls, tenants: Mapping[str, CompiledTenant]) -> Snapshot:
        """Raises TenantConflict when two tenants claim the same requests."""
        return cls(dict(tenants), TenantRouter(t.spec for t in tenants.values()))

    def with_tenant(self, tenants: Mapping[str, CompiledTenant], name: str) -> Snapshot:
        """``tenants`` (this snapshot with ``name`` changed): the router is reused when
        ``name`` routes exactly as before (the router only yields names), else rebuilt."""
        old, new = self.tenants.get(name), tenants.get(name)
        if old is not None and new is not None and old.spec.match == new.spec.match:
            return Snapshot(dict(tenants), self.router)
        return Snapshot.build(tenants)

    def route(self, view: RequestView, dest_ns: str | None) -> Routing:
        spec, matched = self.router.route(view.host, dest_ns, view.headers)
        tenant = None if spec is None else self.tenants.get(spec.name)
        if tenant is None:
            return Routing(None, Reason.TENANT_UNKNOWN, "no tenant matches")
        if tenant.unavailable:
            return Routing(tenant, Reason.TENANT_UNAVAILABLE, f"not loaded: {tenant.unavailable}")
        if not matched:
            detail = f"host or headers do not match {tenant.name!r}, owner of namespace {dest_ns!r}"
            return Routing(tenant, Reason.TENANT_MISMATCH, detail)
        return Routing(tenant)


class Routing(NamedTuple):
    """The tenant of a request, or why it cannot decide (``refusal``, with a detail for logs;
    ``tenant`` is still named when one owns the request)."""

    tenant: CompiledTenant | None
    refusal: Reason | None = None
    detail: str = ""


@dataclass(slots=True)
class Stats:
    """Counters read by health and metrics."""

    loads: int = 0
    updates: int = 0
    rejected: int = 0
    last_change: float = 0.0
    last_error: str = ""


class Registry:
    """Holds the current snapshot; a store reports changes to it (it is the store's Sink)."""

    def __init__(self, jwks: JwksCache, *, clock: Callable[[], float] = time.time) -> None:
        self.snapshot = Snapshot()
        self.ready = False  # a first full load has happened
        self.connected = True
        self.disconnected_since: float | None = None  # clock() when the store went away
        self.stats = Stats()
        self._jwks = jwks
        self._clock = clock
        self._listeners: list[Callable[[Registry], None]] = []

    def subscribe(self, listener: Callable[[Registry], None]) -> None:
        """Call ``listener`` after every swap and connection change."""
        self._listeners.append(listener)

    # -- Sink -------------------------------------------------------------------------

    def replace_all(self, sources: Mapping[str, TenantSource]) -> None:
        tenants = dict(self.snapshot.tenants)
        # Gone: every tenant the load does not name, except one the store reported unreadable
        # (``reject``) during this load: it keeps its routes, unavailable.
        for name in [n for n in tenants if n not in sources and not tenants[n].unavailable]:
            del tenants[name]
        # A full load allocates the whole policy set at once: the cyclic collector would walk
        # the growing heap again and again (about half the load time of 10k tenants). It is
        # off for the load; afterwards what was loaded moves to the permanent generation, so
        # no later collection walks it (no pause of the event loop proportional to the
        # policy set). Compiled tenants hold no reference cycles: refcounting frees them.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for name in sorted(sources):
                source = sources[name]
                current = tenants.get(name)
                if current is not None and current.version == source.version and source.version:
                    continue
                tenants[name] = self._load(source, current)
        finally:
            gc.freeze()  # else the first collection walks everything allocated above
            if collecting:
                gc.enable()
        self._swap(self._resolve_conflicts(tenants))
        gc.freeze()
        self.stats.loads += 1
        self.ready = True
        log.info("policies loaded", tenants=len(self.snapshot.tenants))
        self._notify()

    def update(self, tenant: str, source: TenantSource | None) -> None:
        tenants = dict(self.snapshot.tenants)
        if source is None:
            if tenants.pop(tenant, None) is not None:
                log.info("tenant deleted", tenant=tenant)
        else:
            current = tenants.get(tenant)
            compiled = self._load(source, current)
            if compiled is current:
                return
            tenants[tenant] = compiled
        try:
            snapshot = self.snapshot.with_tenant(tenants, tenant)
        except TenantConflict as exc:
            self._count_reject(tenant, source.version if source else "", exc)
            return
        self._swap(snapshot)
        self.stats.updates += 1
        if source is not None:
            log.info("tenant updated", tenant=tenant, version=source.version)
        self._notify()

    def reject(
        self,
        tenant: str,
        version: str,
        error: Exception,
        routes: TenantSpec | None = None,
        *,
        hold: bool = True,
    ) -> None:
        self._count_reject(tenant, version, error)
        current = self.snapshot.tenants.get(tenant)
        if not hold or not check_tenant_name(tenant):
            return  # only reported, or not one tenant's record
        if current is not None and not current.unavailable:
            return  # the last good version stays
        stand_in = unavailable_tenant(
            tenant, (), error, self._jwks, version=version, now=self._clock(), spec=routes
        )
        tenants = {**self.snapshot.tenants, tenant: stand_in}
        try:
            snapshot = self.snapshot.with_tenant(tenants, tenant)
        except TenantConflict as exc:
            self._count_reject(tenant, version, exc)
            return
        self._swap(snapshot)
        self._notify()

    def set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self.disconnected_since = None if connected else self._clock()
            log.warning("store connection changed", connected=connected)
            self._notify()

    @property
    def stale_seconds(self) -> float:
        """How long the store has been unreachable (0 while connected): the age, at most,
        of the rules being served."""
        if self.disconnected_since is None:
            return 0.0
        return max(0.0, self._clock() - self.disconnected_since)

    # -- internals --------------------------------------------------------------------

    def _load(self, source: TenantSource, current: CompiledTenant | None) -> CompiledTenant:
        """``source`` compiled; if it fails, ``current`` when it is a good version, else an
        unavailable stand-in that keeps the tenant's routes."""
        try:
            compiled = compile_tenant(source, self._jwks, now=self._clock())
        except Exception as exc:
            self._count_reject(source.tenant, source.version, exc)
            if current is not None and not current.unavailable:
                return current
            return unavailable_tenant(
                source.tenant,
                source.documents,
                exc,
                self._jwks,
                version=source.version,
                now=self._clock(),
            )
        for warning in compiled.warnings:
            log.warning("policy warning", tenant=source.tenant, warning=warning)
        self._jwks.track(compiled.authenticator.jwks_timeouts)
        return compiled

    def _resolve_conflicts(self, tenants: dict[str, CompiledTenant]) -> Snapshot:
        """Build a snapshot; a tenant that clashes keeps its previous version (or is left out)."""
        try:
            return Snapshot.build(tenants)
        except TenantConflict:
            pass
        accepted: dict[str, CompiledTenant] = {}
        old = self.snapshot.tenants
        # Tenants unchanged since the last snapshot go first: they were consistent.
        order = sorted(tenants, key=lambda n: (old.get(n) is not tenants[n], n))
        for name in order:
            trial = {**accepted, name: tenants[name]}
            conflict = route_conflict(t.spec for t in trial.values())
            if conflict is not None:
                self._count_reject(name, tenants[name].version, conflict)
                if name in old and old[name] is not tenants[name]:
                    accepted[name] = old[name]
                continue
            accepted[name] = tenants[name]
        return Snapshot.build(accepted)

    def _swap(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._jwks.retain(u for t in snapshot.tenants.values() for u in t.authenticator.jwks_uris)
        self.stats.last_change = self._clock()

    def _count_reject(self, tenant: str, version: str, error: Exception) -> None:
        current = self.snapshot.tenants.get(tenant)
        kept = current is not None and not current.unavailable
        self.stats.rejected += 1
        self.stats.last_error = f"{tenant}@{version}: {error}"
        log.error(
            "tenant rejected; keeping the last good version"
            if kept
            else "tenant rejected; it has no good version and is unavailable",
            tenant=tenant,
            version=version,
            error=str(error),
            kept=kept,
        )

    def _notify(self) -> None:
        for listener in self._listeners:
            listener(self)
