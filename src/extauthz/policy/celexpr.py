"""CEL conditions (``extauthz.io/cel``): compiled and type-checked at load, evaluated from memory.

The runtime is Google's C++ CEL implementation (``cel-expr-python``). Every variable is declared
with its type, so a misspelt variable or field (``request.hedaers``) and a type error
(``request.method + 1``) are refused when the document is loaded, never at request time.

Variables (absent values are empty strings, empty maps or lists; never missing):

- ``request.method``, ``request.host``, ``request.path`` (normalized, no query): string
- ``request.query``: map(string, string); repeated keys joined with ``,`` as Envoy joins headers
- ``request.headers``: map(string, string), lower-case names, repeated headers joined with ``,``
- ``request.time``: timestamp (the instant of the Check; ``extauthz check --at`` sets it)
- ``source.principal``, ``source.namespace``, ``source.serviceAccount``, ``source.ip``: string
- ``destination.principal``, ``destination.ip``: string; ``destination.port``: int
- ``auth.principal`` (``iss/sub``), ``auth.presenter`` (``azp``): string;
  ``auth.claims``: map(string, dyn); ``auth.audiences``: list(string)
- ``tenant.name``, ``tenant.timeZone``: string
- ``data.contains(set, value)``: whether the tenant's DataSet ``set`` holds ``value`` (one hash
  lookup, any size of set)
- ``data``: map(string, list(string)), the DataSets as lists (``x in data.allowed``,
  ``data["revoked-jti"]`` for names with a dash). Lists are copied into the runtime on every
  evaluation, so an expression may read at most ``MAX_COPIED_VALUES`` values this way

Sets are read from the tenant's ``DataSets`` when a condition is evaluated, not copied at
compile time, so a store can change them without a recompile. A set that is not held (a
store's set that never loaded), or sets read as lists that have grown past the limit, are an
evaluation error, decided fail-closed.

Cost: the runtime has no cost limit, so it is bounded at validation: an expression is at most
``MAX_EXPRESSION_BYTES`` long, and comprehension macros (``all``, ``exists``, ``exists_one``,
``map``, ``filter``) may not nest, so the work of one expression grows linearly with the size
of the request (whose headers and token Envoy and the authenticator already bound), never as a
product of request-sized inputs.

Per Check, the variables are built once (on the first CEL condition the Check reaches) and
shared by every CEL condition of the tenant (``CelEnv.shared``); a token's claims are
converted once per verified payload (``CelEnv.claims``).
"""

from __future__ import annotations

import datetime
import functools
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import parse_qsl

from cel_expr_python import cel

from extauthz.datasets import DataSets
from extauthz.model import Subject
from extauthz.policy.celfast import FastProgram, Getter, Scope, translate
from extauthz.policy.matchers import Ctx

__all__ = [
    "MAX_EXPRESSION_BYTES",
    "CelEnv",
    "CelError",
    "CelProgram",
    "ErrorCounter",
    "activation",
]

MAX_EXPRESSION_BYTES: Final = 4096
_COMPREHENSIONS: Final = ("all", "exists", "exists_one", "map", "filter")
_T = cel.Type
_STR_MAP: Final = _T.Map(_T.STRING, _T.STRING)
VARIABLES: Final[Mapping[str, Any]] = {
    "request.method": _T.STRING,
    "request.host": _T.STRING,
    "request.path": _T.STRING,
    "request.query": _STR_MAP,
    "request.headers": _STR_MAP,
    "request.time": _T.TIMESTAMP,
    "source.principal": _T.STRING,
    "source.namespace": _T.STRING,
    "source.serviceAccount": _T.STRING,
    "source.ip": _T.STRING,
    "destination.principal": _T.STRING,
    "destination.ip": _T.STRING,
    "destination.port": _T.INT,
    "auth.principal": _T.STRING,
    "auth.claims": _T.Map(_T.STRING, _T.DYN),
    "auth.audiences": _T.List(_T.STRING),
    "auth.presenter": _T.STRING,
    "tenant.name": _T.STRING,
    "tenant.timeZone": _T.STRING,
    "data": _T.Map(_T.STRING, _T.List(_T.STRING)),
}
_DATA_CONTAINS: Final = "data.contains"
_SET_NAME: Final = re.compile(r"data\.contains\(\s*(?:\"([^\"\\]*)\"|'([^'\\]*)')")
# ``data`` as a variable (``x in data.name``, ``data["a-b"]``), not the data.contains function
_DATA_VARIABLE: Final = re.compile(r"\bdata\b(?!\s*\.\s*contains\s*\()")
_DATA_SELECT: Final = re.compile(
    r"\bdata\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()|\[\s*[\"']([^\"']*)[\"']\s*\])"
)
# Sets an expression reads as lists are copied into the runtime on every evaluation: bounded.
MAX_COPIED_VALUES: Final = 1000
_UNSET: Final = object()
# read first by the fast path, which leaves to the runtime the claims it cannot convert (the
# runtime fails, or errs, at its first read of them, in its own order of evaluation)
_EAGER: Final = frozenset({"auth.claims"})
# claims kept converted per tenant (each at most a token's size, which the authenticator bounds)
MAX_CONVERTED_CLAIMS: Final = 64


