"""The ``when`` keys beyond Istio's: ``extauthz.io/cel`` and ``extauthz.io/time-window``.

Both compile at load (a bad value is a DocumentError naming file, line and field, in every
action: a condition we cannot evaluate is never silently dropped) and evaluate from memory.
An evaluation error is decided fail-closed: the condition holds in a DENY or AUDIT policy
(the rule matches, the request is denied) and does not hold in an ALLOW policy; each error is
counted on the tenant's ``CelEnv.errors``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final
from zoneinfo import ZoneInfo

from extauthz.datasets import DataSets
from extauthz.documents import Document, Path
from extauthz.policy.celexpr import CelEnv, CelError, CelProgram, ErrorCounter, activation
from extauthz.policy.celfast import FastProgram
from extauthz.policy.matchers import Ctx, Matcher
from extauthz.policy.timewindow import TimeWindowError, Windows, parse_windows

__all__ = ["CUSTOM_PREFIX", "KEY_CEL", "KEY_TIME_WINDOW", "CustomContext", "custom_condition"]

CUSTOM_PREFIX: Final = "extauthz.io/"
KEY_CEL: Final = "extauthz.io/cel"
KEY_TIME_WINDOW: Final = "extauthz.io/time-window"


@dataclass(frozen=True, slots=True)
class CustomContext:
    """What a tenant's custom conditions see besides the request: its zone and data sets."""

    tenant: str
    time_zone: str = "UTC"
    data: DataSets = field(default_factory=DataSets, compare=False)
    cel: CelEnv = field(init=False, repr=False, compare=False)
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cel", CelEnv(self.tenant, self.time_zone, self.data))
        object.__setattr__(self, "zone", ZoneInfo(self.time_zone))


def custom_condition(
    doc: Document,
    action: str,
    key: str,
    values: tuple[tuple[str, ...], tuple[str, ...]],
    path: Path,
    context: CustomContext,
) -> list[tuple[str, Matcher]]:
    """The (field, matcher) pairs of one ``when`` entry with an ``extauthz.io/`` key.

    ``values``: (values, notValues). Raises DocumentError for a bad key or value.
    """
    fail = action != "ALLOW"  # what an evaluation error decides: match in DENY/AUDIT
    out: list[tuple[str, Matcher]] = []
    for name, vals, negate in (("values", values[0], False), ("notValues", values[1], True)):
        if not vals:
            continue
        if key == KEY_CEL:
            programs = tuple(
                _compile_cel(doc, context.cel, v, (*path, name, i)) for i, v in enumerate(vals)
            )
            out.append((name, _cel_matcher(programs, context.cel, negate, fail)))
        elif key == KEY_TIME_WINDOW:
            try:
                windows = parse_windows(vals, context.zone)
            except TimeWindowError as exc:
                raise doc.error(str(exc), (*path, name)) from None
            out.append((name, _window_matcher(windows, context.cel, negate, fail)))
        else:
            known = f"{KEY_CEL}, {KEY_TIME_WINDOW}"
            raise doc.error(
                f"unknown condition key {key!r} (extauthz.io keys: {known})", (*path, "key")
            )
    return out


def _compile_cel(doc: Document, env: CelEnv, source: str, path: Path) -> CelProgram:
    try:
        return env.compile(source)
    except CelError as exc:
        raise doc.error(f"invalid CEL expression: {exc}", path) from None


def _cel_matcher(
    programs: tuple[CelProgram, ...], env: CelEnv, negate: bool, fail: bool
) -> Matcher:
    counter = env.errors
    names = tuple(sorted(frozenset().union(*(p.variables for p in programs)) - {"data"}))
    reads_data = any(p.data is not None for p in programs)
    sets = tuple(sorted({n for p in programs for n in p.data or ()}))

    fast = tuple(p.fast for p in programs if p.fast is not None)
    if len(fast) == len(programs):
        return _fast_matcher(fast, counter, negate, fail)

    def cel_condition(ctx: Ctx) -> bool:
        shared = None if reads_data else env.shared(ctx)
        if shared is not None:
            return _decide((p.run(shared) for p in programs), counter, negate, fail)
        try:
            variables = activation(ctx, env, names)
            if reads_data:  # a set not held, or grown past the list limit: an error
                variables["data"] = env.lists(sets)
        except (RecursionError, LookupError, ValueError, TypeError):  # e.g. claims too deep
            counter.count += 1
            return fail
        return _decide((p(variables) for p in programs), counter, negate, fail)

    return cel_condition


def _decide(
    results: Iterable[bool | None], counter: ErrorCounter, negate: bool, fail: bool
) -> bool:
    """Whether a condition of expressions with these ``results`` holds: any true decides it;
    else any error (None) is counted and decided ``fail``."""
    failed = False
    for result in results:
        if result is True:
            return not negate
        if result is None:
            failed = True
    if failed:
        counter.count += 1
        return fail
    return negate


def _fast_matcher(
    programs: tuple[FastProgram, ...], counter: ErrorCounter, negate: bool, fail: bool
) -> Matcher:
    """As ``cel_condition``, for expressions that all run on the fast path (``celfast``)."""
    if len(programs) == 1:
        (program,) = programs

        def cel_fast(ctx: Ctx) -> bool:
            result = program(ctx)
            if result is None:
                counter.count += 1
                return fail
            return result != negate

        return cel_fast

    def cel_fast_any(ctx: Ctx) -> bool:
        return _decide((p(ctx) for p in programs), counter, negate, fail)

    return cel_fast_any


def _window_matcher(windows: Windows, env: CelEnv, negate: bool, fail: bool) -> Matcher:
    counter = env.errors

    def time_window(ctx: Ctx) -> bool:
        when = ctx.subject.time
        if when is None:  # no clock reading: decided like an evaluation error
            counter.count += 1
            return fail
        return windows(when) != negate

    return time_window
