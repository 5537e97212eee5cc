"""Path normalization as Istio's meshConfig.pathNormalization modes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extauthz.pathnorm import PathNormalization as M
from extauthz.pathnorm import normalize_path


@pytest.mark.parametrize(
    ("raw", "mode", "want"),
    [
        ("/a/b?x=1", M.NONE, "/a/b"),
        ("/a/../b", M.NONE, "/a/../b"),
        ("/a/b#frag", M.BASE, "/a/b"),
        ("/public/../admin", M.BASE, "/admin"),
        ("/public/%2e%2E/admin", M.BASE, "/admin"),
        ("/a/./b/.", M.BASE, "/a/b/"),
        ("/../../etc", M.BASE, "/etc"),
        ("//a//b", M.BASE, "//a//b"),
        ("//a//b", M.MERGE_SLASHES, "/a/b"),
        ("/a%2Fb", M.MERGE_SLASHES, "/a%2Fb"),
        ("/a%2Fb%2f..%2fc", M.DECODE_AND_MERGE_SLASHES, "/a/c"),
        ("/a%5Cb", M.DECODE_AND_MERGE_SLASHES, "/a\\b"),
    ],
)
def test_modes(raw: str, mode: M, want: str) -> None:
    """Each mode does what its Envoy setting does, and no more."""
    assert normalize_path(raw, mode) == want


paths = st.text(st.sampled_from(list("/.ab%2eEfF?#")), max_size=30)


@given(paths, st.sampled_from(list(M)))
def test_idempotent(raw: str, mode: M) -> None:
    """Normalizing a normalized path changes nothing (Envoy already did it once)."""
    once = normalize_path(raw, mode)
    assert normalize_path(once, mode) == once


@given(paths)
def test_no_dot_segments_survive(raw: str) -> None:
    """After BASE no '.' or '..' segment is left to climb out of a prefix rule."""
    out = normalize_path(raw, M.BASE)
    assert "/../" not in out + "/"
    assert "/./" not in out + "/"
