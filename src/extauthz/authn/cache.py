"""A bounded LRU of verified tokens, keyed by the SHA-256 of the token.

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

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int) -> None:
        self._size = max(0, size)
        self._entries: OrderedDict[bytes, tuple[float, float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, now: float) -> V | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        not_before, not_after, value = entry
        if now > not_after:
            del self._entries[digest]
            return None
        if now < not_before:
            return None
        self._entries.move_to_end(digest)
        return value

    def put(self, digest: bytes, not_before: float, not_after: float, value: V) -> None:
        if self._size == 0:
            return
        self._entries[digest] = (not_before, not_after, value)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def discard(self, digest: bytes) -> None:
        self._entries.pop(digest, None)
