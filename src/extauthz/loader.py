"""Compile a set of tenants, then check that their routes do not clash.

``extauthz policy validate``, ``extauthz check``, ``extauthz policy apply`` and the registry
load through here, with the server's own ``compile_documents``: ``compile_each`` compiles,
``route_conflict`` says whether a set of tenants can be routed, ``compile_all`` does both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from extauthz.authn import JwksCache
from extauthz.catalog import CompiledTenant, compile_documents
from extauthz.documents import Document
from extauthz.errors import DocumentError
from extauthz.tenancy import TenantConflict, TenantRouter, TenantSpec, group_by_tenant

__all__ = ["compile_all", "compile_each", "route_conflict"]


def compile_each(
    groups: Mapping[str, Sequence[Document]], jwks: JwksCache
) -> tuple[dict[str, CompiledTenant], list[DocumentError]]:
    """Compile each tenant's documents, in name order; the tenants that compiled and every
    error."""
    tenants: dict[str, CompiledTenant] = {}
    errors: list[DocumentError] = []
    for name, group in sorted(groups.items()):
        try:
            tenants[name] = compile_documents(name, group, jwks)
        except DocumentError as exc:
            errors.append(exc)
    return tenants, errors


def route_conflict(specs: Iterable[TenantSpec]) -> TenantConflict | None:
    """Why these tenants can't be routed together (two claim the same requests), or None."""
    try:
        TenantRouter(specs)
    except TenantConflict as exc:
        return exc
    return None


def compile_all(
    docs: Sequence[Document], jwks: JwksCache
) -> tuple[dict[str, CompiledTenant], list[DocumentError | TenantConflict]]:
    """Compile every tenant in ``docs``; the tenants that compiled and every error."""
    tenants, compile_errors = compile_each(group_by_tenant(docs), jwks)
    errors: list[DocumentError | TenantConflict] = list(compile_errors)
    conflict = route_conflict(t.spec for t in tenants.values())
    if conflict is not None:
        errors.append(conflict)
    return tenants, errors
