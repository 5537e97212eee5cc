"""The grpc.aio servicer for ``envoy.service.auth.v3.Authorization/Check``.

Its coroutine hands the request's bytes to ``answer.Answer`` (decode, pipeline, response,
observers: one synchronous call, compiled in the compiled build) and returns the serialized
response it gets, so ``add_to_server`` registers ``Check`` with neither a deserializer nor a
serializer.
"""

from __future__ import annotations

from typing import Any, Final

import grpc

from extauthz.answer import Answer, Observer, no_observer
from extauthz.pipeline import CheckPipeline
from extauthz.registry import Registry

__all__ = ["SERVICE", "AuthorizationServicer", "Observer", "add_to_server"]

SERVICE: Final = "envoy.service.auth.v3.Authorization"


class AuthorizationServicer:
    def __init__(
        self, registry: Registry, pipeline: CheckPipeline, observer: Observer = no_observer
    ) -> None:
        self.answer = Answer(registry, pipeline, observer)
        self._pipeline = pipeline
        self._observer = observer

    async def Check(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return self.answer(request, context)

    @property
    def internal_errors(self) -> int:
        return self.answer.internal_errors

    @property
    def checks(self) -> int:
        """Checks answered."""
        return self.answer.checks

    @property
    def last_check(self) -> float:
        """time.perf_counter() when the latest Check arrived."""
        return self.answer.last_check


def add_to_server(servicer: AuthorizationServicer, server: grpc.aio.Server) -> None:
    """Serve ``servicer`` as ``Authorization/Check``: the request's bytes handed to it as
    they arrive (``decode.decode_bytes`` reads them), the bytes it returns sent as they are."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Check": grpc.unary_unary_rpc_method_handler(
            servicer.Check,
            request_deserializer=None,
            response_serializer=None,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
