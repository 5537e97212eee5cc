"""Request path normalization, as Istio configures Envoy to do before authorization.

Istio's ``meshConfig.pathNormalization`` picks what Envoy does to ``:path`` before any
filter sees it. Envoy normally has done this already by the time it calls us; we apply the
same steps again so that a proxy configured differently (or a direct caller) cannot reach a
path-based rule with ``/public/../admin``. The steps are idempotent on a normalized path.

- ``NONE``: only the query string and fragment are cut off.
- ``BASE`` (Istio's default): also RFC 3986 section 5.2.4 dot-segment removal, with
  ``%2E`` decoded as ``.`` first (Envoy's ``normalize_path``).
- ``MERGE_SLASHES``: also ``//`` collapsed to ``/`` (Envoy's ``merge_slashes``).
- ``DECODE_AND_MERGE_SLASHES``: also ``%2F`` and ``%5C`` decoded to ``/`` and ``\\`` before
  the rest (Envoy's ``UNESCAPE_AND_FORWARD`` for escaped slashes).
"""

from __future__ import annotations

import re
from enum import StrEnum

__all__ = ["PathNormalization", "normalize_path"]


class PathNormalization(StrEnum):
    NONE = "NONE"
    BASE = "BASE"
    MERGE_SLASHES = "MERGE_SLASHES"
    DECODE_AND_MERGE_SLASHES = "DECODE_AND_MERGE_SLASHES"


_DOT = re.compile("%2e", re.IGNORECASE)
_SLASH = re.compile("%2f", re.IGNORECASE)
_BACKSLASH = re.compile("%5c", re.IGNORECASE)
_SLASHES = re.compile("/{2,}")


def normalize_path(raw: str, mode: PathNormalization = PathNormalization.BASE) -> str:
    """The path part of ``raw`` (no query, no fragment), normalized by ``mode``."""
    cut = len(raw)
    for sep in ("?", "#"):
        at = raw.find(sep)
        if 0 <= at < cut:
            cut = at
    path = raw[:cut]
    if mode is PathNormalization.NONE:
        return path
    if mode is PathNormalization.DECODE_AND_MERGE_SLASHES and "%" in path:
        path = _BACKSLASH.sub("\\\\", _SLASH.sub("/", path))
    if "%" in path:
        path = _DOT.sub(".", path)
    if "." in path:
        path = _remove_dot_segments(path)
    if mode is not PathNormalization.BASE and "//" in path:
        path = _SLASHES.sub("/", path)
    return path


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, on an absolute path."""
    if not path.startswith("/"):
        path = "/" + path
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)
