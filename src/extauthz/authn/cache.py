"""A bounded LRU of verified tokens, keyed by the token itself.

Bounded in entries and in bytes: each entry costs what its caller says (the token's length,
which bounds the claims it holds), and the least recently used entries go until the total
is within ``max_bytes``; an entry costing more than that is not cached at all.

An entry holds what a verification produced and the window it stays valid in
(``nbf - skew`` to ``exp + skew``); outside it the entry is not used (and an expired one is
dropped), so a cached token is never accepted past its ``exp``.

The key is the token string: a lookup hashes it with Python's string hash and compares it
whole, where a digest would cost a SHA-256 of every token on every Check. The byte bound
counts each entry at the token's length, so the tokens held stay within ``max_bytes``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["TokenCache"]

V = TypeVar("V")


class TokenCache(Generic[V]):
    """LRU of ``key -> (not_before, not_after, value)``. Not thread-safe: one event loop."""

    __slots__ = ("_bytes", "_entries", "_max_bytes", "_size")

    def __init__(self, size: int, max_bytes: int = 16 * 1024 * 1024) -> None:
        self._size = max(0, size)
        self._max_bytes = max(0, max_bytes)
        self._bytes = 0
        self._entries: OrderedDict[Hashable, tuple[float, float, V, int]] = OrderedDict()

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        not_before, not_after, value, _ = entry
        if now > not_after:
            self.discard(key)
            return None
        if now < not_before:
            return None
        self._entries.move_to_end(key)
        return value

    def put(
        self, key: Hashable, not_before: float, not_after: float, value: V, cost: int = 0
    ) -> None:
        if self._size == 0 or cost > self._max_bytes:
            return
        self.discard(key)
        self._entries[key] = (not_before, not_after, value, cost)
        self._bytes += cost
        while len(self._entries) > self._size or self._bytes > self._max_bytes:
            *_, evicted = self._entries.popitem(last=False)[1]
            self._bytes -= evicted

    def discard(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[3]
