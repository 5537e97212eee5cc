"""The baseline: a bare grpc.aio Authorization server that allows every Check at once.

Same grpc options (``extauthz.server.GRPC_OPTIONS``) and event loop (uvloop when installed)
as ``extauthz serve``, and a Health service so the same readiness probe works; its Check
returns a prebuilt ``CheckResponse(status OK)`` without reading the request. What extauthz
costs is measured against this server in the same run, on the same machine.

    python bench/bare_server.py --listen 127.0.0.1:9292
    python bench/bare_server.py --response-bytes 520   # a response as large as extauthz's

``--response-bytes N`` answers every Check with the same N serialized bytes: status OK and a
``dynamic_metadata`` field padded to that size, sent as they are (no serializer, as extauthz
sends its response), the request still parsed. Against the plain bare server it measures what
a response of that size costs the gRPC runtime and the kernel (``accounting.py --sized-bare``).
``--response-file PATH`` answers with the bytes in PATH the same way: extauthz's own response,
replayed, measures what its content costs the proxy that reads it (``envoy_load.py
--replay``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extauthz.server import GRPC_OPTIONS

OK = external_auth_pb2.CheckResponse()
OK.status.code = code_pb2.OK


class BareAuthorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> external_auth_pb2.CheckResponse:
        return OK


def padded_response(size: int) -> bytes:
    """CheckResponse(status OK) with a ``dynamic_metadata`` string padded to ``size`` bytes."""
    response = external_auth_pb2.CheckResponse()
    response.status.code = code_pb2.OK
    if size <= len(response.SerializeToString()):
        raise SystemExit(f"--response-bytes {size}: the smallest response is larger")
    pad = response.dynamic_metadata.fields["pad"]
    for n in range(size, -1, -1):  # the first fill that fits (a length prefix may shrink)
        pad.string_value = "x" * n
        data: bytes = response.SerializeToString()
        if len(data) <= size:
            break
    if len(data) != size:
        raise SystemExit(f"--response-bytes {size}: no padding gives exactly that size")
    return data


def add_fixed(server: grpc.aio.Server, data: bytes) -> None:
    """Check answered with ``data`` as it is; the request parsed, as the bare server's is."""

    async def check(request: external_auth_pb2.CheckRequest, context: Any) -> bytes:
        return data

    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(
        check,
        request_deserializer=external_auth_pb2.CheckRequest.FromString,
        response_serializer=None,
    )
    service = "envoy.service.auth.v3.Authorization"
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {"Check": handler}),)
    )


async def serve(listen: str, response: bytes | None = None) -> None:
    server = grpc.aio.server(options=GRPC_OPTIONS)
    if response is not None:
        add_fixed(server, response)
    else:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(BareAuthorization(), server)
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if not server.add_insecure_port(listen):
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bare grpc.aio Authorization/Check server")
    parser.add_argument("--listen", default="127.0.0.1:9292", help="HOST:PORT")
    answer = parser.add_mutually_exclusive_group()
    answer.add_argument(
        "--response-bytes", type=int, default=0, help="answer with a response of this size"
    )
    answer.add_argument(
        "--response-file", type=Path, help="answer with these bytes (a serialized CheckResponse)"
    )
    args = parser.parse_args(argv)
    response = None
    if args.response_bytes:
        response = padded_response(args.response_bytes)
    elif args.response_file is not None:
        response = args.response_file.read_bytes()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.listen, response))
    else:
        uvloop.run(serve(args.listen, response))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
