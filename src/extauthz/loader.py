"""Compile a set of tenants, then check that their routes do not clash.

``extauthz policy validate``, ``extauthz check`` and ``extauthz policy apply`` load a batch of
documents through here, with the server's own ``compile_documents``.
"""

from __future__ import annotations

from extauthz.authn import JwksCache
from extauthz.catalog import CompiledTenant, compile_documents
from extauthz.documents import Document
from extauthz.errors import DocumentError
from extauthz.tenancy import TenantConflict, TenantRouter, group_by_tenant

__all__ = ["compile_all"]


def compile_all(
    docs: list[Document], jwks: JwksCache
) -> tuple[dict[str, CompiledTenant], list[DocumentError | TenantConflict]]:
    """Compile every tenant in ``docs``; the tenants that compiled and every error."""
    tenants: dict[str, CompiledTenant] = {}
    errors: list[DocumentError | TenantConflict] = []
    for name, group in sorted(group_by_tenant(docs).items()):
        try:
            tenants[name] = compile_documents(name, group, jwks)
        except DocumentError as exc:
            errors.append(exc)
    try:
        TenantRouter(t.spec for t in tenants.values())
    except TenantConflict as exc:
        errors.append(exc)
    return tenants, errors
