"""``extauthz health``: exit 0 only when the server's gRPC health says SERVING (probes)."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauthz.cli import _env

_add = functools.partial(_env.add, scope="health")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("health", help="probe a server's gRPC health")
    _add(p, "--address", default="127.0.0.1:9191", help="server HOST:PORT")
    _add(p, "--timeout", default="2", help="seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with grpc.insecure_channel(args.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=float(args.timeout))
        except grpc.RpcError as exc:
            print(f"extauthz health: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
