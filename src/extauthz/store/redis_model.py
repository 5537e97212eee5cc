"""The Redis data model: keys, the record of one tenant, the atomic write, bulk reads.

Every key of a tenant carries the tenant name as a hash tag, so they share one Redis
Cluster slot and one Lua script can update them atomically (see docs/redis.md)::

    {P}:{acme}:current   HASH  version, documents, digest, match, policies, deleted, updated
    {P}:{acme}:history   HASH  <version> -> documents of that earlier version (last N kept)
    {P}:{acme}:sets      HASH  <set> -> version of that DataSet (see redis_sets.py)
    {P}:{acme}:set:<set> SET   the DataSet's values
    {P}:{acme}:setlog:<set>  HASH  <version> -> the change that made it (the last N kept)
    {P}:changes          channel; a write publishes "acme 8" (a record) or
                         "acme/revoked-jti 5" (a DataSet) after it commits

``documents`` is a JSON array of the tenant's documents (the same shape as the YAML
files), ``digest`` its SHA-256, so a value changed outside extauthz or cut short is
detected and rejected. ``match`` is the tenant's routing match as JSON, which lets a
writer check routing conflicts against every other tenant without reading their policies.
A delete is a tombstone (``deleted`` = 1, a new version) rather than a missing key: a key
that vanishes (an emptied or evicted Redis) is not mistaken for a deletion.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.exceptions import RedisError, ResponseError

from extauthz.documents import Document, document_from_data
from extauthz.errors import ConflictError, DocumentError, ExtauthzError, Location, StoreError
from extauthz.sources import TenantSource
from extauthz.store.redis_client import Client
from extauthz.store.redis_scripts import WRITE_SCRIPT
from extauthz.tenancy import TenantMatch, TenantSpec, check_tenant_name, normalize_host_pattern

__all__ = [
    "DEFAULT_KEEP",
    "RECORD_FIELDS",
    "SET_LOG_KEEP",
    "Keys",
    "NotFound",
    "Record",
    "Rejected",
    "SetResult",
    "StagedSet",
    "TenantRepo",
    "WriteResult",
    "as_text",
    "check_record",
    "decode_documents",
    "decode_record",
    "encode_documents",
    "match_json",
    "spec_of_match",
]

DEFAULT_KEEP: Final = 10
SET_LOG_KEEP: Final = 256  # changes kept per DataSet: a replica this far behind catches up
RECORD_FIELDS: Final = ("version", "deleted", "digest", "documents", "match")
SCAN_COUNT: Final = 1000


class NotFound(ExtauthzError):
    """No such tenant, version or DataSet in Redis."""


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under a prefix."""

    prefix: str

    def current(self, tenant: str) -> str:
        return f"{self.prefix}:{{{tenant}}}:current"

    def history(self, tenant: str) -> str:
        return f"{self.prefix}:{{{tenant}}}:history"

    def sets(self, tenant: str) -> str:
        return f"{self.prefix}:{{{tenant}}}:sets"

    def set(self, tenant: str, name: str) -> str:
        return f"{self.prefix}:{{{tenant}}}:set:{name}"

    def set_log(self, tenant: str, name: str) -> str:
        return f"{self.prefix}:{{{tenant}}}:setlog:{name}"

    def staging(self, tenant: str, name: str, token: str) -> str:
        """Where a set's new values are written before they replace it (same slot)."""
        return f"{self.prefix}:{{{tenant}}}:staging:{name}:{token}"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:changes"

    @property
    def current_pattern(self) -> str:
        return f"{self.prefix}:{{*}}:current"

    @property
    def sets_pattern(self) -> str:
        return f"{self.prefix}:{{*}}:sets"

    def tenant_of(self, key: bytes | str, suffix: str = "current") -> str | None:
        """``{P}:{acme}:current`` -> ``acme``; None for a key that is not ours."""
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        head, tail = f"{self.prefix}:{{", f"}}:{suffix}"
        if not (text.startswith(head) and text.endswith(tail)):
            return None
        tenant = text[len(head) : -len(tail)]
        return tenant if check_tenant_name(tenant) else None


