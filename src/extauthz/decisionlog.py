"""Decision logs: one JSON line per decision (or a sample), with every secret masked.

A line names the decision id (the ``x-request-id`` Envoy sent, also in dynamic metadata, so
access logs join decision logs), tenant, principal, request principal, method, host, path,
decision, reason, deciding policy and rule, latency, AUDIT matches, the dry-run (shadow)
decision, and the request headers with these values replaced by ``[redacted]``:
``authorization``, ``proxy-authorization``, ``cookie``, ``set-cookie``, any header whose name
says token, jwt, secret, password, session or key (``redaction.is_secret``, the list the other
logs use too), and each ``--mask-header``. Whatever is
left, and the path's query, has JWT-shaped strings masked and the values of query parameters
with such names too: a token never reaches a log line.

``mode`` selects which decisions are written (``all``, ``deny``, ``none``) and ``sample`` the
fraction of those. A decision with an AUDIT match, or whose dry-run decision differs from
the enforced one, is always written: that is what AUDIT and dry-run policies are for.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any, Final

import structlog

from extauthz.model import RequestView
from extauthz.outcome import Outcome, decision_record
from extauthz.redaction import MASK, is_secret

__all__ = ["MASK", "DecisionLog", "Mode", "mask_headers", "mask_path"]

_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.?[A-Za-z0-9_-]*")
_SECRET_PARAM: Final = re.compile(
    r"([?&;][^=&;#]*(?:token|jwt|secret|password|session|key|code|auth)[^=&;#]*=)[^&;#]*",
    re.IGNORECASE,
)
LOGGER: Final = "extauthz.decision"


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


def mask_path(path: str) -> str:
    if "?" not in path and "eyJ" not in path:
        return path
    return _JWT.sub(MASK, _SECRET_PARAM.sub(r"\1" + MASK, path))


def mask_headers(headers: Mapping[str, str], masked: Callable[[str], bool]) -> dict[str, str]:
    """Headers for a log line: pseudo-headers left out, secrets replaced by MASK."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if name.startswith(":"):
            continue
        if masked(name):
            out[name] = MASK
        elif "eyJ" in value:
            out[name] = _JWT.sub(MASK, value)
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
        logger: Any = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.mode = Mode(mode)
        self.sample = min(1.0, max(0.0, sample))
        self._masked = _Masker(mask)
        self._log = logger if logger is not None else structlog.get_logger(LOGGER)
        self._rng = rng

    def wanted(self, outcome: Outcome) -> bool:
        if outcome.audits:
            return True
        shadow = outcome.shadow
        if shadow is not None and shadow.allowed != outcome.allowed:
            return True
        if self.mode is Mode.NONE or (self.mode is Mode.DENY and outcome.allowed):
            return False
        return self.sample >= 1.0 or self._rng() < self.sample

    def record(
        self, outcome: Outcome, view: RequestView | None, decision_id: str, seconds: float
    ) -> None:
        if self.wanted(outcome):
            self._log.info("decision", **self.fields(outcome, view, decision_id, seconds))

    def fields(
        self, outcome: Outcome, view: RequestView | None, decision_id: str, seconds: float
    ) -> dict[str, Any]:
        event: dict[str, Any] = {}
        for name, value in decision_record(outcome, decision_id).items():
            event[name] = value
            if name == "rule":  # the always-present fields first, then the latency
                event["latency_ms"] = round(seconds * 1000.0, 3)
        if "eyJ" in decision_id:
            event["decision_id"] = _JWT.sub(MASK, decision_id)
        if "detail" in event:
            event["detail"] = _JWT.sub(MASK, outcome.detail)
        if view is not None:
            event["method"] = view.method
            event["host"] = view.host
            event["path"] = mask_path(view.path)
            event["source"] = view.source_address
            event["headers"] = mask_headers(view.headers, self._masked)
        return event
