"""The baseline: a bare grpc.aio Authorization server that allows every Check at once.

Same grpc options (``extauthz.server.GRPC_OPTIONS``) and event loop (uvloop when installed)
as ``extauthz serve``, and a Health service so the same readiness probe works; its Check
returns a prebuilt ``CheckResponse(status OK)`` without reading the request. What extauthz
costs is measured against this server in the same run, on the same machine.

    python bench/bare_server.py --listen 127.0.0.1:9292
"""

from __future__ import annotations

import argparse
import asyncio
import signal
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


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=GRPC_OPTIONS)
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
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.listen))
    else:
        uvloop.run(serve(args.listen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
