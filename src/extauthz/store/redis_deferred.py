"""A full load's reading of tenant records: checked when read, decoded once, when compiled.

At a first load every record is read, but only checked (version, whole, digest: what tells a
damaged record) and routed by the ``match`` the writer stored beside it (the routes of those
same documents, as compiled by the writer). Its documents stay as their JSON text, a few KB,
until the registry compiles the tenant (on its first Check or in the background), which
decodes them then, once. A record whose stored match does not read as a valid match is
decoded at once, as any record read later is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from redis.exceptions import ResponseError

from extauthz.catalog import DeferredSource
from extauthz.errors import DocumentError
from extauthz.sources import TenantSource
from extauthz.store.redis_model import (
    Record,
    Rejected,
    TenantRepo,
    check_record,
    decode_documents,
)
from extauthz.tenancy import TenantMatch, TenantSpec, normalize_host_pattern

__all__ = ["Read", "read_record"]

Read = tuple[int, TenantSource | DeferredSource | None]  # version, what to load (None: deleted)


class _Documents:
    """Decodes one record's documents when called (``DeferredSource.decode``)."""

    __slots__ = ("_tenant", "_text", "_version", "_where")

    def __init__(self, tenant: str, version: int, text: str, where: str) -> None:
        self._tenant = tenant
        self._version = version
        self._text = text
        self._where = where

    def __call__(self) -> TenantSource:
        docs = decode_documents(self._text, self._where)
        return TenantSource(self._tenant, str(self._version), tuple(docs))


def read_record(repo: TenantRepo, tenant: str, value: Any) -> Read | Rejected | None:
    """One HMGET ``RECORD_FIELDS`` reply: (version, source) with a deferred source for a live
    record, a Rejected for a damaged one, None for no key."""
    if isinstance(value, ResponseError) or all(v is None for v in value):
        return _read(repo.decode(tenant, value))
    key = repo.keys.current(tenant)
    try:
        version, text = check_record(key, value)
    except DocumentError:
        return _read(repo.decode(tenant, value))  # the Rejected, with its stored routes
    if text is None:
        return version, None
    routes = _stated_routes(tenant, value[4] if len(value) > 4 else None)
    if routes is None:
        return _read(repo.decode(tenant, value))
    where = f"redis:{key}@{version}"
    return version, DeferredSource(
        tenant, str(version), routes, _Documents(tenant, version, text, where)
    )


def _read(record: Record | Rejected | None) -> Read | Rejected | None:
    if isinstance(record, Record):
        return record.version, record.source
    return record


def _stated_routes(tenant: str, value: bytes | str | None) -> TenantSpec | None:
    """The routes a record's ``match`` states, when it is exactly what a writer stores (else
    None: the documents are decoded to find them)."""
    try:
        data = json.loads(value) if value else None
    except ValueError:
        return None
    if not isinstance(data, Mapping) or set(data) != {"hosts", "destinationNamespaces", "headers"}:
        return None
    hosts, namespaces, headers = data["hosts"], data["destinationNamespaces"], data["headers"]
    if not (
        _strings(hosts)
        and _strings(namespaces)
        and isinstance(headers, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        return None
    normalized = [normalize_host_pattern(h) for h in hosts]
    if normalized != hosts or len(set(hosts)) != len(hosts):
        return None  # not as a writer stores them: let the documents say
    return TenantSpec(
        name=tenant,
        match=TenantMatch(
            hosts=tuple(hosts),
            destination_namespaces=frozenset(namespaces),
            headers=tuple((k.lower(), v) for k, v in headers.items()),
        ),
    )


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)
