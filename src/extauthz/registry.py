"""The registry: every tenant, compiled, with the router that picks among them.

The hot path reads ``registry.snapshot`` once per Check and never takes a lock. A change is
made in place, on the event loop, by one synchronous call that completes before the next
Check: a Check sees a tenant either before or after a change, whole. One tenant's change
costs O(that tenant): its entry in the table, its routes in the router (``TenantRouter.put``,
conflicts refused before anything changes) and its jwksUris' use counts. A full load builds
a new table and router and swaps them in one assignment.

A tenant whose new documents fail to compile (or would clash with another tenant's match)
keeps its last good version, whole; the failure is logged and counted, never served. A
tenant that has no good version yet (its first documents fail, or its store record cannot
be decoded) is held as *unavailable*: it keeps claiming its routes, and its requests are
denied with ``tenant_unavailable`` instead of falling to another tenant.

A full load may hand over *deferred* tenants (``DeferredSource``: routes now, documents
later): they are routed at once and compiled on their first Check or by ``settle`` in the
background, whichever comes first; never served half compiled. One that fails to decode or
compile is held unavailable on the routes its record stated, and the failure is logged and
counted like any other.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple, TypeVar, overload

import structlog

from extauthz.authn import JwksCache
from extauthz.catalog import CompiledTenant, DeferredSource, compile_tenant, unavailable_tenant
from extauthz.errors import Reason
from extauthz.memtrim import trim
from extauthz.model import RequestView
from extauthz.sources import TenantSource
from extauthz.tenancy import TenantConflict, TenantRouter, TenantSpec, check_tenant_name

__all__ = ["Registry", "Routing", "Snapshot", "TenantTable"]

log = structlog.get_logger("extauthz.registry")

_T = TypeVar("_T")
SLICE_SECONDS: Final = 0.02  # background compiling holds the event loop this long at most
PROGRESS_EVERY: Final = 2.0  # seconds between progress lines of a background compile


class TenantTable(Mapping[str, CompiledTenant]):
    """Every tenant by name: the compiled ones, and the deferred ones, compiled when first
    looked up (``resolve``). Iterating or counting compiles nothing."""

    __slots__ = ("_resolve", "compiled", "pending")

    def __init__(
        self,
        compiled: Mapping[str, CompiledTenant] | None = None,
        resolve: Callable[[str], CompiledTenant] | None = None,
    ) -> None:
        self.compiled: dict[str, CompiledTenant] = dict(compiled or {})
        self.pending: dict[str, DeferredSource] = {}
        self._resolve = resolve

    def __getitem__(self, name: str) -> CompiledTenant:
        tenant = self.compiled.get(name)
        if tenant is None:
            if name in self.pending and self._resolve is not None:
                return self._resolve(name)
            raise KeyError(name)
        return tenant

    @overload
    def get(self, name: str, /) -> CompiledTenant | None: ...
    @overload
    def get(self, name: str, /, default: CompiledTenant | _T) -> CompiledTenant | _T: ...

    def get(self, name: str, /, default: object = None) -> object:
        tenant = self.compiled.get(name)
        if tenant is not None:
            return tenant
        if name in self.pending and self._resolve is not None:
            return self._resolve(name)
        return default

    def __contains__(self, name: object) -> bool:
        return name in self.compiled or name in self.pending

    def __iter__(self) -> Iterator[str]:
        return iter([*self.compiled, *self.pending])  # a lookup may move a name

    def __len__(self) -> int:
        return len(self.compiled) + len(self.pending)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All tenants, with the router that picks among them."""

    tenants: TenantTable = field(default_factory=TenantTable)
    router: TenantRouter = field(default_factory=TenantRouter)

    @classmethod
    def build(cls, tenants: Mapping[str, CompiledTenant]) -> Snapshot:
        """Raises TenantConflict when two tenants claim the same requests."""
        return cls(TenantTable(tenants), TenantRouter(t.spec for t in tenants.values()))

    def route(self, view: RequestView, dest_ns: str | None) -> Routing:
        spec, matched = self.router.route(view.host, dest_ns, view.headers)
        tenant = None if spec is None else self.tenants.compiled.get(spec.name)
        if tenant is None and spec is not None and spec.name in self.tenants.pending:
            # Deferred: compiled now, before it decides anything. Its documents may route it
            # otherwise than its record said, so the request is routed again.
            self.tenants.get(spec.name)
            if spec.name not in self.tenants.pending:
                return self.route(view, dest_ns)
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


Entry = CompiledTenant | DeferredSource


