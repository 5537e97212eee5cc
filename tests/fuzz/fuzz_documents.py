"""The document loader and the tenant compiler: bad input is a DocumentError, nothing else.

Input: a YAML text (bytes, as read from a file).
"""

from __future__ import annotations

import atheris

from tests.fuzz.common import main

with atheris.instrument_imports(include=["extauthz", "yaml"]):
    from extauthz.authn.jwks import JwksCache
    from extauthz.catalog import compile_documents
    from extauthz.documents import load_documents
    from extauthz.errors import DocumentError
    from extauthz.tenancy import TenantConflict, tenant_of

JWKS = JwksCache()


def test_one_input(data: bytes) -> None:
    try:
        docs = load_documents(data, "fuzz.yaml")
    except DocumentError:
        return
    tenants: dict[str, list[object]] = {}
    try:
        for doc in docs:
            tenants.setdefault(tenant_of(doc), []).append(doc)
    except DocumentError:
        return
    for tenant, group in tenants.items():
        try:
            compiled = compile_documents(tenant, group, JWKS)  # type: ignore[arg-type]
        except (DocumentError, TenantConflict):
            continue
        assert compiled.spec.name == tenant


if __name__ == "__main__":
    main("documents", test_one_input)
