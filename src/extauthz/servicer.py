"""The grpc.aio servicer for ``envoy.service.auth.v3.Authorization/Check``.

Decode, run the pipeline, map the outcome: nothing here awaits, so a Check is decided in one
step of the event loop from memory only. Anything unexpected, a request that can't be
decoded, a server that has no policies yet, or a deadline already spent ends in a deny.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import grpc
import structlog
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from extauthz.decode import MalformedRequest, decode
from extauthz.errors import Reason
from extauthz.model import RequestView
from extauthz.outcome import Outcome, deny
from extauthz.pipeline import CheckPipeline
from extauthz.registry import Registry
from extauthz.response import build_response

__all__ = ["AuthorizationServicer", "Observer"]

log = structlog.get_logger("extauthz.check")

Observer = Callable[[Outcome, RequestView | None, str, float], None]
"""Called after every Check with (outcome, view or None, decision id, seconds)."""


def _no_observer(
    outcome: Outcome, view: RequestView | None, decision_id: str, seconds: float
) -> None:
    return None


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(
        self, registry: Registry, pipeline: CheckPipeline, observer: Observer = _no_observer
    ) -> None:
        self._registry = registry
        self._pipeline = pipeline
        self._observer = observer
        self.internal_errors = 0

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> external_auth_pb2.CheckResponse:
        start = time.perf_counter()
        try:
            outcome, view = self._decide(request)
        except Exception:
            self.internal_errors += 1
            log.exception("internal error during Check; denying")
            outcome, view = deny(Reason.INTERNAL, "internal error"), None
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            outcome = deny(Reason.DEADLINE, "deadline exceeded", tenant=outcome.tenant)
        decision_id = (view.request_id if view is not None else "") or os.urandom(8).hex()
        response = build_response(outcome, decision_id)
        try:
            self._observer(outcome, view, decision_id, time.perf_counter() - start)
        except Exception:
            # The decision stands: a failing log or metric must neither flip nor drop it.
            log.exception("observer failed", decision_id=decision_id)
        return response

    def _decide(
        self, request: external_auth_pb2.CheckRequest
    ) -> tuple[Outcome, RequestView | None]:
        registry = self._registry
        if not registry.ready:
            return deny(Reason.NOT_READY, "no policies loaded yet"), None
        try:
            view = decode(request)
        except MalformedRequest as exc:
            return deny(Reason.MALFORMED_REQUEST, str(exc)), None
        return self._pipeline(registry.snapshot, view), view
