"""The CEL fast path: an expression of a common subset, run as one Python function.

The runtime (``celexpr``) parses and type-checks every expression. For one built only of what
this module knows, the checked syntax tree (``cel.expr.CheckedExpr``: the type of every node,
the overload every call resolved to) is translated once, at compile time, into the source of
one Python function that reads the request directly, instead of converting the request's
variables into the runtime and calling it (3-6 us per expression). Only node kinds and the
names of closure cells enter that source; literals, getters and sets are bound as cells, so
no text of a document is ever compiled as Python. What the runtime does is what it does:

- an evaluation error (a missing map key, a value whose type no overload takes, a DataSet not
  held) is an exception; the expression is an error (decided fail-closed by the caller) unless
  ``&&`` / ``||`` absorb it as CEL does, in either order (``false && error`` is false,
  ``error || true`` is true); a side that cannot fail is evaluated first (CEL's ``&&`` and
  ``||`` commute), both sides when both can;
- equality only where Python's ``==`` is CEL's: two values of one type (string, int, bool), or
  a string and a ``dyn`` value (a Python str equals nothing but a str, as a CEL string under
  heterogeneous equality); membership (``in``) of a string in a list, a map's keys or a ``dyn``
  value that is one of them;
- variables whose getter may fail (``auth.claims`` holding what the runtime cannot convert: an
  integer past 64 bits, a string that is not UTF-8) are read first, and when one fails the
  runtime decides the request (``fallback``), since where it fails depends on its own order
  of evaluation.

The subset: string, int and bool literals; the request variables but the ``data`` variable;
field selection and ``[]`` on maps with string keys, ``has()``; ``!``, ``&&``, ``||``, ``? :``;
``==``, ``!=``; ``<``, ``<=``, ``>``, ``>=`` on two ints, two strings or two timestamps; ``in``;
``size``; ``startsWith``, ``endsWith``, ``contains``; ``matches`` with a literal pattern (RE2,
as the runtime); ``data.contains``; ``request.time`` accessors in UTC, a literal IANA zone or
``tenant.timeZone``, and ``timestamp`` literals. Anything else (arithmetic, durations, zones
as offsets, macros, doubles) keeps the runtime, and so does a whole expression using it.
tests/test_cel_fast.py holds the translation to the runtime's results over generated
expressions and requests.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo

import re2
from cel.expr import checked_pb2, syntax_pb2
from google.protobuf import any_pb2

from extauthz.policy.matchers import Ctx

__all__ = ["FastProgram", "Getter", "Scope", "translate"]

Getter = Callable[[Ctx], Any]
FastProgram = Callable[[Ctx], "bool | None"]

_STRING: Final = "string"
_INT: Final = "int"
_BOOL: Final = "bool"
_DYN: Final = "dyn"
_MAP: Final = "map"  # with string keys
_LIST: Final = "list"
_TIME: Final = "timestamp"  # an aware datetime
_PRIMITIVE: Final = {
    checked_pb2.Type.PrimitiveType.STRING: _STRING,
    checked_pb2.Type.PrimitiveType.INT64: _INT,
    checked_pb2.Type.PrimitiveType.BOOL: _BOOL,
}


class _Unsupported(Exception):
    """Outside the subset: the expression keeps the runtime."""


class EvalError(Exception):
    """A CEL evaluation error (no overload for the value's type)."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What a tenant's expressions may read, and how."""

    getters: Mapping[str, Getter]  # the variables, read from the request
    contains: Callable[[str, str], bool]  # ``data.contains``; raises for a set not held
    constants: Mapping[str, object] = field(default_factory=dict)  # fixed for the tenant
    raising: frozenset[str] = frozenset()  # getters that raise for a missing value (an error)
    # getters that raise for a value the fast path does not model: read first, and when one
    # raises, the runtime decides the request
    eager: frozenset[str] = frozenset()


def translate(serialized: bytes, scope: Scope, fallback: FastProgram) -> FastProgram | None:
    """The expression the runtime serialized (``Expression.serialize()``) as one Python
    function of a request's ``Ctx``, or None when it uses anything outside the subset.
    ``fallback``: the runtime's evaluation, for what ``scope.eager`` leaves to it."""
    wrapper = any_pb2.Any()
    checked = checked_pb2.CheckedExpr()
    try:
        wrapper.ParseFromString(serialized)
        if not wrapper.Unpack(checked):
            return None
        gen = _Generator(checked, scope)
        code = gen.root(checked.expr)
        return gen.function(code, scope.contains, fallback)
    except (_Unsupported, SyntaxError, RecursionError, MemoryError):  # too deep for Python
        return None


# The generated function: one frame per expression, the variables and literals bound as
# closure cells of ``make`` (never spliced into the source: only node kinds and cell names are),
# the helpers below as its globals.
_TEMPLATE: Final = """\
def make({cells}):
{helpers}    def program(ctx):
{reads}        try:
            v = {code}
        except Exception:
            return None
        return v if v.__class__ is bool else None
    return program
"""
_READS: Final = """\
        try:
{reads}        except Exception:
            return fallback(ctx)
"""


_PARAMS: Final = "@params@"  # the request and the eager reads, filled in last


class _Generator:
    def __init__(self, checked: checked_pb2.CheckedExpr, scope: Scope) -> None:
        self.types = checked.type_map
        self.refs = checked.reference_map
        self.scope = scope
        self.cells: dict[str, object] = {}
        self.helpers: list[str] = []  # nested functions for the operands ``_and``/``_or`` take
        self.reads: dict[str, str] = {}  # eager variable -> the local holding it

    def cell(self, value: object) -> str:
        for name, held in self.cells.items():
            if held is value:
                return name
        name = f"k{len(self.cells)}"
        self.cells[name] = value
        return name

    def function(
        self, code: str, contains: Callable[[str, str], bool], fallback: FastProgram
    ) -> FastProgram:
        self.cells["contains"] = contains
        self.cells["fallback"] = fallback
        reads = "".join(f"            {v} = {getter}(ctx)\n" for getter, v in self.reads.items())
        if reads:
            reads = _READS.format(reads=reads)
        params = ", ".join(["ctx", *self.reads.values()])
        source = _TEMPLATE.format(
            cells=", ".join(self.cells),
            helpers="".join(f"    {h}\n" for h in self.helpers) or "    pass\n",
            reads=reads,
            code=code,
        ).replace(_PARAMS, params)
        namespace: dict[str, Any] = dict(_HELPERS)
        exec(compile(source, "<cel fast path>", "exec"), namespace)  # noqa: S102
        program: FastProgram = namespace["make"](**self.cells)
        return program

    def kind(self, e: syntax_pb2.Expr) -> str:
        t = self.types.get(e.id)
        if t is None:
            raise _Unsupported("untyped node")
        which = t.WhichOneof("type_kind")
        if which == "primitive":
            found = _PRIMITIVE.get(t.primitive)
            if found is None:
                raise _Unsupported("primitive type")
            return found
        if which == "dyn":
            return _DYN
        if which == "map_type":
            if t.map_type.key_type.primitive != checked_pb2.Type.PrimitiveType.STRING:
                raise _Unsupported("map key type")
            return _MAP
        if which == "list_type":
            return _LIST
        if which == "well_known" and t.well_known == checked_pb2.Type.WellKnownType.TIMESTAMP:
            return _TIME
        raise _Unsupported(f"type {which}")

    def root(self, e: syntax_pb2.Expr) -> str:
        return self.boolean(e)[0]

    def boolean(self, e: syntax_pb2.Expr) -> tuple[str, bool]:
        """(code, may raise) of an operand that must be a bool."""
        return self.checked(e, _BOOL, "_boolean")

    def string(self, e: syntax_pb2.Expr) -> tuple[str, bool]:
        """(code, may raise) of an operand that must be a string."""
        return self.checked(e, _STRING, "_string")

    def checked(self, e: syntax_pb2.Expr, kind: str, check: str) -> tuple[str, bool]:
        """(code, may raise) of an operand of type ``kind``: a ``dyn`` one goes through
        ``check``, which raises for a value of another type."""
        found = self.kind(e)
        code, raises = self.expr(e)
        if found == kind:
            return code, raises
        if found == _DYN:
            return f"{check}({code})", True
        raise _Unsupported(f"not a {kind}")

    def expr(self, e: syntax_pb2.Expr) -> tuple[str, bool]:
        """(Python expression, whether it may raise) for one node."""
        which = e.WhichOneof("expr_kind")
        if which == "const_expr":
            return self.cell(_constant(e.const_expr)), False
        if which == "ident_expr":
            return self.variable(e, e.ident_expr.name)
        if which == "select_expr":
            return self.select(e)
        if which == "call_expr":
            call = e.call_expr
            args = list(call.args)
            if call.HasField("target"):
                args.insert(0, call.target)
            build = _CALLS.get((call.function, len(args)))
            if build is None:
                raise _Unsupported(f"function {call.function}/{len(args)}")
            return build(self, e, args)
        raise _Unsupported(f"expression {which}")

    def variable(self, e: syntax_pb2.Expr, name: str) -> tuple[str, bool]:
        name = self.name(e, name)
        self.kind(e)  # a type the subset knows
        if name in self.scope.constants:
            return self.cell(self.scope.constants[name]), False
        getter = self.scope.getters.get(name)
        if getter is None:
            raise _Unsupported(f"variable {name}")
        cell = self.cell(getter)
        if name in self.scope.eager:  # read once, first
            return self.reads.setdefault(cell, f"v{len(self.reads)}"), False
        return f"{cell}(ctx)", name in self.scope.raising

    def name(self, e: syntax_pb2.Expr, name: str) -> str:
        ref = self.refs.get(e.id)
        return ref.name if ref is not None and ref.name else name

    def fixed(self, e: syntax_pb2.Expr) -> tuple[object] | None:
        """(value,) of a literal or of a variable fixed for the tenant, else None."""
        found = _literal(e)
        if found is None and e.WhichOneof("expr_kind") == "ident_expr":
            name = self.name(e, e.ident_expr.name)
            if name in self.scope.constants:
                return (self.scope.constants[name],)
        return found

    def select(self, e: syntax_pb2.Expr) -> tuple[str, bool]:
        ref = self.refs.get(e.id)
        if ref is not None and ref.name and not ref.overload_id:
            return self.variable(e, ref.name)  # a qualified name resolved by the checker
        select = e.select_expr
        kind = self.kind(select.operand)
        if kind not in (_MAP, _DYN):
            raise _Unsupported("select on a non-map")
        operand, _ = self.expr(select.operand)
        key = self.cell(select.field)
        if select.test_only:
            if kind == _MAP:
                return f"({key} in {operand})", False
            return f"_has({operand}, {key})", True
        self.kind(e)
        if kind == _MAP:
            return f"{operand}[{key}]", True
        return f"_select({operand}, {key})", True

    # -- calls -------------------------------------------------------------------------------

    def logical(self, e: syntax_pb2.Expr, args: list[syntax_pb2.Expr]) -> tuple[str, bool]:
        (a, ra), (b, rb) = (self.boolean(x) for x in args)
        op = "and" if e.call_expr.function == "_&&_" else "or"
        if not ra:  # CEL's && and || are commutative: the side that cannot fail goes first
            return f"({a} {op} {b})", rb
        if not rb:
            return f"({b} {op} {a})", True
        # both may fail: an error on one side is absorbed by the other's false (&&) or true (||)
        fa, fb = self.helper(a), self.helper(b)
        return f"_{op}({fa}, {fb}, {_PARAMS})", True

    def helper(self, code: str) -> str:
        """A function of the request (and the eager reads) computing ``code``."""
        name = f"f{len(self.helpers)}"
        self.helpers.append(f"{name} = lambda {_PARAMS}: {code}")
        return name

    def negation(self, e: syntax_pb2.Expr, args: list[syntax_pb2.Expr]) -> tuple[str, bool]:
        code, raises = self.boolean(args[0])
        return f"(not {code})", raises

    def conditional(self, e: syntax_pb2.Expr, args: list[syntax_pb2.Expr]) -> tuple[str, bool]:
        cond, rc = self.boolean(args[0])
        self.kind(e)
        (yes, ry), (no, rn) = self.expr(args[1]), self.expr(args[2])
        return f"({yes} if {cond} else {no})", rc or ry or rn

    def equality(self, e: syntax_pb2.Expr, args: list[syntax_pb2.Expr]) -> tuple[str, bool]:
        ka, kb = self.kind(args[0]), self.kind(args[1])
        if not (ka == kb and ka in (_STRING, _INT, _BOOL, _TIME)) and {ka, kb} != {_STRING, _DYN}:
            raise _Unsupported("equality of these types")
        (a, ra), (b, rb) = self.expr(args[0]), self.expr(args[1])
        op = "==" if e.call_expr.function == "_==_" else "!="
        return f"({a} {op} {b})", ra or rb

    def ordering(self, e: syntax_pb2.Expr, args: list[syntax_pb2.Expr]) -> tuple[str, bool]:
        ka, kb = self.kind(args[0]), self.kind(args[1])
        if ka != kb or ka not in (_STRING, _INT, _TIME):
            raise _Unsupported("ordering of these types")
        (a, ra), (b, rb) = self.expr(args[0]), self.expr(args[1])
        op = _ORDERING[e.call_expr.function]
        return f"({a} {op} {b})", ra or rb

    def membership(self, e: syntax_pb2.Expr, args: list[syntax_pb2.Expr]) -> tuple[str, bool]:
        needle, haystack = args
        kn = self.kind(needle)
        if haystack.WhichOneof("expr_kind") == "list_expr":
            items = [_literal(x) for x in haystack.list_expr.elements]
            if kn not in (_STRING, _DYN) or not all(
                i is not None and isinstance(i[0], str) for i in items
            ):
                raise _Unsupported("in a list other than of string literals")
            values = self.cell(frozenset(str(i[0]) for i in items if i is not None))
            a, ra = self.expr(needle)
            if kn == _STRING:
                return f"({a} in {values})", ra
            return f"_in_strings({a}, {values})", ra
        kh = self.kind(haystack)
        if kn != _STRING or kh not in (_LIST, _MAP, _DYN):
            raise _Unsupported("in with these types")
        (a, ra), (b, rb) = self.expr(needle), self.expr(haystack)
        if kh == _DYN:
            return f"_in_dyn({a}, {b})", True
        return f"({a} in {b})", ra or rb

    def index(self, e: syntax_pb2.Expr, args: list[syntax_pb2.Expr]) -> tuple[str, bool]:
        kind = self.kind(args[0])
        if kind not in (_MAP, _DYN) or self.kind(args[1]) != _STRING:
            raise _Unsupported("index other than a map by a string")
        self.kind(e)
        (a, _), (b, _) = self.expr(args[0]), self.expr(args[1])
        if kind == _MAP:
            return f"{a}[{b}]", True
        return f"_select({a}, {b})", True

    def size(self, e: syntax_pb2.Expr, args: list[syntax_pb2.Expr]) -> tuple[str, bool]:
        kind = self.kind(args[0])
        if kind not in (_STRING, _LIST, _MAP, _DYN):
            raise _Unsupported("size of this type")
        a, ra = self.expr(args[0])
        if kind == _DYN:
            return f"_size({a})", True
        return f"len({a})", ra

    def string_test(self, e: syntax_pb2.Expr, args: list[syntax_pb2.Expr]) -> tuple[str, bool]:
        method = _STRING_TESTS[e.call_expr.function]
        (s, rs), (p, rp) = self.string(args[0]), self.string(args[1])
        if method == "contains":
            return f"({p} in {s})", rs or rp
        return f"{s}.{method}({p})", rs or rp

    def matches(self, e: syntax_pb2.Expr, args: list[syntax_pb2.Expr]) -> tuple[str, bool]:
        """``s.matches("re")``: RE2, matching anywhere in ``s``, as the runtime does. A pattern
        that is not a literal, or one RE2 refuses (an error at evaluation), stays with it."""
        pattern = _literal(args[1])
        if pattern is None or not isinstance(pattern[0], str):
            raise _Unsupported("matches() of a computed pattern")
        try:
            compiled = re2.compile(pattern[0])
        except re2.error:
            raise _Unsupported("a pattern RE2 refuses") from None
        s, raises = self.string(args[0])
        return f"({self.cell(compiled)}.search({s}) is not None)", raises

    def time_part(self, e: syntax_pb2.Expr, args: list[syntax_pb2.Expr]) -> tuple[str, bool]:
        """``t.getHours()``, ``t.getDayOfWeek("Europe/Berlin")``, ...: in UTC or in a zone
        named by a literal or by ``tenant.timeZone`` (an IANA name; the runtime also takes
        offsets like ``+01:00``, which stay with it)."""
        if self.kind(args[0]) != _TIME:
            raise _Unsupported("time accessor on another type")
        t, raises = self.expr(args[0])
        zone: tzinfo = datetime.UTC
        if len(args) == 2:
            name = self.fixed(args[1])
            if name is None or not isinstance(name[0], str) or not _IANA.fullmatch(name[0]):
                raise _Unsupported("time zone other than a fixed IANA name")
            try:
                zone = ZoneInfo(name[0])
            except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
                raise _Unsupported("unknown time zone") from None
        part = _TIME_PARTS[e.call_expr.function]
        return f"{part}({t}.astimezone({self.cell(zone)}))", raises

    def timestamp(self, e: syntax_pb2.Expr, args: list[syntax_pb2.Expr]) -> tuple[str, bool]:
        """``timestamp("2026-03-29T01:00:00Z")``: RFC 3339 text, microseconds at most."""
        text = _literal(args[0])
        if text is None or not isinstance(text[0], str) or not _RFC3339.fullmatch(text[0]):
            raise _Unsupported("timestamp() of other than an RFC 3339 literal")
        when = datetime.datetime.fromisoformat(text[0].upper())
        return self.cell(when.astimezone(datetime.UTC)), False

    def data_contains(self, e: syntax_pb2.Expr, args: list[syntax_pb2.Expr]) -> tuple[str, bool]:
        name = _literal(args[0])
        if name is None or not isinstance(name[0], str):
            raise _Unsupported("data.contains of a computed set name")
        value, _ = self.string(args[1])
        return f"contains({self.cell(name[0])}, {value})", True


_Build = Callable[[_Generator, syntax_pb2.Expr, list[syntax_pb2.Expr]], tuple[str, bool]]
_CALLS: Final[Mapping[tuple[str, int], _Build]] = {
    ("_&&_", 2): _Generator.logical,
    ("_||_", 2): _Generator.logical,
    ("!_", 1): _Generator.negation,
    ("_?_:_", 3): _Generator.conditional,
    ("_==_", 2): _Generator.equality,
    ("_!=_", 2): _Generator.equality,
    ("_<_", 2): _Generator.ordering,
    ("_<=_", 2): _Generator.ordering,
    ("_>_", 2): _Generator.ordering,
    ("_>=_", 2): _Generator.ordering,
    ("@in", 2): _Generator.membership,
    ("_[_]", 2): _Generator.index,
    ("size", 1): _Generator.size,
    ("startsWith", 2): _Generator.string_test,
    ("endsWith", 2): _Generator.string_test,
    ("contains", 2): _Generator.string_test,
    ("data.contains", 2): _Generator.data_contains,
    ("timestamp", 1): _Generator.timestamp,
    ("matches", 2): _Generator.matches,
    **{
        (name, n): _Generator.time_part
        for name in (
            "getFullYear",
            "getMonth",
            "getDayOfYear",
            "getDayOfMonth",
            "getDate",
            "getDayOfWeek",
            "getHours",
            "getMinutes",
            "getSeconds",
            "getMilliseconds",
        )
        for n in (1, 2)
    },
}
# CEL's accessors on a datetime in the zone asked for (months, days of the year and of the
# month from 0, days of the week from Sunday = 0; getDate from 1)
_TIME_PARTS: Final = {
    "getFullYear": "_year",
    "getMonth": "_month",
    "getDayOfYear": "_day_of_year",
    "getDayOfMonth": "_day_of_month",
    "getDate": "_date",
    "getDayOfWeek": "_day_of_week",
    "getHours": "_hours",
    "getMinutes": "_minutes",
    "getSeconds": "_seconds",
    "getMilliseconds": "_milliseconds",
}
_IANA: Final = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*")
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})"
)
_ORDERING: Final = {"_<_": "<", "_<=_": "<=", "_>_": ">", "_>=_": ">="}
_STRING_TESTS: Final = {"startsWith": "startswith", "endsWith": "endswith", "contains": "contains"}