class CelError(ValueError):
    """An expression that does not compile, does not type-check, or costs too much."""


@dataclass(slots=True)
class ErrorCounter:
    """Evaluation errors of one tenant's CEL conditions (each one decided fail-closed)."""

    count: int = 0


@dataclass(frozen=True, slots=True)
class CelProgram:
    """One compiled expression. ``__call__`` is True, False, or None for an evaluation error."""

    source: str
    expression: Any = field(repr=False, compare=False)
    variables: frozenset[str] = frozenset()  # the variables it reads
    data: tuple[str, ...] | None = None  # the sets it reads as lists (``data.name``)
    # the same expression as Python closures (``celfast``), None outside that subset
    fast: FastProgram | None = field(default=None, repr=False, compare=False)

    def __call__(self, variables: Mapping[str, Any]) -> bool | None:
        return _run(self.expression, data=variables)

    def run(self, shared: Any) -> bool | None:
        """As ``__call__``, on an activation built once for the request (``CelEnv.shared``)."""
        return _run(self.expression, activation=shared)


def _run(expression: Any, **inputs: Any) -> bool | None:
    """``expression`` evaluated by the runtime on ``data=`` variables or an ``activation=``:
    True, False, or None for an evaluation error."""
    try:
        value = expression.eval(**inputs)
    except Exception:  # the runtime raises for values it cannot convert
        return None
    result = value.value()
    return result if type(result) is bool else None


