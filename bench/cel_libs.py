"""Compare the CEL implementations on PyPI on the expressions extauthz evaluates.

Run ``python bench/cel_libs.py`` (needs ``cel-expr-python``, ``common-expression-language``
and ``cel-python`` installed; only the first is a dependency of extauthz). For each library:

- whether it type-checks at compile time (an unknown variable or a type error refused before
  serving) and whether it has the time-zone forms of the timestamp functions
  (``request.time.getHours("Europe/Berlin")``), which time rules need;
- microseconds to compile one expression, and to evaluate it with the variables of one request
  (the per-Check cost, conversion of the Python values included).

Prints one table. Not part of the test suite.
"""

from __future__ import annotations

import datetime
import statistics
import time
from collections.abc import Callable
from typing import Any

EXPRESSION = 'request.headers["x-env"] == "prod" && auth.claims.tier in ["gold", "silver"]'
TIME_EXPRESSION = 'request.time.getHours("Europe/Berlin") == 3'
NOW = datetime.datetime(2026, 3, 29, 1, 30, tzinfo=datetime.UTC)
HEADERS = {"x-env": "prod", "user-agent": "curl/8", "accept": "*/*", "x-request-id": "r1"}
CLAIMS = {"iss": "https://i", "sub": "alice", "tier": "gold", "scope": ["a", "b"], "exp": 1}
ROUNDS = 5
MIN_SECONDS_PER_ROUND = 0.2


def per_call(fn: Callable[[], Any]) -> float:
    """Median microseconds per call over ROUNDS rounds."""
    fn()
    results = []
    for _ in range(ROUNDS):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < MIN_SECONDS_PER_ROUND:
            fn()
            n += 1
        results.append(elapsed / n * 1e6)
    return statistics.median(results)


def google_cpp() -> dict[str, Any]:
    from cel_expr_python import cel

    t = cel.Type
    variables = {
        "request.headers": t.Map(t.STRING, t.STRING),
        "request.time": t.TIMESTAMP,
        "auth.claims": t.Map(t.STRING, t.DYN),
    }
    env = cel.NewEnv(variables=variables)
    data = {"request.headers": HEADERS, "request.time": NOW, "auth.claims": CLAIMS}
    expr = env.compile(EXPRESSION)
    assert expr.eval(data=data).value() is True

    def type_checks() -> bool:
        try:
            env.compile("request.hedaers == 1")
        except RuntimeError:
            return True
        return False

    tz = env.compile(TIME_EXPRESSION).eval(data=data).value() is True
    return {
        "typecheck": type_checks(),
        "timezones": tz,
        "compile": per_call(lambda: env.compile(EXPRESSION)),
        "eval": per_call(lambda: expr.eval(data=data)),
    }


def rust() -> dict[str, Any]:
    import cel

    data = {"request": {"headers": HEADERS, "time": NOW}, "auth": {"claims": CLAIMS}}
    program = cel.compile(EXPRESSION)
    assert program.execute(data) is True
    try:
        tz = cel.compile(TIME_EXPRESSION).execute(data) is True
    except Exception:
        tz = False
    try:
        cel.compile("request.hedaers == 1")
        checks = False
    except Exception:
        checks = True
    return {
        "typecheck": checks,
        "timezones": tz,
        "compile": per_call(lambda: cel.compile(EXPRESSION)),
        "eval": per_call(lambda: program.execute(data)),
    }


def pure_python() -> dict[str, Any]:
    import celpy

    env = celpy.Environment()
    program = env.program(env.compile(EXPRESSION))

    def activation() -> dict[str, Any]:
        return {
            "request": celpy.json_to_cel({"headers": HEADERS}),  # type: ignore[attr-defined]
            "auth": celpy.json_to_cel({"claims": CLAIMS}),  # type: ignore[attr-defined]
        }

    assert bool(program.evaluate(activation()))
    try:
        env.program(env.compile("request.hedaers == 1"))
        checks = False
    except Exception:
        checks = True
    return {
        "typecheck": checks,
        "timezones": "not measured",
        "compile": per_call(lambda: env.program(env.compile(EXPRESSION))),
        "eval": per_call(lambda: program.evaluate(activation())),
    }


def main() -> None:
    rows = [
        ("cel-expr-python (Google C++)", google_cpp),
        ("common-expression-language (Rust)", rust),
        ("cel-python (pure Python)", pure_python),
    ]
    print(f"{'library':36} {'type-check':>10} {'tz funcs':>12} {'compile us':>11} {'eval us':>9}")
    for name, fn in rows:
        try:
            r = fn()
        except ImportError as exc:
            print(f"{name:36} not installed ({exc})")
            continue
        print(
            f"{name:36} {r['typecheck']!s:>10} {r['timezones']!s:>12} "
            f"{r['compile']:>11.1f} {r['eval']:>9.1f}"
        )


if __name__ == "__main__":
    main()
