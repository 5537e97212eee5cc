"""What the load benchmarks share: child servers on free loopback ports, h2load/wrk runs
and their parsing, percentiles, Markdown tables.

Every child process is started here and stopped by its PID (SIGTERM, then SIGKILL after a
grace period). Load generators only ever target 127.0.0.1 and always run for a bounded
duration with a timeout.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BENCH: Final = Path(__file__).resolve().parent
REPO: Final = BENCH.parent
RESULTS: Final = BENCH / "results"
CHECK_PATH: Final = "/envoy.service.auth.v3.Authorization/Check"
LOOPBACK: Final = "127.0.0.1"


def wire_of(reply: object) -> bytes:
    """A servicer's reply as grpc sends it: the bytes ``Check`` returns, or (a reference
    ``src/`` from before the servicer returned bytes) the CheckResponse serialized."""
    if isinstance(reply, bytes):
        return reply
    data: bytes = reply.SerializeToString()  # type: ignore[attr-defined]
    return data


def response_encoder() -> Callable[[Any, str], bytes]:
    """The response as the servicer sends it, for an outcome and a decision id:
    ``encode_response``, or in a reference ``src/`` without it, the message serialized."""
    from extauthz import response

    encode = getattr(response, "encode_response", None)
    if encode is not None:
        return encode  # type: ignore[no-any-return]
    build = response.build_response
    return lambda outcome, decision_id: build(outcome, decision_id).SerializeToString()


def check_argument() -> Callable[[bytes], Any]:
    """What the servicer's ``Check`` takes for a request's bytes: the bytes themselves (grpc
    hands them over unparsed), or (a reference ``src/`` from before ``decode_bytes``) the
    CheckRequest grpc parsed for it."""
    from extauthz import decode

    if hasattr(decode, "decode_bytes"):
        return lambda wire: wire
    from envoy.service.auth.v3 import external_auth_pb2

    return external_auth_pb2.CheckRequest.FromString  # type: ignore[no-any-return]


def request_decoder() -> Callable[[bytes], Any]:
    """A request's bytes to its RequestView, as a served Check does: ``decode_bytes``, or (a
    reference ``src/`` without it) protobuf's parse and ``decode``."""
    from extauthz import decode

    decode_bytes = getattr(decode, "decode_bytes", None)
    if decode_bytes is not None:
        return decode_bytes  # type: ignore[no-any-return]
    from envoy.service.auth.v3 import external_auth_pb2

    parse = external_auth_pb2.CheckRequest.FromString
    return lambda wire: decode.decode(parse(wire))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"{tool} not found: run `bash bench/setup.sh` first")
    return path


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Child:
    """A child process with its output in a log file; ``stop`` ends it by its PID."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env} if env else None,
        )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.logs()}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()


class GrpcServer(Child):
    """A gRPC Check server (extauthz or the bare baseline) on a free loopback port."""

    def __init__(
        self,
        name: str,
        argv_for: Callable[[str], Sequence[str]],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        super().__init__(name, argv_for(self.address), log_dir, env)

    def wait_serving(self, timeout: float = 30.0) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:
                self.check_alive()
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                except grpc.RpcError:
                    return False
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

            wait_for(serving, timeout, f"{self.name} on {self.address}")


def extauthz_argv(policies: Path, *extra: str) -> Callable[[str], list[str]]:
    """``extauthz serve`` on ``policies`` with ``extra`` flags."""

    def argv(address: str) -> list[str]:
        return [
            sys.executable, "-m", "extauthz", "serve",
            "--listen", address, "--policies", str(policies), "--log-level", "warning",
            *extra,
        ]  # fmt: skip

    return argv


def bare_argv(address: str) -> list[str]:
    return [sys.executable, str(BENCH / "bare_server.py"), "--listen", address]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One load run: throughput, latency in milliseconds, and everything that went wrong."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    detail: str = ""


H2LOAD_FINISHED: Final = re.compile(r"finished in [\d.]+\w+, ([\d.]+) req/s")
H2LOAD_REQUESTS: Final = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
H2LOAD_STATUS: Final = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def h2load(
    url: str,
    data_file: Path,
    *,
    clients: int,
    streams: int,
    duration: float,
    warmup: float,
    log_file: Path,
    headers: Sequence[str] = ("content-type: application/grpc", "te: trailers"),
) -> LoadResult:
    """POST ``data_file`` to ``url`` over h2c for ``duration`` seconds after ``warmup``."""
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise ValueError(f"load only targets {LOOPBACK}: {url}")
    argv = [
        require("h2load"), "-c", str(clients), "-m", str(streams), "-t", "1",
        "-D", f"{round(duration * 1000)}ms", "--warm-up-time", f"{round(warmup * 1000)}ms",
        "-d", str(data_file), "--log-file", str(log_file),
    ]  # fmt: skip
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + warmup + 60, check=False
    )
    out = done.stdout + done.stderr
    finished = H2LOAD_FINISHED.search(out)
    counts = H2LOAD_REQUESTS.search(out)
    status = H2LOAD_STATUS.search(out)
    if done.returncode != 0 or not (finished and counts and status):
        raise RuntimeError(f"h2load failed ({done.returncode}):\n{out}")
    _, _, _, succeeded, failed, errored, timeout = (int(g) for g in counts.groups())
    ok2xx, s3, s4, s5 = (int(g) for g in status.groups())
    latencies = _log_latencies_ms(log_file)
    return LoadResult(
        rps=float(finished.group(1)),
        p50_ms=percentile(latencies, 0.5),
        p99_ms=percentile(latencies, 0.99),
        requests=succeeded,
        errors=failed + errored + timeout + s3 + s4 + s5 + max(0, succeeded - ok2xx),
        detail=f"2xx={ok2xx} 3xx={s3} 4xx={s4} 5xx={s5} failed={failed} errored={errored}",
    )


def _log_latencies_ms(log_file: Path) -> list[float]:
    """Sorted latencies of the 2xx responses in an h2load --log-file."""
    values: list[float] = []
    with log_file.open() as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].startswith("2"):
                values.append(int(parts[2]) / 1000)
    values.sort()
    return values


WRK_REQUESTS: Final = re.compile(r"(\d+) requests in [\d.]+\w+")
WRK_RPS: Final = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_NON2XX: Final = re.compile(r"Non-2xx or 3xx responses: (\d+)")
WRK_SOCKET: Final = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
WRK_PERCENTILE: Final = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def wrk(url: str, *, connections: int, duration: float, headers: Sequence[str] = ()) -> LoadResult:
    """wrk with one thread, ``connections`` connections, for ``duration`` seconds."""
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise ValueError(f"load only targets {LOOPBACK}: {url}")
    argv = [
        require("wrk"), "-t", "1", "-c", str(connections), "-d", f"{max(1, round(duration))}s",
        "--latency", "--timeout", "5s",
    ]  # fmt: skip
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    out = done.stdout + done.stderr
    rps = WRK_RPS.search(out)
    total = WRK_REQUESTS.search(out)
    if done.returncode != 0 or not (rps and total):
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{out}")
    pct = {q: _ms(v, unit) for q, v, unit in WRK_PERCENTILE.findall(out)}
    non2xx = WRK_NON2XX.search(out)
    sock = WRK_SOCKET.search(out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(g) for g in sock.groups()) if sock else 0
    )
    return LoadResult(
        rps=float(rps.group(1)),
        p50_ms=pct.get("50", float("nan")),
        p99_ms=pct.get("99", float("nan")),
        requests=int(total.group(1)),
        errors=errors,
    )


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.md"
    path.write_text(text)
    return path
