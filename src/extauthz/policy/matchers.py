"""The matching primitives, precomputed at compile time and applied per request.

Every primitive reproduces one Envoy matcher as Istio configures it:

- ``StringSet``: Envoy ``StringMatcher`` / ``HeaderMatcher`` values of one field folded into a
  frozenset of exact values, a tuple of prefixes, a tuple of suffixes and one combined regex
  (full match, as Envoy's ``safe_regex``). ``*`` is either Envoy ``present_match`` (headers,
  host, method: present, even empty) or the regex ``.+`` (everything else: non-empty).
- ``IPSet``: Envoy ``CidrRange`` (host bits masked), IPv4 and IPv6 apart.
- ``Ctx``: the per-request view the matchers read; derived values (lower-cased host, JWT
  claims with space-delimited claims split) are computed once, on first use.

A matcher is a plain ``Callable[[Ctx], bool]``. A missing attribute never matches.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple, Protocol, cast

import re2

from extauthz.model import IPAddress, Subject

__all__ = [
    "MISSING",
    "Ctx",
    "IPSet",
    "Matcher",
    "StringSet",
    "ascii_lower",
    "parse_cidr",
    "parse_port",
    "split_claim",
]

MISSING: Final = object()


class Regex(Protocol):
    """What the matchers use of a compiled pattern (``re`` and ``re2`` alike)."""

    def fullmatch(self, value: str) -> object | None: ...


_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PORT: Final = re.compile(r"[0-9]+")


def ascii_lower(value: str) -> str:
    """Envoy's ``ignore_case`` folds ASCII letters only."""
    return value.lower() if value.isascii() else value.translate(_ASCII_LOWER)


class Ctx:
    """What the matchers of one request read. Built once per evaluation."""

    __slots__ = ("_claims", "_host", "memo", "space_delimited", "subject")

    def __init__(self, subject: Subject, space_delimited: frozenset[str]) -> None:
        self.subject = subject
        self.space_delimited = space_delimited  # the claims split at spaces
        self._host: str | None = None
        self._claims: Mapping[str, Any] | object | None = MISSING
        # what condition kinds build once per request and share (the CEL variables), by owner
        self.memo: dict[object, Any] | None = None

    @property
    def host_lower(self) -> str:
        host = self._host
        if host is None:
            host = self.subject.host  # ascii_lower(host), inline
            host = self._host = host.lower() if host.isascii() else host.translate(_ASCII_LOWER)
        return host

    @property
    def claims(self) -> Mapping[str, Any] | None:
        """The JWT payload as Envoy's jwt_authn puts it in metadata (space-delimited split)."""
        claims = self._claims
        if claims is MISSING:
            claims = self._claims = _normalize_claims(self.subject.claims, self.space_delimited)
        return claims  # type: ignore[return-value]

    def claim(self, path: tuple[str, ...]) -> Any:
        """The value at ``path`` in the claims (as ``claims`` has them), or MISSING.

        Reads the one top-level claim it needs, split there if space-delimited, rather than
        building all of ``claims``."""
        if not path:
            whole = self.claims
            return MISSING if whole is None else whole
        claims = self._claims
        if claims is MISSING:
            claims = self.subject.claims
            if claims is None:
                return MISSING
            head = path[0]
            value: Any = claims.get(head, MISSING)
            if isinstance(value, str) and head in self.space_delimited:
                value = split_claim(value)
        else:
            if claims is None:
                return MISSING
            value = claims.get(path[0], MISSING)  # type: ignore[attr-defined]
        if value is MISSING or len(path) == 1:
            return value
        for key in path[1:]:
            if type(value) is not dict and not isinstance(value, Mapping):
                return MISSING
            value = value.get(key, MISSING)
            if value is MISSING:
                return MISSING
        return value


def split_claim(value: str) -> list[str]:
    """A space-delimited claim as Envoy's jwt_authn puts it in metadata: its non-empty parts."""
    return [part for part in value.split(" ") if part]


def _normalize_claims(
    claims: Mapping[str, Any] | None, space_delimited: frozenset[str]
) -> Mapping[str, Any] | None:
    if claims is None:
        return None
    split: dict[str, Any] | None = None
    for name in space_delimited:
        value = claims.get(name)
        if isinstance(value, str):
            if split is None:
                split = dict(claims)
            split[name] = split_claim(value)
    return claims if split is None else split


Matcher = Callable[[Ctx], bool]


class ValueForms(NamedTuple):
    """A field's values sorted by Istio's forms."""

    exact: list[str]
    prefixes: list[str]  # from ``abc*``
    suffixes: list[str]  # from ``*abc``
    star: bool  # ``*`` was among them

    @classmethod
    def split(cls, values: Iterable[str]) -> ValueForms:
        forms = cls([], [], [], False)
        star = False
        for v in values:
            if v == "*":
                star = True
            elif v.startswith("*"):
                forms.suffixes.append(v[1:])
            elif v.endswith("*"):
                forms.prefixes.append(v[:-1])
            else:
                forms.exact.append(v)
        return forms._replace(star=star)


# Python's backtracking engine is fast on the regexes Istio's forms produce (at most three
# unbounded repeats: `.*/ns/<ns>/.*`, the service-account form), but a value with more `*`s
# (`namespaces: ["a*b*c*d"]`) would take exponential time on a long principal. Those go to
# RE2 (linear time, and the engine Envoy runs them with); RE2 costs a few microseconds more
# per call through its binding, so only where it is needed.
MAX_BACKTRACKING_REPEATS: Final = 3
_UNBOUNDED: Final = re.compile(r"(?<!\\)[*+]")


