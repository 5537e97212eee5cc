"""A rolling restart behind a real Envoy fails no request.

One Envoy (its bootstrap from ``extauthz.envoyconfig``) sends every request's Check to a cluster
of two ``extauthz serve`` instances, with gRPC health checks on the cluster and retries of the
Check on another host when a connection is refused or reset. While two clients send a bounded
stream of requests through Envoy, each instance in turn gets SIGTERM, exits, and is started
again on its port; every request must be answered 200 by the upstream.
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauthz.envoyconfig import (
    EXT_AUTHZ_FILTER,
    EXTAUTHZ_CLUSTER,
    EnvoyOptions,
    HostPort,
    bootstrap_dict,
    build_bootstrap,
)
from tests.helpers import free_port, policy_yaml, tenant_yaml, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

ENVOY = shutil.which("envoy")
MAX_REQUESTS = 4000  # per client: the stream is bounded even if a restart hangs


def two_endpoint_bootstrap(
    ports: tuple[int, int], upstream: int, listen: int, admin: int
) -> dict[str, Any]:
    """envoyconfig's bootstrap, its extauthz cluster widened to two health-checked hosts and
    the Check retried on another host after a refused stream, reset or connect failure."""
    options = EnvoyOptions(
        extauthz=HostPort("127.0.0.1", ports[0]),
        upstream=HostPort("127.0.0.1", upstream),
        listen=HostPort("127.0.0.1", listen),
        admin_port=admin,
        timeout=2.0,
    )
    config = bootstrap_dict(build_bootstrap(options))
    static = config["staticResources"]
    (cluster,) = [c for c in static["clusters"] if c["name"] == EXTAUTHZ_CLUSTER]
    cluster["loadAssignment"]["endpoints"][0]["lbEndpoints"] = [
        {"endpoint": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": p}}}}
        for p in ports
    ]
    cluster["healthChecks"] = [
        {
            "timeout": "1s",
            "interval": "0.2s",
            "noTrafficInterval": "0.2s",
            "unhealthyThreshold": 1,
            "healthyThreshold": 1,
            "grpcHealthCheck": {},
        }
    ]
    hcm = static["listeners"][0]["filterChains"][0]["filters"][0]["typedConfig"]
    (ext_authz,) = [f for f in hcm["httpFilters"] if f["name"] == EXT_AUTHZ_FILTER]
    ext_authz["typedConfig"]["grpcService"]["retryPolicy"] = {
        "numRetries": 3,
        "retryOn": "connect-failure,refused-stream,reset,unavailable",
        "retryBackOff": {"baseInterval": "0.01s", "maxInterval": "0.1s"},
        "retryHostPredicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typedConfig": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "hostSelectionRetryMaxAttempts": "5",
    }
    return config


class Extauthz:
    """``extauthz serve`` on a fixed port, so it can come back where it was."""

    def __init__(self, port: int, policies: Path, log: Path) -> None:
        self.port = port
        self.policies = policies
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "extauthz", "serve",
                    "--listen", f"127.0.0.1:{self.port}", "--policies", str(self.policies),
                    "--metrics-listen", "", "--decision-log", "none", "--grace-period", "5",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:
                assert self.proc is not None
                assert self.proc.poll() is None, self.log_path.read_text()
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                except grpc.RpcError:
                    return False
                return reply.status == health_pb2.HealthCheckResponse.SERVING

            wait_for(serving, 20, what=f"extauthz on {self.port}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def upstream() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def healthy_hosts(admin: int) -> int:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=2)
        conn.request("GET", "/clusters")
        text = conn.getresponse().read().decode()
        conn.close()
    except OSError:
        return 0
    return sum(
        1
        for line in text.splitlines()
        if line.startswith(f"{EXTAUTHZ_CLUSTER}::") and line.endswith("::health_flags::healthy")
    )


def client(port: int, stop: threading.Event, statuses: Counter[int]) -> None:
    """Send requests one after the other until told to stop (at most MAX_REQUESTS)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(MAX_REQUESTS):
        if stop.is_set():
            break
        try:
            conn.request("GET", "/orders", headers={"host": "shop.example.com"})
            response = conn.getresponse()
            response.read()
            statuses[response.status] += 1
        except (OSError, http.client.HTTPException):
            statuses[0] += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.close()


@pytest.mark.skipif(ENVOY is None, reason="envoy binary not installed")
def test_rolling_restart_fails_no_request(tmp_path: Path) -> None:
    """Two instances restarted one after the other under load: every request gets a 200."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "any.yaml").write_text(
        tenant_yaml("any") + "---\n" + policy_yaml("allow-all", "any", "  rules: [{}]")
    )
    ports = (free_port(), free_port())
    instances = [Extauthz(p, policies, tmp_path / f"extauthz-{p}.log") for p in ports]
    listen, admin = free_port(), free_port()
    envoy: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    clients: list[threading.Thread] = []
    envoy_log = (tmp_path / "envoy.log").open("wb")
    try:
        for instance in instances:
            instance.start()
        with upstream() as upstream_port:
            config = tmp_path / "envoy.yaml"
            config.write_text(
                yaml.safe_dump(two_endpoint_bootstrap(ports, upstream_port, listen, admin))
            )
            envoy = subprocess.Popen(
                [str(ENVOY), "-c", str(config), "--disable-hot-restart", "--concurrency", "1",
                 "-l", "warning"],
                stdout=envoy_log,  # closed in finally
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            wait_for(lambda: healthy_hosts(admin) == 2, 20, what="both extauthz hosts healthy")
            clients = [
                threading.Thread(target=client, args=(listen, stop, statuses)) for _ in range(2)
            ]
            for thread in clients:
                thread.start()
            wait_for(lambda: statuses.total() >= 50, 20, what="traffic before the restarts")
            for instance in instances:
                assert instance.stop() == 0
                instance.start()
                wait_for(lambda: healthy_hosts(admin) == 2, 20, what="the instance healthy again")
                seen = statuses.total()
                wait_for(lambda s=seen: statuses.total() >= s + 50, 20, what="traffic after it")
            stop.set()
            for thread in clients:
                thread.join(30)
    finally:
        stop.set()
        for thread in clients:
            thread.join(30)
        if envoy is not None and envoy.poll() is None:
            envoy.terminate()
            envoy.wait(10)
        envoy_log.close()
        for instance in instances:
            instance.stop()
    assert statuses[200] >= 200
    assert statuses == Counter({200: statuses[200]}), f"failed requests: {statuses}"