def _constant(c: syntax_pb2.Constant) -> object:
    which = c.WhichOneof("constant_kind")
    if which == "string_value":
        return c.string_value
    if which == "int64_value":
        return c.int64_value
    if which == "bool_value":
        return c.bool_value
    raise _Unsupported(f"constant {which}")


def _literal(e: syntax_pb2.Expr) -> tuple[object] | None:
    """(value,) for a literal, else None."""
    if e.WhichOneof("expr_kind") != "const_expr":
        return None
    return (_constant(e.const_expr),)


# -- the operations, with the runtime's errors ---------------------------------------------


def _boolean(value: object) -> bool:
    if type(value) is bool:
        return value
    raise EvalError("no matching overload: not a bool")


def _string(value: object) -> str:
    if type(value) is str:
        return value
    raise EvalError("no matching overload: not a string")


def _and(a: Callable[..., Any], b: Callable[..., Any], *args: Any) -> bool:
    """CEL's ``a && b`` where either side may fail (``args``: the request and eager reads)."""
    try:
        left = _boolean(a(*args))
    except Exception:
        if _boolean(b(*args)) is False:  # false && error is false, in either order
            return False
        raise
    if not left:
        return False
    return _boolean(b(*args))


def _or(a: Callable[..., Any], b: Callable[..., Any], *args: Any) -> bool:
    """CEL's ``a || b`` where either side may fail (``args``: the request and eager reads)."""
    try:
        left = _boolean(a(*args))
    except Exception:
        if _boolean(b(*args)) is True:  # true || error is true, in either order
            return True
        raise
    if left:
        return True
    return _boolean(b(*args))


