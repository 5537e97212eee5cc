"""After a load frees what it decoded, the C heap's free pages go back to the system."""

from __future__ import annotations

import platform

import pytest

from extauthz.memtrim import trim


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_pages_are_returned() -> None:
    """Texts of a few KB (C heap, not Python's small-object arenas) freed between ones that
    stay, as a load leaves them: their pages are returned; with nothing freed, none are."""
    kept, freed = [], []
    for i in range(20_000):
        freed.append(b"d" * 3000 + str(i).encode())
        kept.append(b"k" * 700 + str(i).encode())
    trim()
    del freed
    assert trim()
    assert len(kept) == 20_000
