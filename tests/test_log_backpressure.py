"""A stalled stderr (a log collector that stopped reading) never holds a Check, never grows
the server without limit and never keeps it from exiting: records beyond ``--log-buffer``
are dropped, counted in ``extauthz_log_records_dropped_total``, and reported once the writer
moves again."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import json_format

from tests.helpers import REPO, ServerProcess, free_port, wait_for
from tests.test_telemetry_prometheus import scrape

DENIED = REPO / "examples" / "requests" / "acme-user-write-without-scope.json"
CHECKS = 3000  # about 2 MB of decision lines: far more than a pipe holds (64 KiB)


@contextlib.contextmanager
def stalled_server(metrics: int) -> Iterator[ServerProcess]:
    """``extauthz serve`` with stdout and stderr in one pipe nobody reads (until the test
    does), after CHECKS denies: the pipe is full, and the server's log writer blocks on it."""
    args = ["--policies", str(REPO / "policies"), "--metrics-listen", f"127.0.0.1:{metrics}"]
    server = ServerProcess([*args, "--log-buffer", "50"], output=subprocess.PIPE)
    try:
        server.wait_serving()
        request = json_format.Parse(DENIED.read_text(), external_auth_pb2.CheckRequest())
        codes: list[int] = []
        for _ in range(CHECKS // 100):  # every deny is a decision-log line
            calls: list[Future[Any]] = [
                server.stub.Check.future(request, timeout=10) for _ in range(100)
            ]
            codes += [call.result().status.code for call in calls]
        assert codes == [grpc.StatusCode.PERMISSION_DENIED.value[0]] * CHECKS
        yield server
    finally:
        server.stop()
        if server.proc.stdout is not None:
            server.proc.stdout.close()


def test_a_stalled_stderr_drops_log_lines_and_never_holds_a_check() -> None:
    metrics = free_port()
    output: list[bytes] = []
    reader: threading.Thread | None = None
    with stalled_server(metrics) as server:  # every Check answered, the pipe full
        assert sum(v for _, v in scrape(metrics)["extauthz_log_records_dropped_total"]) > 0

        # The collector reads again: the writer moves on and says how many it dropped.
        stdout = server.proc.stdout
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
    with stalled_server(free_port()) as server:
        start = time.monotonic()
        server.proc.terminate()
        try:
            code = server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 0, f"no exit {time.monotonic() - start:.0f} s after SIGTERM"
