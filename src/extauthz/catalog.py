"""Compile one tenant's documents into what the hot path needs, once, at load time.

This is the single loader: the server, ``extauthz policy validate``, ``extauthz check`` and
every store write go through ``compile_tenant``, so what validates offline is exactly what
serves.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from extauthz.authn import Authenticator, JwksCache
from extauthz.datasets import DataSets, ShardedSet, parse_datasets
from extauthz.documents import KIND_DATASET, KIND_RATELIMIT, KIND_TENANT, Document
from extauthz.errors import DocumentError, Location
from extauthz.policy import CompiledPolicies, compile_policies
from extauthz.policy.custom import CustomContext
from extauthz.ratelimit.schema import RateLimits, parse_ratelimits
from extauthz.sources import TenantSource
from extauthz.tenancy import (
    TenantSpec,
    check_document_names,
    check_tenant_name,
    implicit_tenant,
    parse_tenant,
    tenant_of,
)

__all__ = [
    "CompiledTenant",
    "DeferredSource",
    "compile_documents",
    "compile_tenant",
    "unavailable_tenant",
]


@dataclass(frozen=True, slots=True)
class CompiledTenant:
    """A tenant ready to decide: its settings, its compiled policies, its authenticator.

    An *unavailable* tenant (``unavailable`` holds why) has no good version: its documents
    failed the first time they were loaded. It only claims its routes, so that its requests
    are denied (``tenant_unavailable``) rather than decided by another tenant.
    """

    spec: TenantSpec
    version: str
    policies: CompiledPolicies
    authenticator: Authenticator
    loaded_at: float = 0.0
    custom: CustomContext | None = None  # time zone, data sets, CEL error counter
    unavailable: str = ""
    ratelimits: RateLimits | None = None  # None: no RateLimit documents
    # spec.name, as a field (read on every Check: no property call)
    name: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.spec.name)

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.spec.warnings + self.policies.warnings


@dataclass(frozen=True, slots=True)
class DeferredSource:
    """A tenant known by its routes, whose documents are decoded and compiled later (on its
    first Check, or in the background after a full load): a store hands these over when
    reading a record costs far less than decoding it.

    ``routes`` is what the record says the tenant routes (its name and match); ``decode``
    gives the documents (raising DocumentError for a record that does not decode).
    """

    tenant: str
    version: str
    routes: TenantSpec
    decode: Callable[[], TenantSource]


def compile_documents(
    tenant: str,
    docs: Sequence[Document],
    jwks: JwksCache,
    *,
    version: str = "",
    now: float = 0.0,
    data: DataSets | None = None,
) -> CompiledTenant:
    """Compile ``docs`` (all of one tenant). Raises DocumentError naming file, line, field.

    ``data``: the tenant's sets when a store keeps them apart from its documents (then
    ``docs`` holds no DataSet); by default, the DataSet documents among ``docs``."""
    if not check_tenant_name(tenant):
        where = docs[0].location() if docs else Location(tenant)
        raise DocumentError(
            f"tenant name {tenant!r} must be a DNS label ([a-z0-9-], at most 63)",
            location=where,
            field="metadata.namespace" if docs and docs[0].kind != KIND_TENANT else "metadata.name",
        )
    for doc in docs:
        if tenant_of(doc) != tenant:
            raise doc.error(f"belongs to tenant {tenant_of(doc)!r}, not {tenant!r}")
    check_document_names(docs)
    tenant_docs = [d for d in docs if d.kind == KIND_TENANT]
    spec = parse_tenant(tenant_docs[0]) if tenant_docs else implicit_tenant(tenant)
    authenticator = Authenticator(spec.jwt_rules, jwks) if spec.jwt_rules else _no_jwt(jwks)
    if data is None:
        sets = parse_datasets(docs)
        data = DataSets({name: ShardedSet.of(values or ()) for name, values in sets.items()})
    else:
        for doc in docs:
            if doc.kind == KIND_DATASET:
                raise doc.error(
                    "this store keeps a DataSet's values apart from the tenant's documents "
                    "(a record written by an earlier release?): apply it again with "
                    "extauthz policy apply"
                )
    custom = CustomContext(tenant, spec.time_zone, data)
    policies = compile_policies(
        [d for d in docs if d.kind not in (KIND_TENANT, KIND_DATASET, KIND_RATELIMIT)],
        trust_domains=spec.trust_domains,
        space_delimited_claims=tuple(authenticator.space_delimited_claims),
        custom=custom,
    )
    limits = parse_ratelimits(docs, custom, policies.space_delimited)
    return CompiledTenant(spec, version, policies, authenticator, now, custom, ratelimits=limits)


def unavailable_tenant(
    tenant: str,
    docs: Sequence[Document],
    error: Exception,
    jwks: JwksCache,
    *,
    version: str = "",
    now: float = 0.0,
    spec: TenantSpec | None = None,
) -> CompiledTenant:
    """The stand-in of a tenant whose documents fail to load: it routes as ``spec`` (the
    routes a store still knows), else as its Tenant document says when that much still
    parses, else as the implicit tenant of its name."""
    if spec is None or spec.name != tenant:
        spec = _routes_of(tenant, docs)
    return CompiledTenant(
        spec,
        version,
        compile_policies(()),
        _no_jwt(jwks),
        now,
        unavailable=str(error) or "failed",
    )


# The authenticator of a tenant without jwtRules, one per JWKS cache: it holds no keys and
# never reaches its token cache (no rule, no token is verified), so sharing it is sharing
# nothing (about 650 bytes a tenant).
_NO_JWT: Final[weakref.WeakKeyDictionary[JwksCache, Authenticator]] = weakref.WeakKeyDictionary()


def _no_jwt(jwks: JwksCache) -> Authenticator:
    authenticator = _NO_JWT.get(jwks)
    if authenticator is None:
        authenticator = _NO_JWT[jwks] = Authenticator((), jwks)
    return authenticator


def _routes_of(tenant: str, docs: Sequence[Document]) -> TenantSpec:
    """The tenant's Tenant document if it parses, else its implicit tenant."""
    for doc in docs:
        if doc.kind == KIND_TENANT and doc.name == tenant:
            with contextlib.suppress(DocumentError):
                return parse_tenant(doc)
            break
    return implicit_tenant(tenant)


def compile_tenant(source: TenantSource, jwks: JwksCache, *, now: float = 0.0) -> CompiledTenant:
    return compile_documents(
        source.tenant, source.documents, jwks, version=source.version, now=now, data=source.data
    )
