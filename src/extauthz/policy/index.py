"""Which rules can match a request: a tenant's rules indexed at compile time.

Most rules of a tenant cannot match a given request for a reason that is cheap to see: their
operations allow other methods, other hosts, other paths, or their sources other principals.
``Need`` is such a necessary condition of one field, a set of keys: a request whose key (its
method, lower-case host, first path segment, peer principal) is not in the set can never match
that field. A rule's needs combine its fields' needs (any ``to``/``from`` entry: the union of
the entries' keys; ``when``: all conditions, the intersection), and ``RuleIndex`` maps each
request key to the bit set of the rules that can still match, per dimension; the candidates
are the intersection of those bit sets. ``evaluate`` runs only the candidates, in the same
order as all the rules: every rule left out cannot match, so the first matching rule, and every
AUDIT match, is the one it would have been without the index.

A need is only ever a superset of the keys that can match: forms that do not fix the key (a
``*``, a suffix, a prefix that ends inside the first path segment, a method or host prefix)
give no need, and the rule is a candidate for every key of that dimension. Negated fields
(``notMethods``...) never give a need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from extauthz.policy.matchers import Ctx, ValueForms, ascii_lower
from extauthz.policy.paths import is_template

__all__ = [
    "DIMENSIONS",
    "Need",
    "RuleIndex",
    "conditions_need",
    "entries_need",
    "host_need",
    "method_need",
    "path_key",
    "path_need",
    "principal_need",
]

METHOD: Final = "method"
HOST: Final = "host"
PATH: Final = "path"
PRINCIPAL: Final = "principal"
DIMENSIONS: Final = (METHOD, HOST, PATH, PRINCIPAL)
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Need:
    """A field can match only a request whose key on ``dim`` is one of ``keys`` (each once,
    in a fixed order: a tuple, a fifth of a frozenset's size for the single key of most
    needs, and a need lives as long as its check); ``exact``: and it does match every such
    request (its values are the keys, nothing more to test)."""

    dim: str
    keys: tuple[str, ...]
    exact: bool = False


def method_need(values: Iterable[str]) -> Need | None:
    """``methods``: exact values only (case-sensitive, as the matcher). Exact."""
    return _exact(METHOD, values, _same)


def host_need(values: Iterable[str]) -> Need | None:
    """``hosts``: exact values only, ASCII-folded (the key is the folded ``:authority``).
    Exact."""
    return _exact(HOST, values, ascii_lower)


def principal_need(uris: Iterable[str]) -> Need | None:
    """``principals`` (values already expanded to trust-domain aliases, without
    ``spiffe://``): exact values only; the key is the peer's full SPIFFE URI. Exact."""
    return _exact(PRINCIPAL, uris, _spiffe)


def path_key(path: str) -> str:
    """A path's first segment with its leading ``/`` (``/api`` of ``/api/v2/x``), or the
    whole text when it has no ``/`` after its first character."""
    end = path.find("/", 1)
    return path if end < 0 else path[:end]


def path_need(values: Iterable[str]) -> Need | None:
    """``paths``: the first segment, where every value fixes it: an exact value always; a
    prefix (``abc*``) or a template (the text before its first ``{``) when it holds a ``/``
    after its first character. ``*`` and suffixes (``*abc``) fix nothing."""
    keys: set[str] = set()
    for value in values:
        if is_template(value):
            literal = value[: value.index("{")]
        elif value.startswith("*"):
            return None
        elif value.endswith("*"):
            literal = value[:-1]
        else:
            keys.add(path_key(value))
            continue
        end = literal.find("/", 1)
        if end < 0:
            return None
        keys.add(literal[:end])
    return Need(PATH, tuple(sorted(keys)))


def _same(value: str) -> str:
    return value


def _spiffe(value: str) -> str:
    return "spiffe://" + value


def _exact(dim: str, values: Iterable[str], key: Callable[[str], str]) -> Need | None:
    """Values of exact forms only: the field matches a request exactly when its key is the
    ``key`` of one of them (the matchers of methods, hosts, principals test just that)."""
    forms = ValueForms.split(values)
    if forms.star or forms.prefixes or forms.suffixes:
        return None
    return Need(dim, tuple(dict.fromkeys(key(v) for v in forms.exact)), exact=True)


def entries_need(dim: str, entries: Sequence[Sequence[Need | None]]) -> frozenset[str] | None:
    """The keys any of ``entries`` (``from`` or ``to``, each all of its fields' needs) allows
    on ``dim``: None when an entry does not fix the key (or there are no entries)."""
    union: set[str] = set()
    for entry in entries:
        keys = _all_of(dim, entry)
        if keys is None:
            return None
        union |= keys
    return frozenset(union) if entries else None


def conditions_need(dim: str, needs: Iterable[Need | None]) -> frozenset[str] | None:
    """The keys all of ``needs`` allow on ``dim``, None when none of them fixes it."""
    return _all_of(dim, needs)


def _all_of(dim: str, needs: Iterable[Need | None]) -> frozenset[str] | None:
    keys: frozenset[str] | None = None
    for need in needs:
        if need is not None and need.dim == dim:
            keys = frozenset(need.keys) if keys is None else keys.intersection(need.keys)
    return keys


class _Dispatch:
    """One dimension: a request key -> the rules that can still match (a bit set)."""

    __slots__ = ("default", "table")

    def __init__(self, table: dict[str, int], default: int) -> None:
        self.table = table
        self.default = default  # the rules this dimension does not constrain


class RuleIndex(Generic[R]):
    """The rules of several groups (DENY, ALLOW...) in one bit space: bit i is ``rules[i]``,
    ``masks[g]`` the bits of group g, each group's rules in their own order.

    ``needs`` gives each rule's needs (``dim -> keys``; a missing dimension: any key). Only
    the dimensions some rule constrains are looked at per request.
    """

    __slots__ = ("all", "host", "masks", "method", "path", "principal", "rules")

    def __init__(
        self,
        groups: Sequence[Sequence[R]],
        needs: Callable[[R], Mapping[str, frozenset[str]]],
    ) -> None:
        self.rules: tuple[R, ...] = tuple(rule for group in groups for rule in group)
        masks: list[int] = []
        start = 0
        for group in groups:
            masks.append(((1 << len(group)) - 1) << start)
            start += len(group)
        self.masks: tuple[int, ...] = tuple(masks)
        self.all = (1 << len(self.rules)) - 1
        by_rule = [needs(rule) for rule in self.rules]
        self.method = _dispatch(METHOD, by_rule)
        self.host = _dispatch(HOST, by_rule)
        self.path = _dispatch(PATH, by_rule)
        self.principal = _dispatch(PRINCIPAL, by_rule)

    def candidates(self, ctx: Ctx) -> int:
        """The rules that can match the request of ``ctx``: a bit set."""
        subject = ctx.subject
        bits = self.all
        d = self.method
        if d is not None:
            bits &= d.table.get(subject.method, d.default)
        d = self.path
        if d is not None:
            path = subject.path  # path_key(path), inline
            end = path.find("/", 1)
            bits &= d.table.get(path if end < 0 else path[:end], d.default)
        d = self.principal
        if d is not None:
            principal = subject.principal
            bits &= d.default if principal is None else d.table.get(principal, d.default)
        d = self.host
        if d is not None and bits:
            bits &= d.table.get(ctx.host_lower, d.default)
        return bits

    def select(self, bits: int, group: int) -> tuple[R, ...]:
        """The rules of ``group`` among ``bits``, in order."""
        rules = self.rules
        bits &= self.masks[group]
        out: list[R] = []
        while bits:
            low = bits & -bits
            out.append(rules[low.bit_length() - 1])
            bits ^= low
        return tuple(out)


def _dispatch(dim: str, needs: Sequence[Mapping[str, frozenset[str]]]) -> _Dispatch | None:
    default = 0
    table: dict[str, int] = {}
    for i, need in enumerate(needs):
        keys = need.get(dim)
        if keys is None:
            default |= 1 << i
            continue
        for key in keys:
            table[key] = table.get(key, 0) | 1 << i
    if default == (1 << len(needs)) - 1:
        return None  # no rule constrains this dimension
    return _Dispatch({key: bits | default for key, bits in table.items()}, default)
