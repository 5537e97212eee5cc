"""What a store hands over for one tenant: its documents at a version.

Below the catalog (which compiles a source) and the stores (which produce them), so neither
imports the other to name it.
"""

from __future__ import annotations

from dataclasses import dataclass

from extauthz.datasets import DataSets
from extauthz.documents import Document

__all__ = ["TenantSource"]


@dataclass(frozen=True, slots=True)
class TenantSource:
    """One tenant's documents (its Tenant document, if any, and its policies) at a version."""

    tenant: str
    version: str  # opaque: a counter in Redis, a content hash for files
    documents: tuple[Document, ...]
    # the tenant's sets when the store keeps them apart from its documents (Redis), changed
    # in place by the store; None: the DataSet documents among ``documents`` (files)
    data: DataSets | None = None
