"""A stalled stderr (a log collector that stopped reading) never holds a Check, never grows
the server without limit and never keeps it from exiting: records beyond ``--log-buffer``
are dropped, counted in ``extauthz_log_records_dropped_total``, and reported once the writer
moves again."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import REPO, free_port, stop_process, wait_for
from tests.test_telemetry_prometheus import scrape

DENIED = REPO / "examples" / "requests" / "acme-user-write-without-scope.json"
CHECKS = 3000  # about 2 MB of decision lines: far more than a pipe holds (64 KiB)


@contextlib.contextmanager
def stalled_server(metrics: int) -> Iterator[subprocess.Popen[bytes]]:
    """``extauthz serve`` with stdout and stderr in one pipe nobody reads (until the test
    does): it fills, and the server's log writer blocks on it. Serving on return."""
    port = free_port()
    command = [
        sys.executable, "-m", "extauthz", "serve", "--listen", f"127.0.0.1:{port}",
        "--policies", str(REPO / "policies"), "--metrics-listen", f"127.0.0.1:{metrics}",
        "--log-buffer", "50",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            assert proc.poll() is None, "extauthz exited"
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        wait_for(serving, 20, what="extauthz serving")
        request = json_format.Parse(DENIED.read_text(), external_auth_pb2.CheckRequest())
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        codes: list[int] = []
        for _ in range(CHECKS // 100):  # every deny is a decision-log line
            calls: list[Future[Any]] = [stub.Check.future(request, timeout=10) for _ in range(100)]
            codes += [call.result().status.code for call in calls]
        assert codes == [grpc.StatusCode.PERMISSION_DENIED.value[0]] * CHECKS
        yield proc
    finally:
        channel.close()
        stop_process(proc, timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_stalled_stderr_drops_log_lines_and_never_holds_a_check() -> None:
    metrics = free_port()
    output: list[bytes] = []
    reader: threading.Thread | None = None
    with stalled_server(metrics) as proc:  # every Check answered, the pipe full
        assert sum(v for _, v in scrape(metrics)["extauthz_log_records_dropped_total"]) > 0

        # The collector reads again: the writer moves on and says how many it dropped.
        stdout = proc.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: output.extend(stdout), daemon=True)
        reader.start()
        wait_for(
            lambda: any(b"log records dropped" in line for line in list(output)),
            20,
            what="the dropped-records warning",
        )
    reader.join(5)
    warning = next(line for line in output if b"log records dropped" in line)
    assert b'"dropped": ' in warning
    assert b'"level": "warning"' in warning


def test_a_server_whose_stderr_is_stalled_still_exits_on_sigterm() -> None:
    """Its writer is blocked on the full pipe; SIGTERM ends the server all the same, with
    status 0, after at most the few seconds it gives the writer."""
    with stalled_server(free_port()) as proc:
        start = time.monotonic()
        proc.terminate()
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 0, f"no exit {time.monotonic() - start:.0f} s after SIGTERM"