class Registry:
    """Holds the current snapshot; a store reports changes to it (it is the store's Sink)."""

    def __init__(self, jwks: JwksCache, *, clock: Callable[[], float] = time.time) -> None:
        self.snapshot = Snapshot(TenantTable(resolve=self._compile_deferred))
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

    @property
    def pending(self) -> int:
        """How many tenants a full load deferred are not compiled yet."""
        return len(self.snapshot.tenants.pending)

    def compiled_tenants(self) -> list[tuple[str, CompiledTenant]]:
        """The compiled tenants, by name, without compiling any (safe from another thread)."""
        for _ in range(3):
            try:
                return sorted(self.snapshot.tenants.compiled.items())
            except RuntimeError:  # changed by the event loop while being copied
                continue
        return []

    # -- Sink -------------------------------------------------------------------------

    def replace_all(self, sources: Mapping[str, TenantSource | DeferredSource]) -> None:
        table = self.snapshot.tenants
        old: dict[str, Entry] = {**table.pending, **table.compiled}
        # Gone: every tenant the load does not name, except one the store reported unreadable
        # (``reject``) during this load: it keeps its routes, unavailable.
        entries: dict[str, Entry] = {
            name: t for name, t in table.compiled.items() if name not in sources and t.unavailable
        }
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
                current = old.get(name)
                if current is not None and current.version == source.version and source.version:
                    entries[name] = current
                    continue
                good = current if isinstance(current, CompiledTenant) else None
                if isinstance(source, DeferredSource) and (good is None or good.unavailable):
                    entries[name] = source  # compiled on first use or by settle()
                else:
                    entries[name] = self._load(source, good)
        finally:
            gc.freeze()  # else the first collection walks everything allocated above
            if collecting:
                gc.enable()
        self._swap_all(self._resolve_conflicts(entries, old))
        gc.freeze()
        trim()  # what the load decoded and freed
        self.stats.loads += 1
        self.ready = True
        log.info("policies loaded", tenants=len(self.snapshot.tenants), deferred=self.pending)
        self._notify()

    def update(self, tenant: str, source: TenantSource | None) -> None:
        table = self.snapshot.tenants
        if source is None:
            if tenant in table:
                self._remove(tenant)
                log.info("tenant deleted", tenant=tenant)
        else:
            current = table.get(tenant)  # a deferred version is compiled: it may be the good one
            compiled = self._load(source, current)
            if compiled is current:
                return
            try:
                self._install(tenant, compiled)
            except TenantConflict as exc:
                self._count_reject(tenant, source.version, exc)
                return
        self.stats.last_change = self._clock()
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
        named = check_tenant_name(tenant)
        current = self.snapshot.tenants.get(tenant) if named else None
        self._count_reject(tenant, version, error)
        if not hold or not named:
            return  # only reported, or not one tenant's record
        if current is not None and not current.unavailable:
            return  # the last good version stays
        stand_in = unavailable_tenant(
            tenant, (), error, self._jwks, version=version, now=self._clock(), spec=routes
        )
        try:
            self._install(tenant, stand_in)
        except TenantConflict as exc:
            self._count_reject(tenant, version, exc)
            return
        self.stats.last_change = self._clock()
        self._notify()

    def set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self.disconnected_since = None if connected else self._clock()
            log.warning("store connection changed", connected=connected)
            self._notify()

    async def settle(self) -> None:
        """Compile every deferred tenant, in name order, a slice of at most SLICE_SECONDS at a
        time, yielding to the event loop in between; progress is logged every few seconds."""
        table = self.snapshot.tenants
        names = sorted(table.pending, reverse=True)  # popped from the end: name order
        if not names:
            return
        total, rejected = len(names), self.stats.rejected
        start = last = time.monotonic()
        log.info("compiling tenants in the background", tenants=total)
        while names:
            if self.snapshot.tenants is not table:
                return  # a new full load took over
            collecting = gc.isenabled()
            gc.disable()  # as in replace_all; what a slice compiled is frozen after it
            try:
                deadline = time.monotonic() + SLICE_SECONDS
                while names:  # at least one tenant a slice
                    name = names.pop()
                    if name in table.pending:
                        table.get(name)
                    if time.monotonic() >= deadline:
                        break
            finally:
                gc.freeze()
                if collecting:
                    gc.enable()
            await asyncio.sleep(0)
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                trim()  # a few ms: the heap's peak stays near what is kept
                log.info(
                    "compiling tenants",
                    compiled=total - len(table.pending),
                    of=total,
                    elapsed=round(now - start, 1),
                )
        trim()  # the documents decoded and freed tenant by tenant
        log.info(
            "tenants compiled",
            tenants=total,
            rejected=self.stats.rejected - rejected,
            seconds=round(time.monotonic() - start, 2),
        )
        self._notify()

    @property
    def stale_seconds(self) -> float:
        """How long the store has been unreachable (0 while connected): the age, at most,
        of the rules being served."""
        if self.disconnected_since is None:
            return 0.0
        return max(0.0, self._clock() - self.disconnected_since)

    # -- internals --------------------------------------------------------------------

    def _load(
        self,
        source: TenantSource | DeferredSource,
        current: CompiledTenant | None,
        routes: TenantSpec | None = None,
    ) -> CompiledTenant:
        """``source`` compiled; if it fails, ``current`` when it is a good version, else an
        unavailable stand-in that keeps ``routes`` (default: the tenant's own routes)."""
        try:
            if isinstance(source, DeferredSource):
                source = source.decode()
            compiled = compile_tenant(source, self._jwks, now=self._clock())
        except Exception as exc:
            self._count_reject(source.tenant, source.version, exc)
            if current is not None and not current.unavailable:
                return current
            return unavailable_tenant(
                source.tenant,
                () if isinstance(source, DeferredSource) else source.documents,
                exc,
                self._jwks,
                version=source.version,
                now=self._clock(),
                spec=routes if routes is not None else _routes(source),
            )
        for warning in compiled.warnings:
            log.warning("policy warning", tenant=source.tenant, warning=warning)
        return compiled

    def _compile_deferred(self, name: str) -> CompiledTenant:
        """Compile the deferred tenant ``name`` now and serve it (the table's resolver)."""
        table = self.snapshot.tenants
        deferred = table.pending.get(name)
        if deferred is None:  # asked through a table a full load has replaced since
            return table[name]
        compiled = self._load(deferred, None, deferred.routes)
        try:
            self._install(name, compiled)
        except TenantConflict as exc:
            # Its documents route it otherwise than its record said, onto another tenant.
            self._count_reject(name, deferred.version, exc)
            compiled = unavailable_tenant(
                name,
                (),
                exc,
                self._jwks,
                version=deferred.version,
                now=self._clock(),
                spec=deferred.routes,
            )
            self._install(name, compiled)  # the routes it already has: no conflict
        return compiled

    def _install(self, name: str, tenant: CompiledTenant) -> None:
        """Serve ``tenant`` as ``name``. Raises TenantConflict, changing nothing, when its
        routes clash with another tenant's. O(the tenant)."""
        table, router = self.snapshot.tenants, self.snapshot.router
        routed = router.get(name)
        if routed is None or routed.match != tenant.spec.match:
            router.put(tenant.spec)
        old = table.compiled.get(name)
        table.compiled[name] = tenant
        table.pending.pop(name, None)
        self._jwks.acquire(tenant.authenticator.jwks_timeouts)
        if old is not None:
            self._jwks.release(old.authenticator.jwks_uris)

    def _remove(self, name: str) -> None:
        table = self.snapshot.tenants
        self.snapshot.router.discard(name)
        table.pending.pop(name, None)
        old = table.compiled.pop(name, None)
        if old is not None:
            self._jwks.release(old.authenticator.jwks_uris)

    def _resolve_conflicts(self, entries: dict[str, Entry], old: Mapping[str, Entry]) -> Snapshot:
        """A snapshot of ``entries``; a tenant that clashes keeps its previous version (or is
        left out). Tenants unchanged since the last snapshot go first (they were consistent),
        then by name; each is routed if it clashes with none routed before it."""
        table = TenantTable(resolve=self._compile_deferred)
        router = TenantRouter()
        order = sorted(entries, key=lambda n: (old.get(n) is not entries[n], n))
        for name in order:
            entry = entries[name]
            try:
                router.put(_routes_of(entry))
            except TenantConflict as conflict:
                self._count_reject(name, entry.version, conflict)
                previous = old.get(name)
                if previous is None or previous is entry:
                    continue
                if router.conflict(_routes_of(previous)) is not None:
                    continue
                router.put(_routes_of(previous))
                entry = previous
            if isinstance(entry, DeferredSource):
                table.pending[name] = entry
            else:
                table.compiled[name] = entry
        return Snapshot(table, router)

    def _swap_all(self, snapshot: Snapshot) -> None:
        """Serve ``snapshot`` in place of the current one (a full load)."""
        previous = self.snapshot.tenants.compiled.values()
        for tenant in snapshot.tenants.compiled.values():
            self._jwks.acquire(tenant.authenticator.jwks_timeouts)
        for tenant in previous:
            self._jwks.release(tenant.authenticator.jwks_uris)
        self.snapshot = snapshot
        self.stats.last_change = self._clock()

    def _count_reject(self, tenant: str, version: str, error: Exception) -> None:
        current = self.snapshot.tenants.compiled.get(tenant)
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


def _routes_of(entry: Entry) -> TenantSpec:
    return entry.routes if isinstance(entry, DeferredSource) else entry.spec


def _routes(source: TenantSource | DeferredSource) -> TenantSpec | None:
    """The routes to hold a failed source on: a deferred one's stated routes; for documents,
    None (``unavailable_tenant`` finds them in the documents)."""
    return source.routes if isinstance(source, DeferredSource) else None
