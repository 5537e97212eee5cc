"""The CEL fast path (policy/celfast.py) decides as the CEL runtime does.

Expressions are generated from the grammar of the fast path's subset, requests from values a
token and a client can carry (missing claims, claims of every JSON type, integers past int64,
strings with lone surrogates, headers present or not); every expression must get a fast path,
and for every request its result (true, false, or an evaluation error) must be the runtime's.
"""

from __future__ import annotations

import ast
import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extauthz.datasets import DataSets
from extauthz.model import Subject
from extauthz.policy.celexpr import CelEnv, CelProgram, activation
from extauthz.policy.matchers import Ctx

SETS = {"blocked": frozenset({"alice", "x-y", ""})}

# -- expressions --------------------------------------------------------------------------------

WORDS = ["alice", "", "x-y", "GET", "é", "/api", "a,b", "1"]
literal = st.sampled_from(WORDS).map(lambda w: '"' + w + '"')
string_var = st.sampled_from(
    [
        "request.method",
        "request.host",
        "request.path",
        "source.principal",
        "source.namespace",
        "source.serviceAccount",
        "auth.principal",
        "auth.presenter",
        "tenant.name",
        "tenant.timeZone",
        'request.headers["x-k"]',
        "request.headers.accept",
        'request.query["q"]',
    ]
)
string = st.one_of(literal, string_var)
CLAIM_KEYS = ["sub", "groups", "n", "flag", "obj", "odd"]
# RE2 patterns as CEL string literals (a backslash doubled)
PATTERNS = ["^/a", "a+", "^$", "(?i)get", "\\\\d", "é", ".", "^[a-z-]+$", "y$", "^a,b$"]
dyn = st.one_of(
    st.sampled_from(CLAIM_KEYS).map(lambda k: f"auth.claims.{k}"),
    st.sampled_from(CLAIM_KEYS).map(lambda k: f'auth.claims["{k}"]'),
    st.sampled_from(["k", "sub"]).map(lambda k: f"auth.claims.obj.{k}"),
)
TIME_PARTS = ["getFullYear", "getMonth", "getDayOfYear", "getDayOfMonth", "getDate"]
TIME_PARTS += ["getDayOfWeek", "getHours", "getMinutes", "getSeconds", "getMilliseconds"]
zone_arg = st.sampled_from(["", '"America/New_York"', '"Asia/Kolkata"', "tenant.timeZone"])
time_part = st.tuples(st.sampled_from(TIME_PARTS), zone_arg).map(
    lambda t: f"request.time.{t[0]}({t[1]})"
)
INSTANTS = ["2026-03-29T01:00:00Z", "2026-10-25T01:00:00+00:00", "2028-02-29T23:59:59.5Z"]
timestamp = st.sampled_from(INSTANTS).map(lambda t: f'timestamp("{t}")')
integer = st.one_of(
    time_part,
    time_part,
    st.integers(-3, 3).map(str),
    st.integers(0, 24).map(str),
    st.one_of(string, dyn).map(lambda s: f"size({s})"),
    string.map(lambda s: f"{s}.size()"),
    st.just("destination.port"),
    st.just("size(auth.audiences)"),
)


def comparisons() -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(string, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), string).map(
            " ".join
        ),
        st.tuples(dyn, st.sampled_from(["==", "!="]), literal).map(" ".join),
        st.tuples(literal, st.sampled_from(["==", "!="]), dyn).map(" ".join),
        st.tuples(integer, st.sampled_from(["==", "!=", "<", ">="]), integer).map(" ".join),
        st.tuples(st.one_of(string, dyn), st.lists(literal, max_size=3)).map(
            lambda t: f"{t[0]} in [{', '.join(t[1])}]"
        ),
        st.tuples(
            string,
            st.sampled_from(["request.headers", "request.query", "auth.audiences", "auth.claims"]),
        ).map(lambda t: f"{t[0]} in {t[1]}"),
        st.tuples(string, dyn).map(lambda t: f"{t[0]} in {t[1]}"),
        dyn.map(lambda d: f"has({d.replace('[', '.').replace(']', '').replace(chr(34), '')})"),
        st.sampled_from(["has(request.headers.accept)", "has(auth.claims.sub)"]),
        st.tuples(
            st.one_of(string, dyn), st.sampled_from(["startsWith", "endsWith", "contains"]), string
        ).map(lambda t: f"{t[0]}.{t[1]}({t[2]})"),
        st.one_of(string, dyn).map(lambda v: f'data.contains("blocked", {v})'),
        st.tuples(st.one_of(string, dyn), st.sampled_from(PATTERNS)).map(
            lambda t: f'{t[0]}.matches("{t[1]}")'
        ),
        st.just('data.contains("gone", request.method)'),
        st.sampled_from(["true", "false", "auth.claims.flag"]),
        st.tuples(
            st.one_of(st.just("request.time"), timestamp),
            st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
            st.one_of(st.just("request.time"), timestamp),
        ).map(" ".join),
    )


