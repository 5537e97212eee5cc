"""One Check, from the bytes of its CheckRequest to the bytes of its response, in one call.

Decode, run the pipeline, map the outcome: nothing here awaits, so a Check is decided in one
step of the event loop from memory only. Anything unexpected, a request that can't be
decoded, a server that has no policies yet, a deadline already spent, or a response that
can't be built (a header Envoy would refuse) ends in a deny, which is observed (logged and
counted) like any other decision. A failing observer changes nothing of the response.

``servicer.AuthorizationServicer`` is the grpc.aio face of ``Answer``: its coroutine calls
it and returns what it returns. This module is plain synchronous code, so the compiled build
compiles it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import structlog

from extauthz.decode import MalformedRequest, decode_bytes
from extauthz.errors import Reason
from extauthz.model import RequestView
from extauthz.outcome import Outcome, deny
from extauthz.registry import Registry, Snapshot
from extauthz.response import DENY_FALLBACK, encode_response

__all__ = ["Answer", "Decide", "Observer", "Observers", "no_observer"]

log = structlog.get_logger("extauthz.check")

Decide = Callable[[Snapshot, RequestView], Outcome]
"""The decision for a decoded request: ``pipeline.CheckPipeline``."""
Observer = Callable[[Outcome, RequestView | None, str, float], None]
"""Called after every Check with (outcome, view or None, decision id, seconds)."""


def no_observer(
    outcome: Outcome, view: RequestView | None, decision_id: str, seconds: float
) -> None:
    return None


class Observers:
    """Several observers as one, called in order."""

    def __init__(self, *observers: Observer) -> None:
        self._observers = observers

    def __call__(
        self, outcome: Outcome, view: RequestView | None, decision_id: str, seconds: float
    ) -> None:
        for observer in self._observers:
            observer(outcome, view, decision_id, seconds)


class Answer:
    """``answer(request, context)``: the serialized CheckResponse for the serialized
    CheckRequest ``request`` (``context`` is the grpc.aio ServicerContext, read for its
    deadline)."""

    def __init__(
        self, registry: Registry, pipeline: Decide, observer: Observer = no_observer
    ) -> None:
        self.registry = registry
        self.pipeline = pipeline
        self.observer = observer
        self.internal_errors = 0
        self.checks = 0  # Checks answered
        self.last_check = 0.0  # time.perf_counter() when the latest Check arrived

    def __call__(self, request: bytes, context: Any) -> bytes:
        start = self.last_check = time.perf_counter()
        self.checks += 1
        try:
            outcome, view = self.decide(request)
        except Exception:
            self.internal_errors += 1
            log.exception("internal error during Check; denying")
            outcome, view = deny(Reason.INTERNAL, "internal error"), None
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            outcome = deny(Reason.DEADLINE, "deadline exceeded", tenant=outcome.tenant)
        decision_id = (view.request_id if view is not None else "") or os.urandom(8).hex()
        try:
            response = encode_response(outcome, decision_id)
        except Exception as exc:
            self.internal_errors += 1
            log.error("response could not be built; denying", error=repr(exc)[:200])
            detail = f"response: {type(exc).__name__}"
            outcome = deny(Reason.INTERNAL, detail, tenant=outcome.tenant)
            response = _internal_response(outcome, decision_id)
        try:
            self.observer(outcome, view, decision_id, time.perf_counter() - start)
        except Exception:
            # The decision stands: a failing log or metric must neither flip nor drop it.
            log.exception("observer failed", decision_id=decision_id)
        return response

    def decide(self, request: bytes) -> tuple[Outcome, RequestView | None]:
        registry = self.registry
        if not registry.ready:
            return deny(Reason.NOT_READY, "no policies loaded yet"), None
        try:
            view = decode_bytes(request)
        except MalformedRequest as exc:
            return deny(Reason.MALFORMED_REQUEST, str(exc)), None
        return self.pipeline(registry.snapshot, view), view


def _internal_response(outcome: Outcome, decision_id: str) -> bytes:
    """The deny for a response that could not be built; a bare 403 if even that fails."""
    try:
        return encode_response(outcome, decision_id)
    except Exception:
        return DENY_FALLBACK
