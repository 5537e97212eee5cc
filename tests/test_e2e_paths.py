"""End to end through a real Envoy: what Envoy forwards and what extauthz decides on agree.

Paths: for each ``meshConfig.pathNormalization`` mode, an Envoy from ``extauthz envoy-config``
(``--path-normalization``, set as istiod sets it) sends tricky raw paths to an upstream that
echoes the path it received; ``normalize_path(raw, mode)`` must equal that path. Repeated
headers: Envoy joins a header sent twice with ``,`` in the Check; a DENY on one of the values
still denies, as Envoy's own RBAC filter does (checked against it). SNI: a DENY on
``connection.sni`` fails closed on a Check without a TLS session, and decides on the SNI
when ``include_tls_session`` makes Envoy send it.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import socket
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import yaml
from google.rpc import code_pb2

from extauthz.documents import load_documents
from extauthz.envoyconfig import EnvoyOptions, HostPort, TlsFiles
from extauthz.model import Subject
from extauthz.pathnorm import PathNormalization, normalize_path
from extauthz.policy import compile_policies, evaluate
from tests.envoy_support import EnvoyProcess, echo_upstream, started, started_envoy
from tests.helpers import (
    ServerProcess,
    check_request,
    free_port,
    serving,
)
from tests.pki import Issued, TestCA

pytestmark = pytest.mark.envoy

POLICIES = """\
apiVersion: extauthz.io/v1
kind: Tenant
metadata: {name: shop}
spec:
  match: {}
  mtls: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-blocked, namespace: shop}
