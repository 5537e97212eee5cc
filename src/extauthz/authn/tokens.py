"""Find the tokens a request carries in the locations the rules look at.

Headers: each configured header; repeated headers arrive joined by ``,`` and a JWT never
contains one, so every comma-separated part is a candidate. With a prefix (``Bearer ``) a
part counts only if it starts with the prefix (compared case-insensitively, as HTTP auth
schemes are); the rest, trimmed, is the token. Query parameters: the query string of the
path, names and values URL-decoded. Cookies: the ``cookie`` header, ``;``-separated pairs,
quotes around a value removed. Empty values are no token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import unquote_plus

from extauthz.authn.rules import TokenLocation
from extauthz.model import RequestView

__all__ = ["TokenFinder"]

Found = Mapping[str, tuple[TokenLocation, ...]]


class TokenFinder:
    """Precomputes the locations once; ``__call__`` maps each token found to where it was."""

    __slots__ = ("_cookies", "_headers", "_params")

    def __init__(self, locations: Iterable[TokenLocation]) -> None:
        headers: dict[str, list[tuple[TokenLocation, str]]] = {}
        self._params: dict[str, TokenLocation] = {}
        self._cookies: dict[str, TokenLocation] = {}
        for loc in dict.fromkeys(locations):
            if loc.kind == "header":
                headers.setdefault(loc.name, []).append((loc, loc.prefix.lower()))
            elif loc.kind == "param":
                self._params[loc.name] = loc
            else:
                self._cookies[loc.name] = loc
        # header name -> (location, its prefix lower-cased), in the order of the locations
        self._headers = tuple((name, tuple(locs)) for name, locs in headers.items())

    def __call__(self, view: RequestView) -> Found:
        found: dict[str, tuple[TokenLocation, ...]] = {}
        request_headers = view.headers
        for name, locs in self._headers:
            value = request_headers.get(name)
            if value:
                for loc, prefix in locs:
                    for token in _header_tokens(value, prefix):
                        found[token] = (*found[token], loc) if token in found else (loc,)
        if self._params:
            self._find_params(view.path, found)
        if self._cookies:
            cookie = request_headers.get("cookie")
            if cookie:
                self._find_cookies(cookie, found)
        return found

    def _find_params(self, path: str, found: dict[str, tuple[TokenLocation, ...]]) -> None:
        _, sep, query = path.partition("?")
        if not sep:
            return
        query = query.partition("#")[0]
        for pair in query.split("&"):
            raw_name, _, raw_value = pair.partition("=")
            loc = self._params.get(unquote_plus(raw_name))
            if loc is not None:
                token = unquote_plus(raw_value).strip()
                if token:
                    found[token] = (*found[token], loc) if token in found else (loc,)

    def _find_cookies(self, cookie: str, found: dict[str, tuple[TokenLocation, ...]]) -> None:
        for part in cookie.replace(",", ";").split(";"):
            name, sep, value = part.partition("=")
            if not sep:
                continue
            loc = self._cookies.get(name.strip())
            if loc is None:
                continue
            token = value.strip()
            if len(token) >= 2 and token[0] == token[-1] == '"':
                token = token[1:-1]
            if token:
                found[token] = (*found[token], loc) if token in found else (loc,)


def _header_tokens(value: str, prefix: str) -> list[str]:
    """The tokens of a header value; ``prefix`` lower-cased (compared case-insensitively)."""
    out: list[str] = []
    plen = len(prefix)
    # One value is the common case: `in` finds a comma without split's slower scan.
    for part in value.split(",") if "," in value else [value]:
        part = part.strip()
        if plen:
            if part[:plen].lower() != prefix:
                continue
            part = part[plen:].strip()
        if part:
            out.append(part)
    return out
