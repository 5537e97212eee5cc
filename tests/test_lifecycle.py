"""The server's lifecycle as an operator sees it: signals, health services and workers."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import grpc
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauthz.health import LIVENESS
from tests.helpers import Issuer, ServerProcess, check_request, free_port, serving, wait_for
from tests.telemetry_support import HOST, shop_policies

SERVING = health_pb2.HealthCheckResponse.SERVING


def status(server: ServerProcess, service: str) -> int:
    reply = server.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return int(reply.status)


def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    """SIGTERM: the server drains, closes its port and exits 0 within the grace period."""
    policies = shop_policies(tmp_path / "policies", Issuer())
    with serving(["--policies", str(policies), "--grace-period", "5"]) as server:
        assert server.check(check_request(host=HOST)).status.code == code_pb2.OK
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=15) == 0
        logs = server.logs()
    assert '"draining"' in logs
    assert '"stopped"' in logs


def test_liveness_serves_before_the_first_load(tmp_path: Path) -> None:
    """With its store unreachable, the server is live (extauthz.liveness) but not ready ("")."""
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    server = ServerProcess(["--redis-url", dead_redis])
    try:
        channel = grpc.insecure_channel(server.address)
        stub = health_pb2_grpc.HealthStub(channel)

        def live() -> bool:
            try:
                request = health_pb2.HealthCheckRequest(service=LIVENESS)
                return stub.Check(request, timeout=0.5).status == SERVING
            except grpc.RpcError:
                return False

        wait_for(live, 20, what="liveness SERVING")
        assert status(server, "") != SERVING
        channel.close()
    finally:
        server.stop()


def test_sighup_reloads_policies_now(tmp_path: Path) -> None:
    """SIGHUP re-reads the policy files at once, however long the poll interval."""
    policies = shop_policies(tmp_path / "policies", Issuer())
    args = ["--policies", str(policies), "--poll-interval", "3600"]
    with serving(args) as server:
        assert server.check(check_request(host=HOST, method="POST")).status.code != code_pb2.OK
        shop = policies / "shop.yaml"
        shop.write_text(shop.read_text().replace("methods: [GET]", "methods: [GET, POST]"))
        server.proc.send_signal(signal.SIGHUP)

        def post_allowed() -> bool:
            return server.check(check_request(host=HOST, method="POST")).status.code == 0

        wait_for(post_allowed, 10, what="POST allowed after SIGHUP")


def test_supervisor_restarts_a_crashed_worker(tmp_path: Path) -> None:
    """--workers 2: a worker killed with SIGKILL is replaced and Checks keep being answered."""
    policies = shop_policies(tmp_path / "policies", Issuer())
    args = ["--policies", str(policies), "--workers", "2", "--metrics-listen", ""]
    with serving(args) as server:

        def worker_pids() -> list[int]:
            text = server.logs()
            return [int(p) for p in re.findall(r'"pid": (\d+), "event": "worker started"', text)]

        first = wait_for(lambda: len(worker_pids()) == 2 and worker_pids(), 10, what="2 workers")
        os.kill(first[0], signal.SIGKILL)
        pids = wait_for(lambda: len(worker_pids()) == 3 and worker_pids(), 20, what="a restart")
        assert pids[2] not in first
        assert "worker died; restarting" in server.logs()
        server.wait_serving()
        assert server.check(check_request(host=HOST)).status.code == code_pb2.OK
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)
