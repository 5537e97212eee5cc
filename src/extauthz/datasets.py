"""A tenant's data sets: ``kind: DataSet`` documents, and the sets its CEL conditions read.

```yaml
apiVersion: extauthz.io/v1
kind: DataSet
metadata: {name: revoked-jti, namespace: acme}   # namespace = the tenant
spec: {values: ["a1b2", "c3d4"]}
```
A tenant's compiled conditions read its sets through one ``DataSets`` at evaluation time, so
a lookup costs the same for ten values or a million and a Check never reads the store. From
files, the sets are fixed with the documents. From Redis (``live``), the store changes them
in place as changes arrive, a few values at a time (``change``) or a whole set swapped in
(``put``); each change is one synchronous call on the event loop, so a Check sees a set
before or after a change, never during one. A set is a ``ShardedSet``: split by hash into
shards of about ``SHARD_SIZE`` values, so no single step (a resize as it grows, freeing a
replaced set) takes time in proportion to the whole set, and invisible to the garbage
collector.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence, Set
from itertools import chain
from typing import Final

from extauthz.documents import KIND_DATASET, Document

__all__ = [
    "MAX_VALUE_BYTES",
    "SHARD_SIZE",
    "DataSets",
    "ShardedSet",
    "ShardedSetBuilder",
    "check_set_name",
    "parse_datasets",
    "value_error",
]

MAX_VALUE_BYTES: Final = 4096
SHARD_SIZE: Final = 16384
_FIELDS: Final = frozenset({"values"})
# Set names become Redis key parts and log fields: a conservative alphabet.
_SET_NAME: Final = re.compile(r"[A-Za-z0-9_][-A-Za-z0-9_.]{0,127}")


def check_set_name(name: str) -> bool:
    """Set names: 1-128 of [A-Za-z0-9_.-], not starting with '-' or '.'."""
    return _SET_NAME.fullmatch(name) is not None


def value_error(value: object) -> str | None:
    """Why ``value`` cannot be a set value, or None."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    try:
        size = len(value) if value.isascii() else len(value.encode())
    except UnicodeEncodeError:
        return "is not valid UTF-8 text"
    if size > MAX_VALUE_BYTES:
        return f"longer than {MAX_VALUE_BYTES} bytes"
    return None


def parse_datasets(docs: Sequence[Document]) -> dict[str, frozenset[str] | None]:
    """The tenant's sets by name (None: a declaration, ``spec: {}`` without ``values``).

    Raises DocumentError naming file, line and field."""
    out: dict[str, frozenset[str] | None] = {}
    for doc in docs:
        if doc.kind == KIND_DATASET:
            if not check_set_name(doc.name):
                raise doc.error(
                    "a DataSet name is 1-128 of [A-Za-z0-9_.-], not starting with '-' or '.'",
                    ("metadata", "name"),
                )
            out[doc.name] = _values(doc)
    return out


def _values(doc: Document) -> frozenset[str] | None:
    spec = doc.spec
    for key in spec:
        if key not in _FIELDS:
            raise doc.error(f"unknown field {key!r}; expected {sorted(_FIELDS)}", ("spec", key))
    if "values" not in spec:
        return None
    values = spec["values"]
    if not isinstance(values, list):
        raise doc.error("must be a list of strings", ("spec", "values"))
    for i, value in enumerate(values):
        error = value_error(value)
        if error is not None:
            raise doc.error(error, ("spec", "values", i))
    return frozenset(values)


class ShardedSet(Set[str]):
    """A set of strings split by hash into shards: one shard's work per step, not the set's.

    Each shard is a dict of the values to None, not a ``set``: a dict that holds only strings
    is not tracked by the cyclic garbage collector, so a full collection does not walk a
    million values (a ``set`` is always tracked: about 0.1 s per million values, each time)."""

    __slots__ = ("_mask", "shards")

    def __init__(self, expected: int = 0) -> None:
        count = 1
        while count * SHARD_SIZE < expected:
            count *= 2
        self.shards: list[dict[str, None]] = [{} for _ in range(count)]
        self._mask = count - 1

    @classmethod
    def of(cls, values: Collection[str]) -> ShardedSet:
        builder = ShardedSetBuilder(len(values))
        builder.add_all(values)
        for _ in builder.steps():
            pass
        return builder.result

    def __contains__(self, value: object) -> bool:
        try:
            return value in self.shards[hash(value) & self._mask]
        except TypeError:  # unhashable: not a member
            return False

    def __iter__(self) -> Iterator[str]:
        for shard in self.shards:
            yield from shard

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards)

    @property
    def crowded(self) -> bool:
        """Grown (by changes) to four times the values its shards were made for."""
        return len(self) > 4 * SHARD_SIZE * len(self.shards)

    def add_all(self, values: Iterable[str]) -> None:
        shards, mask = self.shards, self._mask
        for value in values:
            shards[hash(value) & mask][value] = None

    def discard_all(self, values: Iterable[str]) -> None:
        shards, mask = self.shards, self._mask
        for value in values:
            shards[hash(value) & mask].pop(value, None)


