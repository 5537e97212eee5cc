"""Request path normalization, as Istio configures Envoy to do before authorization.

Istio's ``meshConfig.pathNormalization`` picks what Envoy does to ``:path`` before any
filter sees it. Envoy normally has done this already by the time it calls us; we apply the
same steps again so that a proxy configured differently (or a direct caller) cannot reach a
path-based rule with ``/public/../admin``. In every mode the query string and the fragment are
cut off first.

- ``NONE`` (``normalize_path: false``): nothing more.
- ``BASE`` (Istio's default, ``normalize_path: true``): Envoy's canonical path (Chromium's URL
  path canonicalizer): ``\\`` becomes ``/``; a percent-encoded unreserved character
  (``A-Z a-z 0-9 - . _ ~``, any hex case) is decoded, every other escape is kept as written
  (``%2F``, ``%5c``, ``%c0`` stay); a character a path may not hold raw (space, ``"``, ``<``,
  ``>``, ``^``, backquote, ``{``, ``|``, ``}``, controls, non-ASCII) is percent-encoded (its UTF-8
  bytes, upper-case hex); then RFC 3986 dot-segment removal (``..`` never climbs above ``/``).
- ``MERGE_SLASHES``: BASE, then runs of ``/`` collapsed to one (``merge_slashes: true``).
- ``DECODE_AND_MERGE_SLASHES``: ``%2F`` and ``%5C`` (any case) decoded to ``/`` and ``\\``
  first (``path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD``), then MERGE_SLASHES.

One pass, like Envoy's: a double-encoded input (``%%32e``) can decode to a new escape
(``%2e``) that this pass leaves alone, so the function is idempotent only on paths whose every
``%`` starts a valid escape. It never raises, and its output (non-empty input, a mode other
than NONE) starts with ``/`` and holds no ``.`` or ``..`` segment.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final

__all__ = ["PathNormalization", "normalize_path"]


class PathNormalization(StrEnum):
    NONE = "NONE"
    BASE = "BASE"
    MERGE_SLASHES = "MERGE_SLASHES"
    DECODE_AND_MERGE_SLASHES = "DECODE_AND_MERGE_SLASHES"


_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# What the canonicalizer touches: an escape, a backslash, a character it percent-encodes.
# Everything else (unreserved, sub-delims, ``: @ / [ ]``, a ``%`` that starts no escape)
# passes unchanged.
_WORK: Final = re.compile(r"%([0-9A-Fa-f]{2})|[^A-Za-z0-9\-._~!$&'()*+,;=:@/\[\]%]")
# The characters _WORK never matches alone (``%`` aside: it may start an escape).
_PASSED: Final = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/[]"
)
_ESCAPED_SLASH: Final = re.compile("%2f|%5c", re.IGNORECASE)
_SLASHES: Final = re.compile("/{2,}")


def normalize_path(raw: str, mode: PathNormalization = PathNormalization.BASE) -> str:
    """The path part of ``raw`` (no query, no fragment), normalized by ``mode``."""
    path = raw.partition("?")[0].partition("#")[0]  # up to the first "?" or "#"
    if mode is PathNormalization.NONE or not path:
        return path
    if mode is PathNormalization.DECODE_AND_MERGE_SLASHES and "%" in path:
        path = _ESCAPED_SLASH.sub(_unescape_slash, path)
    # Most paths hold only characters the canonicalizer passes: one C pass tells.
    if not path.isascii() or path.encode("ascii").translate(None, _PASSED):
        path = _WORK.sub(_canonical, path)
    if not path.startswith("/"):
        path = "/" + path
    if "." in path:
        path = _remove_dot_segments(path)
    if mode is not PathNormalization.BASE and "//" in path:
        path = _SLASHES.sub("/", path)
    return path


def _unescape_slash(m: re.Match[str]) -> str:
    return "/" if m.group(0)[2] in "fF" else "\\"


def _canonical(m: re.Match[str]) -> str:
    hex_digits = m.group(1)
    if hex_digits is not None:
        char = chr(int(hex_digits, 16))
        return char if char in _UNRESERVED else m.group(0)
    char = m.group(0)
    if char == "\\":
        return "/"
    return "".join(f"%{b:02X}" for b in char.encode("utf-8", "surrogatepass"))


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, on an absolute path: ``..`` stops at the root."""
    out: list[str] = []
    segments = path.split("/")[1:]
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == ".":
            if i == last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if i == last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)