@dataclass(frozen=True, slots=True)
class Record:
    """One tenant's current record, decoded. ``source`` is None for a tombstone."""

    tenant: str
    version: int
    source: TenantSource | None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that cannot be served: why, and at which version ("?" if unknown)."""

    tenant: str
    version: str
    error: DocumentError
    routes: TenantSpec | None = None  # from the record's stored ``match``, if it still reads


@dataclass(frozen=True, slots=True)
class SetResult:
    """What a write did to one DataSet: ``state`` applied, unchanged or kept (declared and
    already there); its version and size after the write."""

    name: str
    state: str
    version: int
    size: int


@dataclass(frozen=True, slots=True)
class StagedSet:
    """A DataSet written with a record: its values staged in ``staging`` (None: declared
    only, created empty unless it exists)."""

    name: str
    staging: str | None


@dataclass(frozen=True, slots=True)
class WriteResult:
    tenant: str
    version: int
    changed: bool  # False: the same documents were already current (no new version)
    sets: tuple[SetResult, ...] = ()


def as_text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def encode_documents(docs: Sequence[Document]) -> tuple[str, str]:
    """The stored form of ``docs``: (JSON array text, its SHA-256)."""
    text = json.dumps([d.body for d in docs], separators=(",", ":"), ensure_ascii=False)
    return text, hashlib.sha256(text.encode()).hexdigest()


def decode_documents(text: str, source: str) -> list[Document]:
    """Documents from their stored JSON. Raises DocumentError as the YAML loader does."""
    try:
        bodies = json.loads(text)
    except ValueError as exc:
        raise DocumentError(f"not valid JSON: {exc}", location=Location(source)) from None
    if not isinstance(bodies, list):
        raise DocumentError("documents must be a JSON array", location=Location(source))
    # The same envelope checks as load_documents; stored JSON has no lines to report.
    return [document_from_data(body, f"{source}#{i}") for i, body in enumerate(bodies)]


def decode_record(tenant: str, key: str, values: Sequence[Any]) -> Record:
    """HMGET ``RECORD_FIELDS`` -> Record. Raises DocumentError for anything malformed."""
    version, documents = check_record(key, values)
    if documents is None:
        return Record(tenant, version, None)
    docs = decode_documents(documents, f"redis:{key}@{version}")
    return Record(tenant, version, TenantSource(tenant, str(version), tuple(docs)))


def check_record(key: str, values: Sequence[Any]) -> tuple[int, str | None]:
    """A record's version and documents text (None: a tombstone), checked (version, whole,
    digest) but not decoded. Raises DocumentError."""
    raw_version, deleted, digest, documents = (as_text(v) for v in values[:4])
    where = Location(f"redis:{key}")
    if raw_version is None:
        raise DocumentError("record has no version (not written by extauthz?)", location=where)
    try:
        version = int(raw_version)
    except ValueError:
        raise DocumentError(f"version {raw_version!r} is not an integer", location=where) from None
    source = f"redis:{key}@{version}"
    if deleted == "1":
        return version, None
    if documents is None or digest is None:
        raise DocumentError("record is incomplete (half-written?)", location=Location(source))
    if hashlib.sha256(documents.encode()).hexdigest() != digest:
        raise DocumentError(
            "documents do not match their digest (changed outside extauthz or cut short)",
            location=Location(source),
        )
    return version, documents


def match_json(spec: TenantSpec) -> str:
    m = spec.match
    return json.dumps(
        {
            "hosts": list(m.hosts),
            "destinationNamespaces": sorted(m.destination_namespaces),
            "headers": dict(m.headers),
        },
        separators=(",", ":"),
    )


def spec_of_match(tenant: str, text: str) -> TenantSpec:
    """A routing-only TenantSpec from a stored ``match`` (for conflict checks)."""
    data = json.loads(text)
    hosts = (normalize_host_pattern(str(h)) for h in data.get("hosts", ()))
    return TenantSpec(
        name=tenant,
        match=TenantMatch(
            hosts=tuple(dict.fromkeys(h for h in hosts if h)),
            destination_namespaces=frozenset(data.get("destinationNamespaces", ())),
            headers=tuple((str(k), str(v)) for k, v in data.get("headers", {}).items()),
        ),
    )


def _stored_routes(tenant: str, value: bytes | str | None) -> TenantSpec | None:
    """The routes a rejected record still claims: its stored ``match``, when it reads."""
    text = as_text(value)
    try:
        return spec_of_match(tenant, text) if text else None
    except (ValueError, TypeError, AttributeError):
        return None


class TenantRepo:
    """Reads and atomic writes of tenant records; shared by the server store and the CLI."""

    def __init__(self, client: Client, prefix: str, *, batch: int = SCAN_COUNT) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.batch = batch
        self._write = client.register_script(WRITE_SCRIPT)

    async def tenants(self) -> AsyncIterator[list[str]]:
        """Every tenant with a record (tombstones too), in batches of up to ``batch``."""
        pending: list[str] = []
        async for key in self.client.scan_iter(match=self.keys.current_pattern, count=self.batch):
            tenant = self.keys.tenant_of(key)
            if tenant is None:
                continue
            pending.append(tenant)
            if len(pending) >= self.batch:
                yield pending
                pending = []
        if pending:
            yield pending

    async def hmget_many(self, tenants: Sequence[str], fields: Sequence[str]) -> list[Any]:
        """HMGET ``fields`` of each tenant's record in one pipeline; an error stays in place."""
        pipe = self.client.pipeline(transaction=False)
        for tenant in tenants:
            pipe.hmget(self.keys.current(tenant), list(fields))
        results: list[Any] = await pipe.execute(raise_on_error=False)
        for result in results:
            # A broken connection fails the whole read; a wrong-type key fails only its own.
            if isinstance(result, RedisError) and not isinstance(result, ResponseError):
                raise result
        return results

    async def records(self, tenants: Sequence[str]) -> list[Record | Rejected | None]:
        """Decode each tenant's record: a Record, a Rejected, or None (no key)."""
        values = await self.hmget_many(tenants, RECORD_FIELDS)
        return [self.decode(t, v) for t, v in zip(tenants, values, strict=True)]

    def decode(self, tenant: str, value: Any) -> Record | Rejected | None:
        """One HMGET ``RECORD_FIELDS`` reply (or its error) -> Record, Rejected or None."""
        key = self.keys.current(tenant)
        if isinstance(value, ResponseError):
            error = DocumentError(f"unreadable: {value}", location=Location(f"redis:{key}"))
            return Rejected(tenant, "?", error)
        if all(v is None for v in value):
            return None
        try:
            return decode_record(tenant, key, value)
        except DocumentError as exc:
            routes = _stored_routes(tenant, value[4] if len(value) > 4 else None)
            return Rejected(tenant, as_text(value[0]) or "?", exc, routes)

    async def versions(self) -> dict[str, str]:
        """Every tenant's current version (as text; "" when unreadable), tombstones included."""
        out: dict[str, str] = {}
        async for batch in self.tenants():
            values = await self.hmget_many(batch, ("version",))
            for tenant, value in zip(batch, values, strict=True):
                if isinstance(value, ResponseError):
                    out[tenant] = ""
                elif value[0] is not None:
                    out[tenant] = as_text(value[0]) or ""
        return out

    async def routes(self) -> dict[str, TenantSpec]:
        """The routing spec of every live tenant (for conflict checks)."""
        out: dict[str, TenantSpec] = {}
        async for batch in self.tenants():
            values = await self.hmget_many(batch, ("deleted", "match"))
            for tenant, value in zip(batch, values, strict=True):
                if isinstance(value, ResponseError):
                    continue
                deleted, match = (as_text(v) for v in value)
                if deleted != "1" and match:
                    try:
                        out[tenant] = spec_of_match(tenant, match)
                    except (ValueError, AttributeError, TypeError):
                        continue
        return out

    async def summary(self, tenants: Sequence[str]) -> list[dict[str, Any]]:
        """version, deleted, policies and updated of each tenant (for ``policy list``)."""
        fields = ("version", "deleted", "policies", "updated")
        values = await self.hmget_many(tenants, fields)
        out: list[dict[str, Any]] = []
        for tenant, value in zip(tenants, values, strict=True):
            if isinstance(value, ResponseError):
                out.append({"tenant": tenant, "error": str(value)})
                continue
            version, deleted, policies, updated = (as_text(v) for v in value)
            out.append(
                {
                    "tenant": tenant,
                    "version": int(version) if version and version.isdigit() else version,
                    "deleted": deleted == "1",
                    "policies": int(policies) if policies and policies.isdigit() else None,
                    "updated": float(updated) if updated else None,
                }
            )
        return out

    async def history(self, tenant: str) -> dict[int, str]:
        """The kept earlier versions of a tenant: version -> documents JSON."""
        raw: dict[Any, Any] = await self.client.hgetall(self.keys.history(tenant))
        out: dict[int, str] = {}
        for k, v in raw.items():
            key = as_text(k) or ""
            if key.isdigit():
                out[int(key)] = as_text(v) or ""
        return dict(sorted(out.items()))

    async def write(
        self,
        tenant: str,
        docs: Sequence[Document] | None,
        *,
        spec: TenantSpec | None = None,
        policies: int = 0,
        expected: int | None = None,
        keep: int = DEFAULT_KEEP,
        sets: Sequence[StagedSet] = (),
    ) -> WriteResult:
        """Store ``docs`` (None: delete) atomically as the next version and announce it,
        with ``sets`` replaced (or declared) in the same step.

        The caller has validated and compiled ``docs``. Raises ConflictError when
        ``expected`` is given and is not the current version.
        """
        if docs is None:
            args: list[Any] = ["delete", "", "", "", 0]
        else:
            if spec is None:
                raise ValueError("a write needs the tenant's compiled spec")
            try:
                text, digest = encode_documents(docs)
            except (TypeError, ValueError) as exc:
                raise StoreError(f"{tenant}: documents are not representable: {exc}") from None
            args = ["put", text, digest, match_json(spec), policies]
        set_keys: list[str] = []
        set_args: list[str] = []
        for staged in sets:
            set_keys += [
                self.keys.set(tenant, staged.name),
                self.keys.set_log(tenant, staged.name),
                staged.staging or self.keys.staging(tenant, staged.name, "none"),
            ]
            set_args += [staged.name, "declare" if staged.staging is None else "replace"]
        try:
            status, version, written = await self._write(
                keys=[
                    self.keys.current(tenant),
                    self.keys.history(tenant),
                    self.keys.sets(tenant),
                    *set_keys,
                ],
                args=[
                    "" if expected is None else str(expected),
                    *args,
                    repr(time.time()),
                    max(keep, 1),
                    self.keys.channel,
                    tenant,
                    SET_LOG_KEEP,
                    *set_args,
                ],
            )
        except RedisError as exc:
            raise StoreError(f"{tenant}: write failed: {exc}") from exc
        status = as_text(status)
        if status == "conflict":
            raise ConflictError(
                f"tenant {tenant!r} is at version {version}, not the expected {expected}; "
                "re-read it (extauthz policy get) and retry"
            )
        if status == "badset":
            raise StoreError(
                f"{tenant}: the version of DataSet {as_text(version)!r} in "
                f"{self.keys.sets(tenant)} is not a number (changed outside extauthz?)"
            )
        results = tuple(
            SetResult(as_text(n) or "", as_text(st) or "", int(v), int(size))
            for n, st, v, size in written
        )
        return WriteResult(tenant, int(version), status == "ok", results)


def chunks(items: Iterable[str], size: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
