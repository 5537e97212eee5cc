"""Decision-log masking: the same masks as the reference regular expressions, in linear time."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.decisionlog import MASK, mask_jwts, mask_path

# The masking as first written with backtracking regular expressions: the reference for
# what is masked (only ever run here on short strings).
REFERENCE_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.?[A-Za-z0-9_-]*")
REFERENCE_PARAM = re.compile(
    r"([?&;][^=&;#]*(?:token|jwt|secret|password|session|key|code|auth)[^=&;#]*=)[^&;#]*",
    re.IGNORECASE,
)

PIECES = st.sampled_from(
    ["eyJ", "eyJhbGci", "abcd", "a", "-", "_", ".", "?", "&", ";", "#", "=", "/", "token",
     "Key", "x", "%2e", " "]
)  # fmt: skip
TEXT = st.lists(PIECES, max_size=16).map("".join)


def reference_path(path: str) -> str:
    if "?" not in path and "eyJ" not in path:
        return path
    return REFERENCE_JWT.sub(MASK, REFERENCE_PARAM.sub(r"\1" + MASK, path))


@settings(max_examples=1000, deadline=None)
@given(TEXT)
def test_mask_jwts_matches_the_reference(text: str) -> None:
    """mask_jwts masks exactly what the reference JWT expression masks."""
    assert mask_jwts(text) == REFERENCE_JWT.sub(MASK, text)


@settings(max_examples=1000, deadline=None)
@given(TEXT)
def test_mask_path_matches_the_reference(path: str) -> None:
    """mask_path masks exactly what the reference expressions mask."""
    assert mask_path(path) == reference_path(path)


def test_crafted_paths_are_masked_in_one_pass() -> None:
    """64 KiB paths built to make backtracking expressions quadratic are masked (and fast)."""
    jwt = "eyJhbGciOi.eyJzdWIiOi.c2ln"
    for crafted in ("?" * 65_536, "?token" * 10_000 + "=x", "eyJ" * 20_000 + "aaaa",
                    "eyJaaaa." * 8_000, "?a=" + "eyJaaaa" * 9_000 + "." + jwt):  # fmt: skip
        masked = mask_path(crafted)
        assert jwt not in masked
        assert len(masked) <= len(crafted) + len(MASK)
    assert mask_path("/p?x=1&access_token=" + jwt + "&y=2") == f"/p?x=1&access_token={MASK}&y=2"