class ShardedSetBuilder:
    """A large ``ShardedSet`` built in small steps: each batch of values is gathered per shard
    into tuples, then each shard is built at once from its tuples, one shard per step.

    Adding to the shards directly would resize every shard in the same step (they all fill at
    the same pace); gathering into lists would have the garbage collector walk every value
    gathered so far. A tuple of strings is untracked by the first collection that meets it."""

    def __init__(self, expected: int) -> None:
        self.result = ShardedSet(expected)
        self._gathered: list[list[tuple[str, ...]]] = [[] for _ in self.result.shards]

    def add_all(self, values: Iterable[str]) -> None:
        mask = len(self._gathered) - 1
        pieces: list[list[str]] = [[] for _ in self._gathered]
        for value in values:
            pieces[hash(value) & mask].append(value)
        for gathered, piece in zip(self._gathered, pieces, strict=True):
            if piece:
                gathered.append(tuple(piece))

    def steps(self) -> Iterator[None]:
        """Build the shards, one per step; ``result`` is complete once exhausted."""
        for i, gathered in enumerate(self._gathered):
            self.result.shards[i] = dict.fromkeys(chain.from_iterable(gathered))
            self._gathered[i] = []
            yield


class DataSets:
    """The sets one tenant's conditions read, by name, at evaluation time.

    Not ``live`` (files, validation): the names here are all the sets there are, and a
    condition naming another one does not compile; ``sizes`` names sets known only by their
    size (a writer validating against the sets a store holds). ``live`` (a store's sets, which
    may load after the policies that read them): any name compiles, and a set not held is an
    evaluation error, decided fail-closed.
    """

    __slots__ = ("_lists", "_sets", "_sizes", "live")

    def __init__(
        self,
        sets: Mapping[str, Set[str]] | None = None,
        *,
        live: bool = False,
        sizes: Mapping[str, int] | None = None,
    ) -> None:
        self.live = live
        self._sets: dict[str, Set[str]] = dict(sets or {})
        self._sizes: dict[str, int] = dict(sizes or {})
        self._lists: dict[tuple[str, ...], dict[str, list[str]]] = {}

    def get(self, name: str) -> Set[str] | None:
        return self._sets.get(name)

    def knows(self, name: str) -> bool:
        return self.live or name in self._sets or name in self._sizes

    def names(self) -> list[str]:
        return sorted(self._sets.keys() | self._sizes.keys())

    def size(self, name: str) -> int:
        values = self._sets.get(name)
        return len(values) if values is not None else self._sizes.get(name, 0)

    def lists(self, names: tuple[str, ...], limit: int) -> dict[str, list[str]]:
        """The sets ``names`` as sorted lists (kept until the next change). Raises LookupError
        for a set not held and ValueError beyond ``limit`` values in all."""
        found = self._lists.get(names)
        if found is None:
            found = {}
            total = 0
            for name in names:
                values = self._sets.get(name)
                if values is None:
                    raise LookupError(f"no DataSet {name!r} held")
                total += len(values)
                if total > limit:
                    raise ValueError(f"more than {limit} DataSet values to read as lists")
                found[name] = sorted(values)
            self._lists[names] = found
        return found

    # -- changes, by the store that holds a live DataSets ---------------------------------

    def put(self, name: str, values: Set[str]) -> Set[str] | None:
        """Swap in ``values`` as the set ``name``; the set it replaces, if any."""
        old = self._sets.get(name)
        self._sets[name] = values
        self._lists.clear()
        return old

    def change(self, name: str, added: Iterable[str], removed: Iterable[str]) -> None:
        """Add and remove values of the live set ``name`` in place (created if absent)."""
        values = self._sets.get(name)
        if not isinstance(values, ShardedSet):
            values = self._sets[name] = ShardedSet.of(values or ())
        values.add_all(added)
        values.discard_all(removed)
        self._lists.clear()
