"""Path templates: Istio's ``{*}`` / ``{**}`` forms as Envoy's ``uri_template`` matcher runs them.

Istio turns ``/a/{*}/b/{**}`` into the Envoy template ``/a/*/b/**``; Envoy compiles it to one
RE2 regex and full-matches the path without its query:

- ``*`` (one segment): ``[<literal>]+`` — one or more literal characters, never ``/``;
- ``**`` (any tail): ``[<literal>/]*`` — zero or more characters, ``/`` included;
- literal segments are matched as they are.

A text glob ``**`` may be followed by literal segments (Istio emits ``/**/path/template``) but
not by another operator; Envoy rejects such a template, so we reject it when compiling.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["TemplateError", "is_template", "template_regex"]

# RFC 3986 pchar minus "*" (Envoy's kLiteral): unreserved, pct-encoded, sub-delims but "*", ":@".
_LITERAL: Final = r"a-zA-Z0-9\-._~%!$&'()+,;:@="
_SEGMENT_GLOB: Final = f"[{_LITERAL}]+"
_TEXT_GLOB: Final = f"[{_LITERAL}/]*"
_LITERAL_SEGMENT: Final = re.compile(f"[{_LITERAL}]+")


class TemplateError(ValueError):
    """A path template Envoy would not accept."""


def is_template(path: str) -> bool:
    """Istio's test: the value holds ``{*}`` or ``{**}``."""
    return "{*}" in path or "{**}" in path


def template_regex(path: str) -> str:
    """The regex (for ``re.fullmatch``) Envoy builds from Istio's template ``path``."""
    if not path.startswith("/"):
        raise TemplateError("a path template must start with '/'")
    parts: list[str] = []
    seen_text_glob = False
    for segment in path[1:].split("/"):
        if segment in ("{*}", "{**}"):
            if seen_text_glob:
                raise TemplateError("no operator may follow {**}")
            if segment == "{**}":
                seen_text_glob = True
                parts.append(_TEXT_GLOB)
            else:
                parts.append(_SEGMENT_GLOB)
        elif _LITERAL_SEGMENT.fullmatch(segment):
            parts.append(re.escape(segment))
        elif not segment:
            raise TemplateError("empty path segment in a path template")
        else:
            raise TemplateError(
                f"segment {segment!r}: a template segment is {{*}}, {{**}} or literal "
                "characters (no '*', '{', '}')"
            )
    return "/" + "/".join(parts)
