"""``kind: DataSet``: a named set of strings per tenant, for CEL (``data.contains(name, v)``).

```yaml
apiVersion: extauthz.io/v1
kind: DataSet
metadata: {name: revoked-jti, namespace: acme}   # namespace = the tenant
spec: {values: ["a1b2", "c3d4"]}
```
A set is held in memory as a frozenset, so a lookup costs the same for ten values or a
million, and a Check never reads the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from extauthz.documents import KIND_DATASET, Document

__all__ = ["MAX_VALUE_BYTES", "parse_datasets"]

MAX_VALUE_BYTES: Final = 4096
_FIELDS: Final = frozenset({"values"})


def parse_datasets(docs: Sequence[Document]) -> Mapping[str, frozenset[str]]:
    """The tenant's sets by name. Raises DocumentError naming file, line and field."""
    out: dict[str, frozenset[str]] = {}
    for doc in docs:
        if doc.kind == KIND_DATASET:
            out[doc.name] = _values(doc)
    return out


def _values(doc: Document) -> frozenset[str]:
    spec = doc.spec
    for key in spec:
        if key not in _FIELDS:
            raise doc.error(f"unknown field {key!r}; expected {sorted(_FIELDS)}", ("spec", key))
    values = spec.get("values", [])
    if not isinstance(values, list):
        raise doc.error("must be a list of strings", ("spec", "values"))
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise doc.error(f"must be a string, not {type(value).__name__}", ("spec", "values", i))
        if len(value) > MAX_VALUE_BYTES:
            raise doc.error(f"longer than {MAX_VALUE_BYTES} characters", ("spec", "values", i))
    return frozenset(values)