expression = st.recursive(
    comparisons(),
    lambda inner: st.one_of(
        inner.map(lambda e: f"!({e})"),
        st.tuples(inner, st.sampled_from(["&&", "||"]), inner).map(lambda t: f"({' '.join(t)})"),
        st.tuples(inner, inner, inner).map(lambda t: f"(({t[0]}) ? ({t[1]}) : ({t[2]}))"),
    ),
    max_leaves=6,
)

# -- requests ---------------------------------------------------------------------------------

scalar = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from(["\ud800", "a\udfff"]),  # JSON escapes can carry lone surrogates
    st.integers(-3, 3),
    st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63) - 1]),
    st.booleans(),
    st.none(),
    st.sampled_from([0.5, 1.0]),
)
json_value = st.recursive(
    scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["k", "sub", "\ud800"]), inner, max_size=2),
    ),
    max_leaves=5,
)
# most claims present, most of them strings: the expressions read them by name
claim = st.one_of(st.sampled_from(WORDS), st.sampled_from(WORDS), json_value)
claims = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(CLAIM_KEYS), claim, min_size=len(CLAIM_KEYS) - 2),
)
headers = st.dictionaries(
    st.sampled_from(["x-k", "accept", "authorization"]), st.sampled_from(WORDS)
)


# instants about the daylight-saving changes of Europe/Berlin and America/New_York, the
# turns of a day, a week, a month and a leap year, and anything in between
UTC = datetime.UTC
times = st.one_of(
    st.sampled_from(
        [
            datetime.datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC),
            datetime.datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
            datetime.datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
            datetime.datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
            datetime.datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
            datetime.datetime(2026, 3, 8, 7, 0, tzinfo=UTC),
            datetime.datetime(2026, 11, 1, 6, 0, tzinfo=UTC),
            datetime.datetime(2028, 2, 29, 23, 59, 59, 999000, tzinfo=UTC),
            datetime.datetime(2026, 12, 31, 23, 0, tzinfo=UTC),
        ]
    ),
    st.datetimes(
        min_value=datetime.datetime(2000, 1, 1), max_value=datetime.datetime(2100, 1, 1)
    ).map(lambda d: d.replace(tzinfo=UTC)),
)


@st.composite
def subjects(draw: st.DrawFn) -> Subject:
    return Subject(
        principal=draw(
            st.sampled_from([None, "spiffe://td/ns/alice/sa/x-y", "spiffe://td/ns/a", "alice"])
        ),
        claims=draw(claims),
        host=draw(st.sampled_from(WORDS)),
        method=draw(st.sampled_from(WORDS)),
        path=draw(st.sampled_from(WORDS)),
        headers=draw(headers),
        query=draw(st.sampled_from(["", "q=1", "q=alice&q=2", "r=%ff"])),
        destination_port=draw(st.sampled_from([0, 1, 443])),
        time=draw(st.one_of(st.none(), times, times, times)),
    )


def runtime(program: CelProgram, ctx: Ctx, env: CelEnv) -> bool | None:
    """What the runtime decides, on exactly the variables the expression reads."""
    try:
        variables = activation(ctx, env, program.variables)
    except RecursionError:
        return None
    return program(variables)


ENV = CelEnv("acme", "Europe/Berlin", DataSets(SETS, live=True))


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=expression, subject=subjects())
def test_fast_path_decides_as_the_runtime(source: str, subject: Subject) -> None:
    program = ENV.compile(source)
    assert program.fast is not None, f"outside the fast path: {source}"
    expected = runtime(program, Ctx(subject, frozenset()), ENV)
    assert program.fast(Ctx(subject, frozenset())) is expected, source


time_expression = st.recursive(
    st.one_of(
        st.tuples(
            time_part, st.sampled_from(["==", "!=", "<", ">="]), st.integers(0, 60).map(str)
        ).map(" ".join),
        st.tuples(time_part, st.sampled_from(["==", "<"]), time_part).map(" ".join),
        st.tuples(
            st.one_of(st.just("request.time"), timestamp),
            st.sampled_from(["<", ">=", "=="]),
            st.one_of(st.just("request.time"), timestamp),
        ).map(" ".join),
    ),
    lambda inner: st.tuples(inner, st.sampled_from(["&&", "||"]), inner).map(
        lambda t: f"({' '.join(t)})"
    ),
    max_leaves=3,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=time_expression, when=times)
