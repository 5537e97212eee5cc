"""Memos keyed by client input are bounded in bytes, not only in entries."""

from __future__ import annotations

import contextlib

from extauthz import identity, pipeline
from extauthz.authn.cache import TokenCache


def test_token_cache_is_bounded_in_bytes() -> None:
    """Entries are evicted oldest first once their costs pass max_bytes."""
    cache: TokenCache[str] = TokenCache(100, max_bytes=1000)
    for n in range(5):
        cache.put(bytes([n]), 0.0, 10.0, f"v{n}", cost=300)
    assert cache.total_bytes <= 1000
    assert len(cache) == 3
    assert cache.get(bytes([0]), 1.0) is None
    assert cache.get(bytes([4]), 1.0) == "v4"


def test_token_cache_skips_an_entry_larger_than_its_budget() -> None:
    """A single entry costing more than max_bytes is not cached."""
    cache: TokenCache[str] = TokenCache(100, max_bytes=1000)
    cache.put(b"big", 0.0, 10.0, "v", cost=1001)
    assert len(cache) == 0
    assert cache.total_bytes == 0


def test_token_cache_replacing_an_entry_keeps_the_count_right() -> None:
    """Putting the same digest twice counts its cost once."""
    cache: TokenCache[str] = TokenCache(100, max_bytes=1000)
    cache.put(b"d", 0.0, 10.0, "a", cost=400)
    cache.put(b"d", 0.0, 10.0, "b", cost=400)
    assert cache.total_bytes == 400
    cache.discard(b"d")
    assert cache.total_bytes == 0


def test_long_addresses_and_principals_are_not_memoized() -> None:
    """Texts longer than any address or usual SPIFFE ID are parsed, never kept."""
    before = (
        pipeline._ip_memo.cache_info().currsize,
        pipeline._namespace_memo.cache_info().currsize,
        pipeline._source_memo.cache_info().currsize,
    )
    long = "1" * 10_000
    assert pipeline._ip(long) is None
    pipeline._namespace_of("spiffe://td/ns/" + long)
    with contextlib.suppress(ValueError):
        pipeline._source_spiffe_id("spiffe://td/ns/" + long)
    after = (
        pipeline._ip_memo.cache_info().currsize,
        pipeline._namespace_memo.cache_info().currsize,
        pipeline._source_memo.cache_info().currsize,
    )
    assert after == before
    assert pipeline._ip("10.0.0.1") is not None
    assert pipeline._ip_memo.cache_info().currsize >= 1


def test_long_xfcc_headers_are_not_memoized() -> None:
    """An XFCC header longer than the memo's per-entry bound is parsed, never kept."""
    memo = identity._remembered_xfcc_client
    uri = "spiffe://td/ns/a/sa/b"
    long = f'Subject="{"x" * identity.XFCC_MEMO_MAX_BYTES}";URI={uri}'
    memo.cache_clear()
    client = identity.xfcc_client(long)
    assert client is not None
    assert client.uri == uri
    assert memo.cache_info().currsize == 0
    identity.xfcc_client(f"URI={uri}")
    assert memo.cache_info().currsize == 1