def _select(value: object, key: object) -> object:
    if type(value) is dict:
        return value[key]  # KeyError: no such key, an evaluation error
    raise EvalError("select or index on a value that is not a map")


def _has(value: object, key: str) -> bool:
    if type(value) is dict:
        return key in value
    raise EvalError("has() on a value that is not a map")


def _in_strings(value: object, values: frozenset[str]) -> bool:
    return type(value) is str and value in values


def _in_dyn(value: str, haystack: object) -> bool:
    if type(haystack) is list or type(haystack) is dict:
        return value in haystack  # a str equals only a str: CEL's heterogeneous equality
    raise EvalError("no matching overload for in")


def _size(value: object) -> int:
    if type(value) is str or type(value) is list or type(value) is dict:
        return len(value)
    raise EvalError("no matching overload for size")


def _year(d: datetime.datetime) -> int:
    return d.year


def _month(d: datetime.datetime) -> int:
    return d.month - 1


def _day_of_year(d: datetime.datetime) -> int:
    return d.timetuple().tm_yday - 1


def _day_of_month(d: datetime.datetime) -> int:
    return d.day - 1


def _date(d: datetime.datetime) -> int:
    return d.day


def _day_of_week(d: datetime.datetime) -> int:
    return (d.weekday() + 1) % 7


def _hours(d: datetime.datetime) -> int:
    return d.hour


def _minutes(d: datetime.datetime) -> int:
    return d.minute


def _seconds(d: datetime.datetime) -> int:
    return d.second


def _milliseconds(d: datetime.datetime) -> int:
    return d.microsecond // 1000


_HELPERS: Final[Mapping[str, object]] = {
    "__builtins__": {"len": len, "bool": bool, "Exception": Exception},
    "_boolean": _boolean,
    "_string": _string,
    "_and": _and,
    "_or": _or,
    "_select": _select,
    "_has": _has,
    "_in_strings": _in_strings,
    "_in_dyn": _in_dyn,
    "_size": _size,
    **{name: globals()[name] for name in _TIME_PARTS.values()},
}
