"""The store protocol: a store finds tenant documents and tells a sink what changed.

A store is the active side. ``run`` loads everything once (``Sink.replace_all``), then keeps
watching and reports each changed tenant (``Sink.update``) until cancelled. The sink (the
registry) compiles what it is given and keeps the last good version of a tenant when a new
one fails: a store never has to decide whether a document is good enough to serve.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Protocol

from extauthz.catalog import DeferredSource
from extauthz.sources import TenantSource
from extauthz.tenancy import TenantSpec

__all__ = ["Sink", "Store"]


class Sink(Protocol):
    """What a store reports to (the registry)."""

    def replace_all(self, sources: Mapping[str, TenantSource | DeferredSource]) -> None:
        """A full load: these are all the tenants there are (others are gone). A deferred
        source is routed now and compiled on its first use or by ``settle``."""

    async def settle(self) -> None:
        """Compile what the last full load deferred, yielding to the event loop as it goes."""

    def update(self, tenant: str, source: TenantSource | None) -> None:
        """One tenant changed (None: deleted)."""

    def reject(
        self,
        tenant: str,
        version: str,
        error: Exception,
        routes: TenantSpec | None = None,
        *,
        hold: bool = True,
    ) -> None:
        """A tenant's stored documents could not be parsed; the last good version stays.
        Without one, the tenant is unavailable on ``routes`` (default: its namespace) when
        ``hold``; ``hold=False`` only reports (a refused record of a deleted tenant)."""

    def set_connected(self, connected: bool) -> None:
        """Whether the store is reachable (for health and staleness)."""


class Store(abc.ABC):
    """A source of tenant documents."""

    name: str = "store"

    @abc.abstractmethod
    async def run(self, sink: Sink) -> None:
        """Load everything into ``sink``, then report changes until cancelled."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
