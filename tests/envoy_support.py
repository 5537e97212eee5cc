"""The real-Envoy harness shared by the end-to-end modules: an Envoy process built by
``extauthz.envoyconfig``, an upstream that echoes what it got, and a client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import json
import ssl
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from extauthz.envoyconfig import EnvoyOptions, HostPort, TlsFiles, XfccMode, render
from tests.helpers import envoy_binary, envoy_ready, free_port, stop_process, wait_for

ENVOY = envoy_binary()

# Generous enough that a loaded machine never turns an allow into a timeout deny.
CHECK_TIMEOUT = 1.0

# ---------------------------------------------------------------------------------------------
# processes


class EnvoyProcess:
    """``envoy`` on the bootstrap file ``config`` (its log beside it); ``ready`` when its
    admin ``/ready`` says LIVE. ``port``: its listener's, when it has one."""

    def __init__(self, config: Path, admin_port: int, port: int = 0) -> None:
        self.port = port
        self.admin_port = admin_port
        self.log_path = config.with_suffix(".log")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                str(ENVOY),
                "-c",
                str(config),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.logs()}")
        return envoy_ready(self.admin_port)

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@contextlib.contextmanager
def started(
    launch: Callable[[int], EnvoyProcess], what: str, timeout: float = 20
) -> Iterator[EnvoyProcess]:
    """``launch(attempt)``'s Envoy, ready, stopped on exit. ``free_port`` finds a port free,
    and another process (a client's outgoing connection) can take it before Envoy binds:
    then ``launch`` is called again, for a next attempt on new ports, up to three times."""
    for attempt in range(3):
        envoy = launch(attempt)
        try:
            wait_for(envoy.ready, timeout, what=what)
        except RuntimeError as exc:
            envoy.stop()
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
            continue
        try:
            yield envoy
        finally:
            envoy.stop()
        return


@contextlib.contextmanager
def started_envoy(options: EnvoyOptions, directory: Path) -> Iterator[EnvoyProcess]:
    """Envoy on the bootstrap ``options`` render, ready, stopped on exit; a next attempt
    (``started``) on new listener and admin ports."""
    directory.mkdir(parents=True, exist_ok=True)

    def launch(attempt: int) -> EnvoyProcess:
        nonlocal options
        if attempt:
            listen = HostPort(options.listen.host, free_port())
            options = dataclasses.replace(options, listen=listen, admin_port=free_port())
        config = directory / f"envoy-{options.listen.port}.yaml"
        config.write_text(render(options))
        return EnvoyProcess(config, options.admin_port, options.listen.port)

    with started(launch, f"envoy on {options.listen}") as envoy:
        yield envoy


@contextlib.contextmanager
def running_envoy(
    directory: Path,
    extauthz: str,
    upstream: str,
    *,
    tls: TlsFiles | None = None,
    xfcc: XfccMode | None = None,
    timeout: float = CHECK_TIMEOUT,
    with_request_body: int | None = None,
) -> Iterator[EnvoyProcess]:
    options = EnvoyOptions(
        extauthz=HostPort.parse(extauthz),
        upstream=HostPort.parse(upstream),
        listen=HostPort("127.0.0.1", free_port()),
        admin_port=free_port(),
        tls=tls,
        xfcc=xfcc,
        timeout=timeout,
        with_request_body=with_request_body,
    )
    with started_envoy(options, directory) as envoy:
        yield envoy


class _Echo(BaseHTTPRequestHandler):
    """Answers every request with the headers it received, as JSON ``{name: [values]}``."""

    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        body = json.dumps({"method": self.command, "path": self.path, "headers": headers})
        data = body.encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("x-echo", "upstream")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _echo

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def authorizer_in_thread(
    check: Callable[[Any, Any], Awaitable[Any]],
    *,
    deserializer: Callable[[bytes], Any] | None = CheckRequest.FromString,
    serializer: Callable[[Any], bytes] | None = CheckResponse.SerializeToString,
) -> Iterator[str]:
    """A grpc.aio Authorization server on 127.0.0.1, on its own event loop thread, answering
    with ``check`` (given bytes and giving bytes when the (de)serializers are None)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    handler = grpc.unary_unary_rpc_method_handler(
        check, request_deserializer=deserializer, response_serializer=serializer
    )
    methods = grpc.method_handlers_generic_handler(
        "envoy.service.auth.v3.Authorization", {"Check": handler}
    )

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((methods,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@contextlib.contextmanager
def echo_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---------------------------------------------------------------------------------------------
# client


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def upstream(self) -> dict[str, Any]:
        """What the upstream received (only for a request that reached it)."""
        assert self.headers.get("x-echo") == "upstream", (self.status, self.body)
        echoed: dict[str, Any] = json.loads(self.body)
        return echoed

    @property
    def upstream_headers(self) -> dict[str, list[str]]:
        headers: dict[str, list[str]] = self.upstream["headers"]
        return headers


def send(
    envoy: EnvoyProcess,
    path: str = "/",
    *,
    method: str = "GET",
    body: bytes | None = None,
    context: ssl.SSLContext | None = None,
    headers: Mapping[str, str] | None = None,
    host: str = "shop.test",
) -> Reply:
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection(
            "127.0.0.1", envoy.port, timeout=10
        )
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", envoy.port, timeout=10, context=context)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()