spec:
  action: DENY
  rules:
  - when:
    - key: request.headers[x-block]
      values: ["1"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-evil-sni, namespace: shop}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/sni/*"]}
    when:
    - key: connection.sni
      values: ["evil.test"]
"""

# Each reaches the upstream in every mode (Envoy rejects none of them).
PATHS = [
    "/a/../b",
    "/a/./b",
    "/a//b",
    "/a/%2e%2e/b",
    "/a/%2E%2e/b",
    "/a/.%2e/b",
    "/a/%2e/b",
    "/a%2Fb",
    "/a%2fb/..",
    "/a/%2F../b",
    "/a%5Cb",
    "/a%5c..%5cb",
    "/a\\b",
    "/a\\..\\b",
    "/%41%62%7e%2D%5f%30",
    "/%4a%4A/%c0%af",
    "/%c0%2e%c0%2e/admin",
    "/..",
    "/../..",
    "/a/..",
    "/a/.",
    "/a/b/.",
    "/.",
    "/x//..//a",
    "/x/y/..//a",
    "/a/...",
    "/a/..b/c",
    "/a%25/b",
    "/a%252e%252e/b",
    "/a%2/b",
    "/a%zz/b",
    "/a%/b",
    "/a%21%24%2C%3B%40%3a",
    "/a%20b%22",
    "/a:b@c;d=e,f+g!h$i&j'k(l)m*n",
    "/a[b]c",
    "/public/../admin?x=/../y",
    "/app//../admin",
    "/app//../../admin",
    "/%5Capp%2f%5c%2F%2e%2e%2fadmin%5c\\abc",
    "/xyz%30..//abc",
]
# Raw characters a path may hold only escaped: Envoy either rejects the request or escapes them.
# (No path starts with "//": the echo upstream, Python's http.server, collapses leading slashes.)
MAYBE_REJECTED = ["/a|b", "/a^b", "/a`b", "/a{b}", "/a<b>", '/a"b']


@pytest.fixture(scope="module")
def extauthz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("policies")
    (directory / "shop.yaml").write_text(POLICIES)
    with serving(["--policies", str(directory), "--log-level", "warning"]) as server:
        yield server


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with echo_upstream() as address:
        yield address


@contextlib.contextmanager
def envoy(
    directory: Path,
    extauthz: str,
    upstream: str,
    mode: PathNormalization,
    *,
    tls: TlsFiles | None = None,
    include_tls_session: bool = False,
) -> Iterator[int]:
    """An Envoy normalizing paths as ``mode``; yields its listener port."""
    options = EnvoyOptions(
        extauthz=HostPort.parse(extauthz),
        upstream=HostPort.parse(upstream),
        listen=HostPort("127.0.0.1", free_port()),
        admin_port=free_port(),
        timeout=2.0,
        path_normalization=mode,
        tls=tls,
        include_tls_session=include_tls_session,
    )
    with started_envoy(options, directory) as process:
        yield process.port


def send(
    port: int, path: str, headers: Sequence[tuple[str, str]] = ()
) -> tuple[int, dict[str, object] | None]:
    """A raw GET (path bytes as given, a header may repeat); the upstream's echo, if reached."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", "shop.test")
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        if response.getheader("x-echo") != "upstream":
            return response.status, None
        echoed: dict[str, object] = json.loads(body)
        return response.status, echoed
    finally:
        conn.close()


@pytest.mark.parametrize("mode", list(PathNormalization))
def test_normalize_path_equals_what_envoy_forwards(
    tmp_path: Path, extauthz: ServerProcess, upstream: str, mode: PathNormalization
) -> None:
    """For each mode, normalize_path(raw) is the path Envoy forwards upstream, raw by raw."""
    mismatches = []
    rejected: list[str] = []
    with envoy(tmp_path, extauthz.address, upstream, mode) as port:
        for raw in PATHS:
            status, echoed = send(port, raw)
            assert status == 200, (mode, raw, status)
            assert echoed is not None, (mode, raw)
            forwarded = str(echoed["path"]).split("?")[0]
            if normalize_path(raw, mode) != forwarded:
                mismatches.append((raw, normalize_path(raw, mode), forwarded))
        for raw in MAYBE_REJECTED:
            status, echoed = send(port, raw)
            if echoed is not None:
                forwarded = str(echoed["path"]).split("?")[0]
                if normalize_path(raw, mode) != forwarded:
                    mismatches.append((raw, normalize_path(raw, mode), forwarded))
            else:
                assert status == 400, (mode, raw, status)
                rejected.append(raw)
    assert mismatches == [], mode
    assert len(rejected) < len(MAYBE_REJECTED), "none of them reached the upstream"


def test_deny_on_a_header_sent_twice(
    tmp_path: Path, extauthz: ServerProcess, upstream: str
) -> None:
    """A DENY on x-block: 1 denies a request that sends x-block twice, 0 then 1 (or 1 then 0)."""
    with envoy(tmp_path, extauthz.address, upstream, PathNormalization.BASE) as port:
        assert send(port, "/", [("x-block", "1")])[0] == 403
        assert send(port, "/", [("x-block", "0"), ("x-block", "1")])[0] == 403
        assert send(port, "/", [("x-block", "1"), ("x-block", "0")])[0] == 403
        status, echoed = send(port, "/", [("x-block", "0"), ("x-block", "2")])
        assert status == 200
        assert echoed is not None
        assert echoed["headers"]["x-block"] == ["0", "2"]  # type: ignore[index]
        assert send(port, "/", [("x-block", "0, 1")])[0] == 200  # one value, not "1"


def test_deny_on_sni_fails_closed_without_tls_session(extauthz: ServerProcess) -> None:
    """A Check without a TLS session is denied by a DENY on connection.sni; a known SNI decides."""
    for sni, code in (("", code_pb2.PERMISSION_DENIED), ("evil.test", code_pb2.PERMISSION_DENIED),
                      ("good.test", code_pb2.OK)):  # fmt: skip
        reply = extauthz.check(check_request(host="shop.test", path="/sni/x", sni=sni))
        assert reply.status.code == code, sni
    reply = extauthz.check(check_request(host="shop.test", path="/other"))
    assert reply.status.code == code_pb2.OK


def _rbac_bootstrap(port: int, admin: int) -> dict[str, object]:
    """An Envoy whose RBAC filter denies ``x-block: 1`` as Istio generates it, then answers 200."""
    rbac = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {
            "action": "DENY",
            "policies": {
                "ns[shop]-policy[deny-blocked]-rule[0]": {
                    "permissions": [{"and_rules": {"rules": [{"any": True}]}}],
                    "principals": [
                        {"and_ids": {"ids": [{"header": {"name": "x-block",
                                                         "string_match": {"exact": "1"}}}]}}
                    ],
                }
            },
        },
    }  # fmt: skip
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "rbac",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
                }
            ]
        },
        "http_filters": [
            {"name": "envoy.filters.http.rbac", "typed_config": rbac},
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "rbac",
                    "address": address,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ]
        },
    }


def _rbac_envoy(directory: Path, attempt: int) -> EnvoyProcess:
    """An attempt (``started``) at an Envoy on ``_rbac_bootstrap``, on new ports."""
    port, admin = free_port(), free_port()
    config = directory / f"rbac-{attempt}.yaml"
    config.write_text(yaml.safe_dump(_rbac_bootstrap(port, admin)))
    return EnvoyProcess(config, admin, port)


def test_envoy_rbac_matches_any_repeated_value(tmp_path: Path) -> None:
    """Envoy's own RBAC denies a repeated header with one denied value; so does evaluate."""
    policy = POLICIES.split("---\n")[1]
    compiled = compile_policies(load_documents(policy, "deny.yaml"))
    with started(functools.partial(_rbac_envoy, tmp_path), "rbac envoy") as envoy:
        port = envoy.port
        for values in (["1"], ["0"], ["0", "1"], ["1", "0"], ["0", "2"], ["2", "1", "0"]):
            envoy_allows = send(port, "/", [("x-block", v) for v in values])[0] == 200
            subject = Subject(method="GET", path="/", headers={"x-block": ",".join(values)})
            assert evaluate(compiled, subject).allowed is envoy_allows, values
        # One value with a comma: Envoy's RBAC lets it through; the Check can't tell it from a
        # repeated header, and extauthz denies it (the safe side).
        assert send(port, "/", [("x-block", "0,1")])[0] == 200
        joined = Subject(method="GET", path="/", headers={"x-block": "0,1"})
        assert not evaluate(compiled, joined).allowed


def _get_with_sni(port: int, ca: TestCA, client: Issued, sni: str) -> int:
    """A GET over mTLS whose ClientHello names ``sni`` (the listener's cert is not checked)."""
    context = ca.client_context(client)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname=sni) as sock:
        sock.sendall(b"GET /sni/x HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def test_include_tls_session_lets_a_deny_on_sni_decide(
    tmp_path: Path, extauthz: ServerProcess, upstream: str
) -> None:
    """With --include-tls-session Envoy sends the SNI: the DENY fires only on the named SNI."""
    ca = TestCA(tmp_path / "pki")
    server, client = ca.server(), ca.workload("web", "frontend")
    tls = TlsFiles(ca.cert, server.cert, server.key)
    mode = PathNormalization.BASE
    with envoy(
        tmp_path, extauthz.address, upstream, mode, tls=tls, include_tls_session=True
    ) as port:
        assert _get_with_sni(port, ca, client, "evil.test") == 403
        assert _get_with_sni(port, ca, client, "good.test") == 200
    with envoy(tmp_path, extauthz.address, upstream, mode, tls=tls) as port:
        assert _get_with_sni(port, ca, client, "good.test") == 403  # no TLS session: fail closed
