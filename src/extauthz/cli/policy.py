"""``extauthz policy ...``: validate documents exactly as the server loads them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from extauthz.authn import JwksCache
from extauthz.catalog import CompiledTenant, compile_documents
from extauthz.documents import Document
from extauthz.errors import DocumentError
from extauthz.store.files import read_directory
from extauthz.tenancy import TenantConflict, TenantRouter, group_by_tenant

__all__ = ["compile_all", "register"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("policy", help="validate and manage documents")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    v = actions.add_parser("validate", help="parse and compile documents as the server does")
    v.add_argument("paths", nargs="+", type=Path, help="YAML files or directories")
    v.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    v.set_defaults(func=validate)


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


def validate(args: argparse.Namespace) -> int:
    docs: list[Document] = []
    errors: list[DocumentError | TenantConflict] = []
    for path in args.paths:
        found, bad = read_directory(path)
        docs.extend(found)
        errors.extend(bad)
    tenants, compile_errors = compile_all(docs, JwksCache())
    errors.extend(compile_errors)
    for tenant in tenants.values():
        for warning in tenant.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if not args.quiet:
            kind = "implicit tenant" if tenant.spec.implicit else "tenant"
            print(f"ok: {kind} {tenant.name}: {len(tenant.policies)} policies")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if not docs and not errors:
        print("error: no documents found", file=sys.stderr)
        return 1
    return 1 if errors else 0
