"""Decision logs: one JSON line per decision (or a sample), with every secret masked.

A line names the decision id (the ``x-request-id`` Envoy sent, also in dynamic metadata, so
access logs join decision logs), tenant, principal, request principal, method, host, path,
decision, reason, deciding policy and rule, latency, AUDIT matches, the dry-run (shadow)
decision, and the request headers with these values replaced by ``[redacted]``:
``authorization``, ``proxy-authorization``, ``cookie``, ``set-cookie``, any header whose name
says token, jwt, secret, password, session or key (``redaction.is_secret``, the list the other
logs use too), and each ``--mask-header``. Whatever is
left, and the path's query, has JWT-shaped strings masked, and the values of query parameters
named after the same list (``redaction.SECRET_PARAM_WORDS``) too: a token never reaches a log
line.

``mode`` selects which decisions are written (``all``, ``deny``, ``none``) and ``sample`` the
fraction of those. A decision with an AUDIT match, or whose dry-run decision differs from
the enforced one, is always written: that is what AUDIT and dry-run policies are for.

Masking runs on the event loop for every logged deny, on client text: it scans in linear
time (string searches and one greedy character-class match per step, never a backtracking
pattern), so a crafted path costs what its length costs (``bench/redos.py`` measures it).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any, Final

from extauthz.logs import log_decision
from extauthz.model import RequestView
from extauthz.outcome import Outcome, decision_record
from extauthz.redaction import MASK, SECRET_PARAM_WORDS, is_secret

__all__ = ["MASK", "DecisionLog", "Mode", "mask_headers", "mask_jwts", "mask_path"]

# A base64url run: always matches (maybe empty), greedily, without backtracking.
_B64URL_RUN: Final = re.compile(r"[A-Za-z0-9_-]*")
_PARAM_SEPARATORS: Final = re.compile(r"([&;#])")


class Mode(StrEnum):
    ALL = "all"
    DENY = "deny"
    NONE = "none"


class _Masker:
    """Which header names are masked, decided once per name."""

    __slots__ = ("_cache", "_extra")

    def __init__(self, extra: Iterable[str]) -> None:
        self._extra = frozenset(name.strip().lower() for name in extra if name.strip())
        self._cache: dict[str, bool] = {}

    def __call__(self, name: str) -> bool:
        masked = self._cache.get(name)
        if masked is None:
            masked = name in self._extra or is_secret(name)
            if len(self._cache) < 4096:
                self._cache[name] = masked
        return masked


def mask_jwts(text: str) -> str:
    """Each JWT-shaped run (``eyJ`` + 4 or more base64url, ``.``, 4 or more, optionally
    ``.`` and a signature) replaced by MASK. Linear: a failed candidate skips its segment."""
    i = text.find("eyJ")
    if i < 0:
        return text
    out: list[str] = []
    done = 0
    while i >= 0:
        end = _run_end(text, i)  # the header segment
        if end - i >= 7 and text.startswith(".", end):
            end_payload = _run_end(text, end + 1)
            if end_payload - end - 1 >= 4:
                stop = end_payload
                if text.startswith(".", stop):
                    stop = _run_end(text, stop + 1)
                out += (text[done:i], MASK)
                done = stop
                i = text.find("eyJ", stop)
                continue
        # any later "eyJ" of this segment has a shorter header and the same next segment
        i = text.find("eyJ", max(end, i + 1))
    out.append(text[done:])
    return "".join(out)


def _run_end(text: str, start: int) -> int:
    """Where the base64url run starting at ``start`` ends."""
    run = _B64URL_RUN.match(text, start)
    return run.end() if run is not None else start


def mask_params(path: str) -> str:
    """Values of parameters whose name holds a secret word (``token``, ``key``...) masked.

    A parameter starts after ``?``, ``&`` or ``;``; its name runs to the first ``=`` and its
    value to the next ``&``, ``;`` or ``#``. Linear: one split, one check per ``=``.
    """
    pieces = _PARAM_SEPARATORS.split(path)  # text, separator, text, ...
    for n in range(0, len(pieces), 2):
        after_separator = n > 0 and pieces[n - 1] != "#"
        pieces[n] = _mask_piece(pieces[n], after_separator)
    return "".join(pieces)


def _mask_piece(piece: str, after_separator: bool) -> str:
    """One piece between ``&``/``;``/``#``: mask after the first ``=`` whose name (from the
    earliest parameter start before it, past the previous ``=``) names a secret."""
    start = 0 if after_separator else piece.find("?")
    while start >= 0:
        eq = piece.find("=", start)
        if eq < 0:
            return piece
        name = piece[start:eq].lower()
        if any(word in name for word in SECRET_PARAM_WORDS):
            return piece[: eq + 1] + MASK
        start = piece.find("?", eq)  # the next start past this "=" (names hold no "=")
    return piece


def mask_path(path: str) -> str:
    if "?" not in path and "eyJ" not in path:
        return path
    return mask_jwts(mask_params(path))


def mask_headers(headers: Mapping[str, str], masked: Callable[[str], bool]) -> dict[str, str]:
    """Headers for a log line: pseudo-headers left out, secrets replaced by MASK."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if name.startswith(":"):
            continue
        if masked(name):
            out[name] = MASK
        elif "eyJ" in value:
            out[name] = mask_jwts(value)
        else:
            out[name] = value
    return out


class DecisionLog:
    """The decision-log observer: ``record`` has the servicer's Observer signature."""

    def __init__(
        self,
        mode: Mode | str = Mode.DENY,
        *,
        sample: float = 1.0,
        mask: Iterable[str] = (),
        write: Callable[[dict[str, Any]], None] = log_decision,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.mode = Mode(mode)
        self.sample = min(1.0, max(0.0, sample))
        self._masked = _Masker(mask)
        self._write = write
        self._rng = rng

    def record(
        self, outcome: Outcome, view: RequestView | None, decision_id: str, seconds: float
    ) -> None:
        """Log the decision when it is wanted: always with an audit match or a shadow
        decision that differs, else as the mode and the sample say. (One call on every
        Check: the test is written here, not in a method of its own.)"""
        shadow = outcome.shadow
        if not (outcome.audits or (shadow is not None and shadow.allowed != outcome.allowed)):
            mode = self.mode
            if mode is Mode.NONE or (mode is Mode.DENY and outcome.allowed):
                return
            if self.sample < 1.0 and self._rng() >= self.sample:
                return
        self._write(self.fields(outcome, view, decision_id, seconds))

    def fields(
        self, outcome: Outcome, view: RequestView | None, decision_id: str, seconds: float
    ) -> dict[str, Any]:
        event: dict[str, Any] = {}
        for name, value in decision_record(outcome, decision_id).items():
            event[name] = value
            if name == "rule":  # the always-present fields first, then the latency
                event["latency_ms"] = round(seconds * 1000.0, 3)
        if "eyJ" in decision_id:
            event["decision_id"] = mask_jwts(decision_id)
        if "detail" in event:
            event["detail"] = mask_jwts(outcome.detail)
        if view is not None:
            event["method"] = view.method
            event["host"] = view.host
            event["path"] = mask_path(view.path)
            event["source"] = view.source_address
            event["headers"] = mask_headers(view.headers, self._masked)
        return event
