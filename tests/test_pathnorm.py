"""Path normalization as Istio's meshConfig.pathNormalization modes."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
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
        ("/a%5Cb", M.DECODE_AND_MERGE_SLASHES, "/a/b"),
        ("/a%5Cb", M.BASE, "/a%5Cb"),
        ("/a\\..\\b", M.BASE, "/b"),
        ("/%41%62%7e%2D%5f%30", M.BASE, "/Ab~-_0"),
        ("/a%2fb/%c0%AF", M.BASE, "/a%2fb/%c0%AF"),
        ("/a%21%3a%zz%2", M.BASE, "/a%21%3a%zz%2"),
        ("/a b|c^d", M.BASE, "/a%20b%7Cc%5Ed"),
        ("/\u00e9", M.BASE, "/%C3%A9"),
        ("/xyz%30..//abc", M.MERGE_SLASHES, "/xyz0../abc"),
        ("/app//../admin", M.MERGE_SLASHES, "/app/admin"),
        ("/%5Capp%2f%5c%2F%2e%2e%2fadmin%5c\\abc", M.DECODE_AND_MERGE_SLASHES, "/app/admin/abc"),
        ("/%c0%2e%c0%2e/admin", M.DECODE_AND_MERGE_SLASHES, "/%c0.%c0./admin"),
        ("a/../../b", M.BASE, "/b"),
        ("", M.BASE, ""),
    ],
)
def test_modes(raw: str, mode: M, want: str) -> None:
    """Each mode does what its Envoy setting does, and no more."""
    assert normalize_path(raw, mode) == want


paths = st.text(st.sampled_from(list("/.ab%2eEfF5cC\\?# |")), max_size=30)
_BAD_PERCENT = re.compile("%(?![0-9A-Fa-f]{2})")


@given(paths, st.sampled_from(list(M)))
def test_idempotent(raw: str, mode: M) -> None:
    """Normalizing a normalized path changes nothing when every '%' starts an escape."""
    assume(not _BAD_PERCENT.search(raw))
    once = normalize_path(raw, mode)
    assert normalize_path(once, mode) == once


@given(st.text(max_size=40), st.sampled_from(list(M)))
def test_never_raises_and_stays_under_root(raw: str, mode: M) -> None:
    """Any text (controls, surrogates, '%' junk) normalizes without error and stays under '/'."""
    out = normalize_path(raw, mode)
    if mode is not M.NONE and out:
        assert out.startswith("/")
        assert "/../" not in out + "/"
        assert "?" not in out
        assert "#" not in out


@given(paths)
def test_no_dot_segments_survive(raw: str) -> None:
    """After BASE no '.' or '..' segment is left to climb out of a prefix rule."""
    out = normalize_path(raw, M.BASE)
    assert "/../" not in out + "/"
    assert "/./" not in out + "/"


def _canonical_reference(path: str) -> str:
    """BASE's character step, one character or escape at a time (Chromium's canonicalizer)."""
    out = []
    i = 0
    while i < len(path):
        c = path[i]
        if c == "%" and re.fullmatch("[0-9A-Fa-f]{2}", path[i + 1 : i + 3]):
            decoded = chr(int(path[i + 1 : i + 3], 16))
            out.append(decoded if re.fullmatch("[A-Za-z0-9._~-]", decoded) else path[i : i + 3])
            i += 3
            continue
        if c == "\\":
            out.append("/")
        elif c == "%" or re.fullmatch(r"[A-Za-z0-9._~!$&'()*+,;=:@/\[\]-]", c):
            out.append(c)
        else:
            out.append("".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")))
        i += 1
    return "".join(out)


@given(st.text(st.sampled_from(list("/ab~-_!$&'()*+,;=:@[]%2fF<>^`{|}\"\\é\x00\t")), max_size=30))
def test_characters_as_the_canonicalizer(raw: str) -> None:
    """Every character is kept, decoded or percent-encoded as the canonicalizer does, on the
    paths that need no work (kept whole) and the others alike."""
    assume("." not in raw and "?" not in raw and "#" not in raw)
    want = _canonical_reference(raw)
    if want and not want.startswith("/"):
        want = "/" + want
    assert normalize_path(raw, M.BASE) == want