def test_time_functions_decide_as_the_runtime(source: str, when: datetime.datetime) -> None:
    """Accessors of request.time in UTC, in a named zone and in the tenant's, on both sides
    of daylight-saving changes, and comparisons with timestamp literals: as the runtime."""
    program = ENV.compile(source)
    assert program.fast is not None, f"outside the fast path: {source}"
    ctx = Ctx(Subject(time=when), frozenset())
    assert program.fast(ctx) is runtime(program, ctx, ENV), source


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.one_of(string, dyn),
    pattern=st.sampled_from(PATTERNS),
    subject=subjects(),
)
def test_matches_decides_as_the_runtime(target: str, pattern: str, subject: Subject) -> None:
    """``matches()`` is RE2 finding the pattern anywhere in the string, as in the runtime."""
    program = ENV.compile(f'{target}.matches("{pattern}")')
    assert program.fast is not None
    ctx = Ctx(subject, frozenset())
    assert program.fast(ctx) is runtime(program, ctx, ENV), (target, pattern)


@pytest.mark.parametrize(
    "source",
    [
        'request.time.getHours("+01:00") > 8',  # a zone as an offset
        "request.time.getHours(request.path) > 8",  # a zone read from the request
        'request.time - duration("1h") < request.time',  # durations
        "auth.claims.n > 1",  # ordering of a dyn value
        "request.path.matches(request.host)",  # a pattern read from the request
        'request.path.matches("(")',  # a pattern RE2 refuses: an error at evaluation
        "size(request.path) + 1 > 2",  # arithmetic
        'request.headers.exists(h, h == "x")',  # macros
        '"alice" in data.blocked',  # the data variable
        "auth.claims.flag == true",  # bool equality with a dyn value (CEL: 1 != true)
    ],
)
def test_outside_the_subset_keeps_the_runtime(source: str) -> None:
    """What the fast path does not model is left to the runtime, never approximated."""
    assert ENV.compile(source).fast is None


def bench_cel_rules() -> list[str]:
    """CEL_RULES of bench/custom.py, read from its source (the module imports the server)."""
    tree = ast.parse((Path(__file__).parent.parent / "bench" / "custom.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CEL_RULES":
            rules = ast.literal_eval(node.value)
            assert isinstance(rules, tuple)
            return list(rules)
    raise AssertionError("no CEL_RULES in bench/custom.py")


def test_bench_expressions_take_the_fast_path() -> None:
    """The expressions of bench/custom.py's CEL rules run on the fast path."""
    CEL_RULES = bench_cel_rules()
    assert len(CEL_RULES) == 5
    env = CelEnv("acme", "UTC", DataSets({"revoked-sub": frozenset()}))
    assert all(env.compile(rule).fast is not None for rule in CEL_RULES)


def test_claims_the_runtime_cannot_convert_are_left_to_it() -> None:
    """Claims the runtime can't convert, even one the expression does not read, are decided
    by the runtime: an error for an expression that reads auth.claims."""
    program = ENV.compile('auth.claims.sub == "alice"')
    assert program.fast is not None
    for bad in (2**64, "\ud800", {"\ud800": 1}, [-(2**63) - 1]):
        ctx = Ctx(Subject(claims={"sub": "alice", "other": bad}), frozenset())
        assert program.fast(ctx) is None
        assert runtime(program, ctx, ENV) is None
    ok = Ctx(Subject(claims={"sub": "alice", "other": 2**63}), frozenset())
    assert program.fast(ok) is True


def test_errors_absorbed_as_cel_absorbs_them() -> None:
    """false && error is false and true || error is true, in either order; otherwise an error."""
    ctx = Ctx(Subject(claims={"sub": "alice"}), frozenset())
    cases: dict[str, Any] = {
        'auth.claims.missing == "x" && false': False,
        'false && auth.claims.missing == "x"': False,
        'auth.claims.missing == "x" || true': True,
        'true || auth.claims.missing == "x"': True,
        'auth.claims.missing == "x" && true': None,
        'auth.claims.missing == "x" || false': None,
    }
    for source, expected in cases.items():
        program = ENV.compile(source)
        assert program.fast is not None
        assert program.fast(ctx) is expected, source
        assert runtime(program, ctx, ENV) is expected, source


def test_deepest_expressions_the_runtime_accepts() -> None:
    """Expressions nested as deep as the runtime's checker allows still translate (Python's
    parser has limits of its own) and decide as the runtime does."""
    decided = 0
    for depth in range(1, 40):
        source = "true"
        for i in range(depth):
            op = "&&" if i % 2 else "||"
            source = f'(request.method == "m{i}" {op} !({source}))'
        try:
            program = ENV.compile(source)
        except Exception:  # past the runtime's recursion limit: refused at load
            continue
        ctx = Ctx(Subject(method="m3"), frozenset())
        assert program.fast is not None, depth
        assert program.fast(ctx) is runtime(program, ctx, ENV), depth
        decided += 1
    assert decided >= 10