class CelEnv:
    """The CEL environment of one tenant: its name, time zone and data sets."""

    def __init__(self, tenant: str, time_zone: str, data: DataSets) -> None:
        self.tenant = tenant
        self.time_zone = time_zone
        self.data = data
        self.errors = ErrorCounter()
        self._env: Any = None  # built on the first expression: most tenants have none
        self.reads: set[str] = set()  # what the tenant's expressions read, but ``data``
        # verified claims converted for the runtime, by the identity of the token's payload
        # (the authenticator's cache hands out the same payload for the same token), with
        # whether the runtime can convert them (``_convertible``)
        self._claims: dict[int, tuple[object, dict[str, Any], bool]] = {}
        self._fast: Scope | None = None

    def _runtime(self) -> Any:
        if self._env is None:
            decl = cel.FunctionDecl(
                _DATA_CONTAINS,
                [
                    cel.Overload(
                        "extauthz_data_contains_string_string",
                        _T.BOOL,
                        [_T.STRING, _T.STRING],
                        False,
                        self._contains,
                    )
                ],
            )
            self._env = cel.NewEnv(variables=dict(VARIABLES), functions=[decl])
        return self._env

    def _contains(self, name: str, value: str) -> bool:
        values = self.data.get(name)
        if values is None:
            raise KeyError(f"no DataSet {name!r}")  # an evaluation error: fail closed
        return value in values

    def lists(self, names: tuple[str, ...]) -> dict[str, list[str]]:
        """The sets ``names`` as lists for ``data``; raises LookupError or ValueError."""
        return self.data.lists(names, MAX_COPIED_VALUES)

    def compile(self, source: str) -> CelProgram:
        """Compile and type-check ``source``; raises CelError saying what is wrong."""
        if len(source.encode()) > MAX_EXPRESSION_BYTES:
            raise CelError(f"longer than {MAX_EXPRESSION_BYTES} bytes")
        check_cost(source)
        for name in _set_names(source):
            self._known(name)
        data = self._data_variable(source)
        try:
            expression = self._runtime().compile(source)
        except RuntimeError as exc:
            raise CelError(_message(str(exc))) from None
        kind = expression.return_type().name()
        if kind not in ("BOOL", "DYN"):
            raise CelError(f"must be a bool expression, not {kind.lower()}")
        variables = referenced(source)
        self.reads |= variables - {"data"}
        fast = translate(
            expression.serialize(),
            self._scope(),
            functools.partial(self._evaluate, expression, variables),
        )
        return CelProgram(source, expression, variables, data, fast)

    def _evaluate(self, expression: Any, names: frozenset[str], ctx: Ctx) -> bool | None:
        """``expression`` by the runtime, on the variables ``names`` of one request."""
        try:
            variables = activation(ctx, self, names)
        except Exception:  # e.g. claims nested too deep (RecursionError)
            return None
        return _run(expression, data=variables)

    def _scope(self) -> Scope:
        """The variables as the fast path reads them (``data`` is not in its subset)."""
        if self._fast is None:
            getters: dict[str, Getter] = {
                name: _bound(get, self)
                for name, get in GETTERS.items()
                if name not in ("data", "request.time", "auth.claims")
            }
            getters.update(_DIRECT)
            getters["request.time"] = _request_time
            getters["auth.claims"] = self._claims_getter()
            self._fast = Scope(
                getters,
                self._contains,
                constants={"tenant.name": self.tenant, "tenant.timeZone": self.time_zone},
                raising=frozenset({"request.time"}),
                eager=_EAGER,
            )
        return self._fast

    def claims(self, ctx: Ctx) -> dict[str, Any]:
        """``auth.claims``: the request's claims as plain data, converted once per token
        payload (the last ``MAX_CONVERTED_CLAIMS`` payloads are kept, with their payload so
        an identity is never mistaken for another)."""
        return self._converted(ctx)[1]

    def _claims_getter(self) -> Getter:
        """``converted_claims`` with the lookup of a payload converted before inline."""
        cache = self._claims
        converted = self.converted_claims

        def claims(ctx: Ctx) -> dict[str, Any]:
            raw = ctx.subject.claims
            if not raw:
                return _NO_CLAIMS[1]
            found = cache.get(id(raw))
            if found is not None and found[0] is raw and found[2]:
                return found[1]
            return converted(ctx)

        return claims

    def converted_claims(self, ctx: Ctx) -> dict[str, Any]:
        """``claims``, or ValueError where the runtime could not convert them (an integer
        outside int64/uint64, a string that is not UTF-8): the fast path's ``auth.claims``."""
        _, converted, ok = self._converted(ctx)
        if not ok:
            raise ValueError("claims the CEL runtime cannot convert")
        return converted

    def _converted(self, ctx: Ctx) -> tuple[object, dict[str, Any], bool]:
        raw = ctx.subject.claims
        if not raw:
            return _NO_CLAIMS
        found = self._claims.get(id(raw))
        if found is not None and found[0] is raw:
            return found
        normalized = ctx.claims
        converted: dict[str, Any] = _plain(normalized) if normalized else {}
        if len(self._claims) >= MAX_CONVERTED_CLAIMS:
            self._claims.clear()
        entry = self._claims[id(raw)] = (raw, converted, _convertible(converted))
        return entry

    def shared(self, ctx: Ctx) -> Any:
        """One activation per request holding every variable the tenant's expressions read,
        built by the first condition that needs it and kept in ``ctx.memo`` for the others;
        None when a value can't be built (each condition then builds only its own, so a
        value it doesn't read never decides it)."""
        memo = ctx.memo
        if memo is None:
            memo = ctx.memo = {}
        else:
            found = memo.get(self, _UNSET)
            if found is not _UNSET:
                return found
        try:
            built = self._runtime().Activation(data=activation(ctx, self, self.reads))
        except Exception:  # e.g. claims nested too deep (RecursionError)
            built = None
        memo[self] = built
        return built

    def _known(self, name: str) -> None:
        if not self.data.knows(name):
            known = ", ".join(self.data.names()) or "none"
            raise CelError(f"no DataSet {name!r} in tenant {self.tenant!r} (known: {known})")

    def _data_variable(self, source: str) -> tuple[str, ...] | None:
        """The names of the sets ``source`` reads through the ``data`` variable, or None."""
        text = _strip_strings(source)
        if not _DATA_VARIABLE.search(text):
            return None
        selects = [m[1] or source[m.start(2) : m.end(2)] for m in _DATA_SELECT.finditer(text)]
        # ``data`` used any other way (``data[x]``, ``data.size()``): every set
        uses = len(_DATA_VARIABLE.findall(text))
        names = sorted(set(selects if uses == len(selects) else self.data.names()))
        for name in names:
            self._known(name)
        # A live set's size at compile time says nothing of its size when read: checked then.
        size = 0 if self.data.live else sum(self.data.size(n) for n in names)
        if size > MAX_COPIED_VALUES:
            raise CelError(
                f"reads {size} DataSet values as lists, copied on every request (at most "
                f"{MAX_COPIED_VALUES}); test membership with data.contains(name, value)"
            )
        return tuple(names)