def compile_regex(pattern: str, alternatives: Iterable[str] = ()) -> Regex:
    """``pattern`` (the ``|`` of ``alternatives``) compiled for a full match in time linear
    in the input: Python's ``re`` where every alternative is simple enough, else RE2."""
    parts = tuple(alternatives) or (pattern,)
    if max(len(_UNBOUNDED.findall(part)) for part in parts) <= MAX_BACKTRACKING_REPEATS:
        return re.compile(pattern)
    return cast(Regex, re2.compile(pattern))


def _always(value: str) -> bool:
    return True


class StringSet:
    """Any of a field's string values, as Envoy string/header matchers run them."""

    __slots__ = ("exact", "ignore_case", "nonempty", "prefixes", "present", "regex", "suffixes")

    def __init__(
        self,
        *,
        exact: Iterable[str] = (),
        prefixes: Iterable[str] = (),
        suffixes: Iterable[str] = (),
        regexes: Iterable[str] = (),
        present: bool = False,
        nonempty: bool = False,
        ignore_case: bool = False,
    ) -> None:
        fold = ascii_lower if ignore_case else _same
        self.exact = frozenset(fold(v) for v in exact)
        self.prefixes = tuple(fold(v) for v in prefixes)
        self.suffixes = tuple(fold(v) for v in suffixes)
        regexes = tuple(regexes)
        pattern = "|".join(f"(?:{r})" for r in regexes)
        self.regex = compile_regex(pattern, regexes) if pattern else None
        self.present = present
        self.nonempty = nonempty
        self.ignore_case = ignore_case

    @classmethod
    def istio(cls, values: Iterable[str], *, star: str, ignore_case: bool = False) -> StringSet:
        """Istio's value forms: ``abc`` exact, ``abc*`` prefix, ``*abc`` suffix, ``*``.

        ``star`` is ``"present"`` (Envoy present_match) or ``"nonempty"`` (regex ``.+``).
        """
        forms = ValueForms.split(values)
        return cls(
            exact=forms.exact,
            prefixes=forms.prefixes,
            suffixes=forms.suffixes,
            present=forms.star and star == "present",
            nonempty=forms.star and star == "nonempty",
            ignore_case=ignore_case,
        )

    @property
    def test(self) -> Callable[[str], bool]:
        """The cheapest callable that answers as ``__call__`` does (built at compile time)."""
        if self.present:
            return _always
        if self.ignore_case or self.suffixes or self.nonempty:
            return self.__call__
        exact, prefixes, regex = self.exact, self.prefixes, self.regex
        if regex is None:
            if not prefixes:
                return exact.__contains__
            return _exact_or_prefix(exact, prefixes)
        if not (exact or prefixes):
            return _regex_only(regex)
        return self.__call__

    def __call__(self, value: str) -> bool:
        if self.present:
            return True
        if self.ignore_case:
            value = ascii_lower(value)
        if value in self.exact:
            return True
        if self.prefixes and value.startswith(self.prefixes):
            return True
        if self.suffixes and value.endswith(self.suffixes):
            return True
        if self.nonempty and value and "\n" not in value:
            return True
        regex = self.regex
        return regex is not None and regex.fullmatch(value) is not None


def _same(value: str) -> str:
    return value


def _exact_or_prefix(exact: frozenset[str], prefixes: tuple[str, ...]) -> Callable[[str], bool]:
    def exact_or_prefix(value: str) -> bool:
        return value in exact or value.startswith(prefixes)

    return exact_or_prefix


def _regex_only(regex: Regex) -> Callable[[str], bool]:
    fullmatch = regex.fullmatch

    def regex_only(value: str) -> bool:
        return fullmatch(value) is not None

    return regex_only


class IPSet:
    """Any of a field's CIDR ranges (Envoy ``CidrRange``)."""

    __slots__ = ("_v4", "_v6", "v4", "v6")

    def __init__(self, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self.v4 = tuple(n for n in networks if isinstance(n, ipaddress.IPv4Network))
        self.v6 = tuple(n for n in networks if isinstance(n, ipaddress.IPv6Network))
        # (network, mask) as integers: ``ip in network`` is ``int(ip) & mask == network``
        self._v4 = tuple((int(n.network_address), int(n.netmask)) for n in self.v4)
        self._v6 = tuple((int(n.network_address), int(n.netmask)) for n in self.v6)

    def __call__(self, ip: IPAddress | None) -> bool:
        if ip is None:
            return False
        nets = self._v4 if isinstance(ip, ipaddress.IPv4Address) else self._v6
        value = int(ip)
        for network, mask in nets:  # noqa: SIM110 - a generator would cost a frame per call
            if value & mask == network:
                return True
        return False


def parse_cidr(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Istio's ``AddrStrToCidrRange``: an IP (full length) or a CIDR (host bits masked)."""
    if "%" in value or value.strip() != value:
        raise ValueError(f"invalid IP address or CIDR {value!r}")
    try:
        if "/" in value:
            addr, _, bits = value.partition("/")
            if not bits.isascii() or not bits.isdigit():
                raise ValueError(value)
            return ipaddress.ip_network(f"{ipaddress.ip_address(addr)}/{int(bits)}", strict=False)
        return ipaddress.ip_network(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"invalid IP address or CIDR {value!r}") from None


def parse_port(value: str) -> int:
    """Istio's ``convertToPort``: decimal digits, at most 65535."""
    if not _PORT.fullmatch(value) or int(value) > 65535:
        raise ValueError(f"invalid port {value!r}")
    return int(value)
