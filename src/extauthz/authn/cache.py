"""A bounded LRU of verified tokens, keyed by the SHA-256 of the token.

Bounded in entries and in bytes: each entry costs what its caller says (the token's length,
which bounds the claims it holds), and the least recently used entries go until the total
is within ``max_bytes``; an entry costing more than that is not cached at all.

An entry holds what a verification produced and the window it stays valid in
(``nbf - skew`` to ``exp + skew``); outside it the entry is not used (and an expired one is
dropped), so a cached token is never accepted past its ``exp``. Digests, not tokens, are
kept: memory stays small and no token sits in the cache.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["TokenCache", "token_digest"]

V = TypeVar("V")


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenCache(Generic[V]):
    """LRU of ``digest -> (not_before, not_after, value)``. Not thread-safe: one event loop."""

    __slots__ = ("_bytes", "_entries", "_max_bytes", "_size")

    def __init__(self, size: int, max_bytes: int = 16 * 1024 * 1024) -> None:
        self._size = max(0, size)
        self._max_bytes = max(0, max_bytes)
        self._bytes = 0
        self._entries: OrderedDict[bytes, tuple[float, float, V, int]] = OrderedDict()

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, now: float) -> V | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        not_before, not_after, value, _ = entry
        if now > not_after:
            self.discard(digest)
            return None
        if now < not_before:
            return None
        self._entries.move_to_end(digest)
        return value

    def put(
        self, digest: bytes, not_before: float, not_after: float, value: V, cost: int = 0
    ) -> None:
        if self._size == 0 or cost > self._max_bytes:
            return
        self.discard(digest)
        self._entries[digest] = (not_before, not_after, value, cost)
        self._bytes += cost
        while len(self._entries) > self._size or self._bytes > self._max_bytes:
            *_, evicted = self._entries.popitem(last=False)[1]
            self._bytes -= evicted

    def discard(self, digest: bytes) -> None:
        entry = self._entries.pop(digest, None)
        if entry is not None:
            self._bytes -= entry[3]