def _message(text: str) -> str:
    """The runtime's message without its status prefix and caret drawing."""
    text = text.removeprefix("INVALID_ARGUMENT: ").removesuffix(" [INVALID_ARGUMENT]")
    first = text.split("\n", 1)[0].removeprefix("ERROR: <input>:").replace(" (in container '')", "")
    where, sep, rest = first.partition(": ")
    line, colon, column = where.partition(":")
    if sep and colon and line.isdigit() and column.isdigit():
        return f"{rest} (expression line {line}, column {column})"
    return first


def _set_names(source: str) -> list[str]:
    return [a or b for a, b in _SET_NAME.findall(source)]


def _strip_strings(source: str) -> str:
    """``source`` with the contents of string and bytes literals blanked out (as ``_``, so
    positions stay those of ``source``)."""
    out: list[str] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch in "\"'":
            quote = source[i : i + 3] if source[i : i + 3] in ('"""', "'''") else ch
            raw = i > 0 and source[i - 1] in "rR"
            j = i + len(quote)
            while j < n and not source.startswith(quote, j):
                j += 2 if (source[j] == "\\" and not raw) else 1
            end = min(j + len(quote), n)
            out.append(quote + "_" * (j - i - len(quote)) + source[j:end])
            i = end
            continue
        out.append(ch)
        i += 1
    return "".join(out)


_MACRO: Final = re.compile(r"\.\s*(" + "|".join(_COMPREHENSIONS) + r")\s*\(")


def check_cost(source: str) -> None:
    """Refuse comprehension macros nested inside each other (raises CelError)."""
    text = _strip_strings(source)
    open_macros: list[int] = []  # paren depths at which a macro's arguments open
    depth = 0
    i = 0
    while i < len(text):
        m = _MACRO.match(text, i)
        if m is not None:
            if open_macros:
                raise CelError(
                    f"comprehension {m.group(1)!r} nested inside another: "
                    "the cost would grow with the product of input sizes"
                )
            depth += 1
            open_macros.append(depth)
            i = m.end()
            continue
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            if open_macros and open_macros[-1] == depth:
                open_macros.pop()
            depth -= 1
        i += 1


# -- the variables of one request ------------------------------------------------------------


VariableGetter = Callable[[Ctx, "CelEnv"], Any]


def _ip(value: object) -> str:
    return str(value) if value is not None else ""


@functools.lru_cache(maxsize=256)
def _workload(principal: str) -> tuple[str, str]:
    """``spiffe://td/ns/<ns>/sa/<sa>`` -> (ns, sa); ("", "") for any other form."""
    parts = principal.split("/")
    if len(parts) == 7 and parts[3] == "ns" and parts[5] == "sa":
        return parts[4], parts[6]
    return "", ""


GETTERS: Final[Mapping[str, VariableGetter]] = {
    "request.method": lambda c, e: c.subject.method,
    "request.host": lambda c, e: c.subject.host,
    "request.path": lambda c, e: c.subject.path,
    "request.query": lambda c, e: _query(c.subject),
    "request.headers": lambda c, e: _headers(c.subject.headers),
    "request.time": lambda c, e: c.subject.time,
    "source.principal": lambda c, e: c.subject.principal or "",
    "source.namespace": lambda c, e: _workload(c.subject.principal or "")[0],
    "source.serviceAccount": lambda c, e: _workload(c.subject.principal or "")[1],
    "source.ip": lambda c, e: _ip(c.subject.source_ip),
    "destination.principal": lambda c, e: c.subject.destination_principal or "",
    "destination.ip": lambda c, e: _ip(c.subject.destination_ip),
    "destination.port": lambda c, e: c.subject.destination_port or 0,
    "auth.principal": lambda c, e: _request_principal(c.claims or {}),
    "auth.claims": lambda c, e: e.claims(c),
    "auth.audiences": lambda c, e: _audiences(c.claims or {}),
    "auth.presenter": lambda c, e: _string((c.claims or {}).get("azp")),
    "tenant.name": lambda c, e: e.tenant,
    "tenant.timeZone": lambda c, e: e.time_zone,
    "data": lambda c, e: None,  # each condition passes the sets its expressions read
}


