"""Validated writes to the Redis store: nothing reaches Redis that the server would refuse.

Every write (apply, rollback) runs the server's own loader, ``catalog.compile_documents``,
on each tenant and checks the tenants' routing against every other tenant in Redis with
``TenantRouter``, before a single key is written. Each tenant is then written atomically
(one Lua script) as its next version; a stale ``expected`` version is a ConflictError.

DataSet documents are not stored in the record: their values are staged, then replace the
tenant's set keys in the same script as the record (``redis_sets``); a DataSet without
``values`` declares the set (created empty, its values kept if it exists). A policy is
compiled against the sets the write brings and those already in Redis, so one that names
a set that exists in neither is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from extauthz.authn import JwksCache
from extauthz.catalog import CompiledTenant, compile_documents
from extauthz.datasets import DataSets, parse_datasets
from extauthz.documents import KIND_DATASET, KIND_POLICY, Document
from extauthz.errors import DocumentError, ExtauthzError
from extauthz.loader import route_conflict
from extauthz.store.redis_model import (
    DEFAULT_KEEP,
    NotFound,
    Record,
    StagedSet,
    TenantRepo,
    WriteResult,
    decode_documents,
)
from extauthz.store.redis_sets import SetRepo
from extauthz.tenancy import TenantConflict, check_document_names, group_by_tenant

__all__ = ["InvalidDocuments", "NotFound", "PolicyAdmin", "Revision"]


class InvalidDocuments(ExtauthzError):
    """Documents failed to compile or clash with another tenant; nothing was written."""

    def __init__(self, errors: Sequence[DocumentError | TenantConflict]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


@dataclass(frozen=True, slots=True)
class Revision:
    """A tenant's documents at one version."""

    tenant: str
    version: int
    documents: tuple[Document, ...]


class PolicyAdmin:
    """apply / get / delete / rollback against one Redis, each write validated first."""

    def __init__(self, repo: TenantRepo, jwks: JwksCache | None = None) -> None:
        self.repo = repo
        self.sets = SetRepo(repo.client, repo.keys.prefix)
        self.jwks = jwks or JwksCache()

    async def compile(self, docs: Sequence[Document]) -> dict[str, CompiledTenant]:
        """Compile every tenant in ``docs`` against the sets it would have once written.
        Raises InvalidDocuments with every error."""
        compiled: dict[str, CompiledTenant] = {}
        errors: list[DocumentError] = []
        groups = group_by_tenant(docs)
        stored = await self.sets.sizes(sorted(groups))
        for name, group in sorted(groups.items()):
            try:
                check_document_names(group)
                sets = parse_datasets(group)
                sizes = dict(stored.get(name, {}))
                for set_name, values in sets.items():
                    if values is not None or set_name not in sizes:
                        sizes[set_name] = len(values or ())
                compiled[name] = compile_documents(
                    name, _record(group), self.jwks, data=DataSets(sizes=sizes)
                )
            except DocumentError as exc:
                errors.append(exc)
        if errors:
            raise InvalidDocuments(errors)
        return compiled

    async def check_routes(self, compiled: dict[str, CompiledTenant]) -> None:
        """Raises InvalidDocuments when a tenant would claim another tenant's requests."""
        specs = await self.repo.routes()
        specs.update({name: tenant.spec for name, tenant in compiled.items()})
        conflict = route_conflict(specs.values())
        if conflict is not None:
            raise InvalidDocuments([conflict])

    async def apply(
        self,
        docs: Sequence[Document],
        *,
        expected: int | None = None,
        keep: int = DEFAULT_KEEP,
    ) -> list[WriteResult]:
        """Replace each tenant named in ``docs`` with exactly those documents."""
        if not docs:
            raise InvalidDocuments([DocumentError("no documents to apply")])
        compiled = await self.compile(docs)
        if expected is not None and len(compiled) != 1:
            raise ValueError("--expected-version applies to one tenant at a time")
        await self.check_routes(compiled)
        groups = group_by_tenant(docs)
        return [
            await self._write(tenant, groups[name], expected=expected, keep=keep)
            for name, tenant in compiled.items()
        ]

    async def _write(
        self, tenant: CompiledTenant, docs: Sequence[Document], *, expected: int | None, keep: int
    ) -> WriteResult:
        """The tenant's record (``docs`` but its DataSets) and its DataSets, in one step."""
        staged = [
            StagedSet(
                name,
                None if values is None else await self.sets.stage(tenant.name, name, values),
            )
            for name, values in parse_datasets(docs).items()
        ]
        record = _record(docs)
        return await self.repo.write(
            tenant.name,
            record,
            spec=tenant.spec,
            policies=_policies(record),
            expected=expected,
            keep=keep,
            sets=staged,
        )

    async def current(self, tenant: str) -> Record:
        """The tenant's current record (a tombstone has ``source`` None)."""
        (record,) = await self.repo.records([tenant])
        if record is None:
            raise NotFound(f"no tenant {tenant!r} in redis")
        if not isinstance(record, Record):
            raise record.error
        return record

    async def get(self, tenant: str, version: int | None = None) -> Revision:
        record = await self.current(tenant)
        if version is None or version == record.version:
            if record.source is None:
                raise NotFound(f"tenant {tenant!r} was deleted at version {record.version}")
            return Revision(tenant, record.version, record.source.documents)
        history = await self.repo.history(tenant)
        if version not in history:
            kept = ", ".join(map(str, history)) or "none"
            raise NotFound(f"tenant {tenant!r} has no version {version} (kept: {kept})")
        source = f"redis:{self.repo.keys.history(tenant)}@{version}"
        return Revision(tenant, version, tuple(decode_documents(history[version], source)))

    async def delete(
        self, tenant: str, *, expected: int | None = None, keep: int = DEFAULT_KEEP
    ) -> WriteResult:
        result = await self.repo.write(tenant, None, expected=expected, keep=keep)
        if not result.changed and expected is None:
            raise NotFound(f"no tenant {tenant!r} in redis")
        return result

    async def rollback(
        self, tenant: str, *, to: int | None = None, keep: int = DEFAULT_KEEP
    ) -> tuple[int, WriteResult]:
        """Store an earlier version's documents as the next version (validated again)."""
        record = await self.current(tenant)
        history = await self.repo.history(tenant)
        if to is None:
            earlier = [v for v in history if v < record.version]
            if not earlier:
                raise NotFound(f"tenant {tenant!r} has no earlier version to roll back to")
            to = max(earlier)
        revision = await self.get(tenant, to)
        compiled = await self.compile(revision.documents)
        await self.check_routes(compiled)
        if tenant not in compiled:
            raise InvalidDocuments([DocumentError(f"version {to} holds no documents")])
        # A version stored by an earlier release may hold DataSets: they are written back
        # like an apply's. The sets themselves are run-time data, not versioned.
        result = await self._write(
            compiled[tenant], revision.documents, expected=record.version, keep=keep
        )
        return to, result


def _record(docs: Sequence[Document]) -> list[Document]:
    """What the tenant's record holds: its documents but the DataSets."""
    return [d for d in docs if d.kind != KIND_DATASET]


def _policies(docs: Sequence[Document]) -> int:
    return sum(1 for d in docs if d.kind == KIND_POLICY)