# variables read straight from the request (always strings there)
_DIRECT: Final[Mapping[str, Getter]] = {
    "request.method": operator.attrgetter("subject.method"),
    "request.host": operator.attrgetter("subject.host"),
    "request.path": operator.attrgetter("subject.path"),
}


def _request_time(ctx: Ctx) -> datetime.datetime:
    when = ctx.subject.time
    if when is None:  # no clock reading: the runtime has no such variable, an error
        raise LookupError("request.time")
    return when


def _bound(get: VariableGetter, env: CelEnv) -> Getter:
    return lambda ctx: get(ctx, env)


def activation(ctx: Ctx, env: CelEnv, names: Iterable[str] = VARIABLES) -> dict[str, Any]:
    """The CEL variables ``names`` of one request (by default all of them).

    A variable without a value (``request.time`` without a clock reading) is left out, so an
    expression that reads it fails, and is decided fail-closed.
    """
    out: dict[str, Any] = {}
    for name in names:
        value = GETTERS[name](ctx, env)
        if value is not None:
            out[name] = value
    return out


def referenced(source: str) -> frozenset[str]:
    """The variables ``source`` may read (a superset: names inside comments count too)."""
    text = _strip_strings(source)
    return frozenset(name for name, pattern in _REFERENCES.items() if pattern.search(text))


_REFERENCES: Final = {
    name: re.compile(r"\b" + r"\s*\.\s*".join(map(re.escape, name.split("."))) + r"\b")
    for name in VARIABLES
}


def _plain(value: Any) -> Any:
    """JSON-like data as the dicts and lists the runtime converts (claims are read-only views).

    Too deep a structure raises RecursionError (decided fail-closed by the caller)."""
    kind = type(value)
    if kind in _MAPS or (kind not in _LISTS and isinstance(value, Mapping)):
        return {
            k if type(k) is str else str(k): v if type(v) in _SCALARS else _plain(v)
            for k, v in value.items()
        }
    if kind in _LISTS or isinstance(value, (list, tuple)):
        return [v if type(v) in _SCALARS else _plain(v) for v in value]
    return value


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
_NO_CLAIMS: Final[tuple[object, dict[str, Any], bool]] = (None, {}, True)


def _convertible(value: Any) -> bool:
    """Whether the runtime converts ``value`` (plain data, as ``_plain`` makes it): integers
    within int64..uint64, strings that encode as UTF-8 (no lone surrogates from a JSON escape).
    Raises RecursionError for data nested too deep, as ``_plain`` does."""
    kind = type(value)
    if kind is str:
        return bool(value.isascii() or _utf8(value))
    if kind is int:
        return bool(-(2**63) <= value < 2**64)
    if kind is dict:
        return all(
            (k.isascii() or _utf8(k)) and (type(v) in _PLAIN_OK or _convertible(v))
            for k, v in value.items()
        )
    if kind is list:
        return all(type(v) in _PLAIN_OK or _convertible(v) for v in value)
    return kind in _PLAIN_OK


_PLAIN_OK: Final = frozenset({float, bool, type(None)})


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


_MAPS: Final = frozenset({dict, MappingProxyType})
_LISTS: Final = frozenset({list, tuple})


def _query(s: Subject) -> dict[str, str]:
    raw = s.query
    if not raw:
        return {}
    out: dict[str, str] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True, errors="replace"):
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def _headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request's headers as a dict the runtime reads (never writes): no copy if one."""
    return headers if type(headers) is dict else dict(headers)


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _request_principal(claims: Mapping[str, Any]) -> str:
    iss, sub = claims.get("iss"), claims.get("sub")
    return f"{iss}/{sub}" if isinstance(iss, str) and isinstance(sub, str) else ""


def _audiences(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [a for a in aud if isinstance(a, str)]
    return []
