"""End to end: a client, a real Envoy built by ``extauthz.envoyconfig``, ``extauthz serve`` and
an upstream that echoes the request headers it got. Everything binds 127.0.0.1 on free ports.

One extauthz and two Envoys (mTLS and plain HTTP) are shared by the module; tests that stop,
stall, replace or reconfigure extauthz start their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from jwt.algorithms import ECAlgorithm

from extauthz.envoyconfig import TlsFiles, XfccMode
from tests.envoy_support import (
    CHECK_TIMEOUT,
    EnvoyProcess,
    authorizer_in_thread,
    echo_upstream,
    running_envoy,
    send,
)
from tests.helpers import (
    RedisServer,
    ServerProcess,
    serving,
    wait_for,
)
from tests.pki import Issued, TestCA

pytestmark = pytest.mark.envoy

ISSUER = "https://issuer.test"
TD = "cluster.local"
FRONTEND = f"spiffe://{TD}/ns/web/sa/frontend"


class _Slow(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """An authorization server that answers OK after ``delay`` seconds."""

    def __init__(self) -> None:
        self.delay = 0.0

    async def Check(self, request: Any, context: Any) -> external_auth_pb2.CheckResponse:
        await asyncio.sleep(self.delay)
        response = external_auth_pb2.CheckResponse()
        response.status.code = code_pb2.OK
        return response


@contextlib.contextmanager
def slow_authorizer() -> Iterator[tuple[str, _Slow]]:
    """A grpc.aio Authorization server on its own event loop thread."""
    servicer = _Slow()
    with authorizer_in_thread(servicer.Check) as address:
        yield address, servicer


# ---------------------------------------------------------------------------------------------
# identities and policies


@dataclass
class Pki:
    ca: TestCA
    server: Issued
    frontend: Issued
    batch: Issued
    other: Issued

    @property
    def listener(self) -> TlsFiles:
        return TlsFiles(self.ca.cert, self.server.cert, self.server.key)

    def as_(self, who: Issued) -> ssl.SSLContext:
        return self.ca.client_context(who)


@dataclass
class Issuer:
    key: ec.EllipticCurvePrivateKey
    jwks: str

    def token(self, sub: str = "alice", scope: str = "profile.read", **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "sub": sub, "aud": "shop", "iat": now, "exp": now + 600}
        payload.update(scope=scope, **claims)
        return jwt.encode(payload, self.key, algorithm="ES256", headers={"kid": "k1"})


def make_issuer() -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="ES256", use="sig")
    return Issuer(key, json.dumps({"keys": [jwk]}))


TENANT = """\
apiVersion: extauthz.io/v1
kind: Tenant
metadata: {{name: shop}}
spec:
  match: {{}}
  trustDomains: ["cluster.local"]
  mtls: {{mode: PERMISSIVE}}
  jwtRules:
  - issuer: {issuer}
    audiences: [shop]
    jwks: '{jwks}'
    fromHeaders: [{{name: authorization, prefix: "Bearer "}}]
    forwardOriginalToken: false
    outputClaimToHeaders: [{{header: x-user, claim: sub}}]
"""

POLICIES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-override, namespace: shop}
spec:
  action: DENY
  rules:
  - when:
    - key: request.headers[x-internal-override]
      values: ["*"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-debug-from-web, namespace: shop}
spec:
  action: DENY
  rules:
  - when:
    - key: extauthz.io/cel
      values: ['source.namespace == "web" && "debug" in request.query']
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-orders, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/web/sa/frontend"]}
    to:
    - operation: {methods: ["GET", "POST"], paths: ["/api/orders", "/api/orders/*"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: batch-jobs, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {namespaces: ["batch"]}
    to:
    - operation: {paths: ["/jobs/*"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: users-profile, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {requestPrincipals: ["https://issuer.test/*"]}
    to:
    - operation: {methods: ["GET"], paths: ["/api/profile/*"]}
    when:
    - key: request.auth.claims[scope]
      values: ["profile.read"]
"""

PUBLIC = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: public, namespace: shop}}
spec:
  action: ALLOW
  rules:
  - to:
    - operation: {{paths: ["{path}"]}}
"""


def write_policies(directory: Path, issuer: Issuer, public: str = "/public/*") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tenant.yaml").write_text(TENANT.format(issuer=ISSUER, jwks=issuer.jwks))
    (directory / "policies.yaml").write_text(POLICIES)
    (directory / "public.yaml").write_text(PUBLIC.format(path=public))
    return directory


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def pki(workdir: Path) -> Pki:
    ca = TestCA(workdir / "pki", trust_domain=TD)
    return Pki(
        ca=ca,
        server=ca.server(),
        frontend=ca.workload("web", "frontend"),
        batch=ca.workload("batch", "cron"),
        other=ca.workload("web", "other"),
    )


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return make_issuer()


@pytest.fixture(scope="module")
def policies(workdir: Path, issuer: Issuer) -> Path:
    return write_policies(workdir / "policies", issuer)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with echo_upstream() as address:
        yield address


@pytest.fixture(scope="module")
def extauthz(policies: Path) -> Iterator[ServerProcess]:
    with serving(["--policies", str(policies), "--log-level", "warning"]) as server:
        yield server


@pytest.fixture(scope="module")
def mesh(workdir: Path, pki: Pki, extauthz: ServerProcess, upstream: str) -> Iterator[EnvoyProcess]:
    """An mTLS listener, like a sidecar's inbound listener."""
    with running_envoy(workdir, extauthz.address, upstream, tls=pki.listener) as envoy:
        yield envoy


@pytest.fixture(scope="module")
def plain(workdir: Path, extauthz: ServerProcess, upstream: str) -> Iterator[EnvoyProcess]:
    """A plain HTTP listener: requests without a peer identity."""
    with running_envoy(workdir, extauthz.address, upstream) as envoy:
        yield envoy


@pytest.fixture(scope="module")
def gateway_extauthz(policies: Path) -> Iterator[ServerProcess]:
    """extauthz trusting x-forwarded-client-cert from 127.0.0.1 (the gateway)."""
    args = ["--policies", str(policies), "--trusted-proxy-cidr", "127.0.0.1/32"]
    with serving([*args, "--log-level", "warning"]) as server:
        yield server


@pytest.fixture
def own_extauthz(policies: Path) -> Iterator[ServerProcess]:
    """An extauthz this test may stop or stall."""
    with serving(["--policies", str(policies), "--log-level", "warning"]) as server:
        yield server


# ---------------------------------------------------------------------------------------------
# decisions through the mTLS listener


def test_allows_principal_named_in_policy(mesh: EnvoyProcess, pki: Pki) -> None:
    """A workload whose SPIFFE ID an ALLOW policy names reaches the upstream."""
    reply = send(mesh, "/api/orders", context=pki.as_(pki.frontend))
    assert reply.status == 200
    assert reply.upstream["path"] == "/api/orders"


def test_denies_principal_not_in_policy(mesh: EnvoyProcess, pki: Pki) -> None:
    """Another workload of the same namespace gets extauthz's 403 and never the upstream."""
    reply = send(mesh, "/api/orders", context=pki.as_(pki.other))
    assert reply.status == 403
    assert reply.body == b"access denied\n"
    assert "x-echo" not in reply.headers


def test_allows_any_workload_of_named_namespace(mesh: EnvoyProcess, pki: Pki) -> None:
    """``namespaces`` matches the namespace inside the client certificate's SPIFFE ID."""
    assert send(mesh, "/jobs/nightly", context=pki.as_(pki.batch)).status == 200


def test_denies_workload_of_other_namespace(mesh: EnvoyProcess, pki: Pki) -> None:
    """A workload outside the named namespace does not get the namespace's paths."""
    assert send(mesh, "/jobs/nightly", context=pki.as_(pki.frontend)).status == 403


def test_denies_path_outside_policy(mesh: EnvoyProcess, pki: Pki) -> None:
    """An allowed principal is still limited to the policy's paths."""
    assert send(mesh, "/api/invoices", context=pki.as_(pki.frontend)).status == 403


def test_denies_method_outside_policy(mesh: EnvoyProcess, pki: Pki) -> None:
    """An allowed principal is still limited to the policy's methods."""
    reply = send(mesh, "/api/orders/7", method="DELETE", context=pki.as_(pki.frontend))
    assert reply.status == 403


def test_deny_policy_on_header_wins(mesh: EnvoyProcess, pki: Pki) -> None:
    """A DENY policy on a request header overrides the ALLOW that would match."""
    headers = {"x-internal-override": "yes"}
    reply = send(mesh, "/api/orders", context=pki.as_(pki.frontend), headers=headers)
    assert reply.status == 403


def test_cel_deny_on_source_and_query(mesh: EnvoyProcess, pki: Pki) -> None:
    """A CEL DENY on the calling namespace and a query parameter denies through Envoy."""
    frontend = pki.as_(pki.frontend)
    assert send(mesh, "/api/orders?debug=1", context=frontend).status == 403
    assert send(mesh, "/api/orders?page=2", context=frontend).status == 200


def test_allows_token_with_required_claim(mesh: EnvoyProcess, pki: Pki, issuer: Issuer) -> None:
    """A valid JWT whose scope claim the policy asks for is allowed."""
    headers = {"authorization": f"Bearer {issuer.token(scope='profile.read email')}"}
    reply = send(mesh, "/api/profile/me", context=pki.as_(pki.other), headers=headers)
    assert reply.status == 200


def test_denies_token_without_required_claim(mesh: EnvoyProcess, pki: Pki, issuer: Issuer) -> None:
    """A valid JWT without the required scope is a policy denial (403), not a 401."""
    headers = {"authorization": f"Bearer {issuer.token(scope='email')}"}
    reply = send(mesh, "/api/profile/me", context=pki.as_(pki.other), headers=headers)
    assert reply.status == 403


def test_bad_token_gets_401_with_www_authenticate(mesh: EnvoyProcess, pki: Pki) -> None:
    """A token signed by an unknown key reaches the client as 401 with extauthz's challenge."""
    forged = make_issuer().token()
    headers = {"authorization": f"Bearer {forged}"}
    reply = send(mesh, "/api/orders", context=pki.as_(pki.frontend), headers=headers)
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == 'Bearer realm="extauthz", error="invalid_token"'
    assert "x-echo" not in reply.headers


def test_upstream_gets_identity_headers(mesh: EnvoyProcess, pki: Pki, issuer: Issuer) -> None:
    """On allow the upstream sees the tenant, the peer SPIFFE ID, iss/sub and the claim header."""
    headers = {"authorization": f"Bearer {issuer.token(sub='alice')}"}
    got = send(mesh, "/api/orders", context=pki.as_(pki.frontend), headers=headers)
    seen = got.upstream_headers
    assert seen["x-extauthz-tenant"] == ["shop"]
    assert seen["x-extauthz-principal"] == [FRONTEND]
    assert seen["x-extauthz-request-principal"] == [f"{ISSUER}/alice"]
    assert seen["x-user"] == ["alice"]


def test_upstream_does_not_get_token_when_not_forwarded(
    mesh: EnvoyProcess, pki: Pki, issuer: Issuer
) -> None:
    """With forwardOriginalToken false the authorization header is removed before the upstream."""
    headers = {"authorization": f"Bearer {issuer.token()}"}
    got = send(mesh, "/api/orders", context=pki.as_(pki.frontend), headers=headers)
    assert "authorization" not in got.upstream_headers


def test_client_claim_header_is_overwritten(mesh: EnvoyProcess, pki: Pki, issuer: Issuer) -> None:
    """A client's own x-user does not survive next to the value taken from the verified token."""
    headers = {"authorization": f"Bearer {issuer.token(sub='bob')}", "x-user": "mallory"}
    got = send(mesh, "/api/orders", context=pki.as_(pki.frontend), headers=headers)
    assert got.upstream_headers["x-user"] == ["bob"]


def test_listener_requires_client_certificate(mesh: EnvoyProcess, pki: Pki) -> None:
    """The mTLS listener refuses a client that presents no certificate."""
    with pytest.raises((ssl.SSLError, ConnectionError)):
        send(mesh, "/public/x", context=pki.ca.client_context())


def test_listener_rejects_certificate_of_another_ca(
    mesh: EnvoyProcess, pki: Pki, workdir: Path
) -> None:
    """A SPIFFE certificate from a CA the listener does not trust is refused."""
    rogue = TestCA(workdir / "rogue", trust_domain=TD, name="rogue-ca")
    context = pki.ca.client_context()
    impostor = rogue.workload("web", "frontend")
    context.load_cert_chain(str(impostor.cert), str(impostor.key))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        send(mesh, "/api/orders", context=context)


# ---------------------------------------------------------------------------------------------
# no peer identity (plain listener)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("x-extauthz-principal", None),
        ("x-extauthz-request-principal", None),
        ("x-extauthz-tenant", ["shop"]),
    ],
)
def test_spoofed_identity_header_does_not_reach_upstream(
    plain: EnvoyProcess, header: str, expected: list[str] | None
) -> None:
    """A client's own x-extauthz-* header is removed, or replaced by extauthz's value."""
    got = send(plain, "/public/page", headers={header: "spiffe://cluster.local/ns/x/sa/y"})
    assert got.status == 200
    assert got.upstream_headers.get(header) == expected


def test_spoofed_principal_header_does_not_authorize(plain: EnvoyProcess) -> None:
    """Claiming a SPIFFE ID in a header does not satisfy a principals rule."""
    reply = send(plain, "/api/orders", headers={"x-extauthz-principal": FRONTEND})
    assert reply.status == 403


def test_body_larger_than_buffer_is_checked_and_forwarded(
    workdir: Path, extauthz: ServerProcess, upstream: str
) -> None:
    """With a request body in the Check, a body over the limit is sent partially, not refused."""
    with running_envoy(workdir, extauthz.address, upstream, with_request_body=16) as envoy:
        got = send(envoy, "/public/upload", method="POST", body=b"x" * 1000)
        assert got.status == 200
        assert got.upstream["method"] == "POST"


# ---------------------------------------------------------------------------------------------
# failOpen: false


def test_stopped_extauthz_denies(workdir: Path, own_extauthz: ServerProcess, upstream: str) -> None:
    """With extauthz gone Envoy answers 403 (status_on_error), never passes the request on."""
    with running_envoy(workdir, own_extauthz.address, upstream) as envoy:
        assert send(envoy, "/public/page").status == 200
        own_extauthz.stop()
        reply = send(envoy, "/public/page")
        assert reply.status == 403
        assert "x-echo" not in reply.headers


def test_hung_extauthz_denies(workdir: Path, own_extauthz: ServerProcess, upstream: str) -> None:
    """An extauthz that accepts the call but never answers is a 403 after the timeout."""
    with running_envoy(workdir, own_extauthz.address, upstream) as envoy:
        assert send(envoy, "/public/page").status == 200
        os.kill(own_extauthz.proc.pid, signal.SIGSTOP)
        try:
            reply = send(envoy, "/public/page")
        finally:
            os.kill(own_extauthz.proc.pid, signal.SIGCONT)
        assert reply.status == 403
        assert "x-echo" not in reply.headers


def test_answer_after_timeout_denies(workdir: Path, upstream: str) -> None:
    """An OK that comes later than the configured timeout does not let the request through."""
    with (
        slow_authorizer() as (address, servicer),
        running_envoy(workdir, address, upstream) as envoy,
    ):
        assert send(envoy, "/anything").status == 200
        servicer.delay = CHECK_TIMEOUT * 4
        reply = send(envoy, "/anything")
        assert reply.status == 403
        assert "x-echo" not in reply.headers


# ---------------------------------------------------------------------------------------------
# policy changes at run time (file store, Redis store)


def test_file_policy_change_takes_effect_without_restart(
    tmp_path: Path, issuer: Issuer, upstream: str
) -> None:
    """Rewriting a served YAML file changes Envoy's answers; nothing is restarted."""
    directory = write_policies(tmp_path / "policies", issuer, public="/public/*")
    args = ["--policies", str(directory), "--poll-interval", "0.2", "--log-level", "warning"]
    with serving(args) as server, running_envoy(tmp_path, server.address, upstream) as envoy:
        assert send(envoy, "/public/page").status == 200
        assert send(envoy, "/open/page").status == 403
        (directory / "public.yaml").write_text(PUBLIC.format(path="/open/*"))
        wait_for(
            lambda: send(envoy, "/open/page").status == 200, 20, 0.1, "the new policy to apply"
        )
        assert send(envoy, "/public/page").status == 403


def apply_to_redis(url: str, directory: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "extauthz",
            "policy",
            "apply",
            "--redis-url",
            url,
            "-f",
            str(directory),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.redis
def test_redis_policy_change_takes_effect_without_restart(
    tmp_path: Path, issuer: Issuer, upstream: str, redis: RedisServer
) -> None:
    """``extauthz policy apply`` to Redis changes Envoy's answers; nothing is restarted."""
    directory = write_policies(tmp_path / "policies", issuer, public="/public/*")
    apply_to_redis(redis.url, directory)
    args = ["--redis-url", redis.url, "--log-level", "warning"]
    with serving(args) as server, running_envoy(tmp_path, server.address, upstream) as envoy:
        assert send(envoy, "/public/page").status == 200
        assert send(envoy, "/open/page").status == 403
        (directory / "public.yaml").write_text(PUBLIC.format(path="/open/*"))
        apply_to_redis(redis.url, directory)
        wait_for(
            lambda: send(envoy, "/open/page").status == 200, 20, 0.1, "the new policy to apply"
        )
        assert send(envoy, "/public/page").status == 403


# ---------------------------------------------------------------------------------------------
# gateway: x-forwarded-client-cert


@pytest.fixture(scope="module")
def gateway(
    workdir: Path, pki: Pki, gateway_extauthz: ServerProcess, upstream: str
) -> Iterator[EnvoyProcess]:
    with running_envoy(
        workdir,
        gateway_extauthz.address,
        upstream,
        tls=pki.listener,
        xfcc=XfccMode.SANITIZE_SET,
    ) as envoy:
        yield envoy


def test_gateway_passes_client_spiffe_id(gateway: EnvoyProcess, pki: Pki) -> None:
    """Through an XFCC gateway the client's SPIFFE ID decides and reaches the upstream."""
    got = send(gateway, "/api/orders", context=pki.as_(pki.frontend))
    assert got.status == 200
    seen = got.upstream_headers
    assert seen["x-extauthz-principal"] == [FRONTEND]
    assert f"URI={FRONTEND}" in seen["x-forwarded-client-cert"][0]


def test_gateway_replaces_client_supplied_xfcc(gateway: EnvoyProcess, pki: Pki) -> None:
    """SANITIZE_SET drops a client's own XFCC, so it cannot borrow another identity."""
    spoof = {"x-forwarded-client-cert": f"URI={FRONTEND}"}
    reply = send(gateway, "/api/orders", context=pki.as_(pki.batch), headers=spoof)
    assert reply.status == 403


def test_gateway_client_certificate_with_a_crafted_uri_san_is_denied(
    gateway: EnvoyProcess, pki: Pki
) -> None:
    """Envoy writes URI SANs unquoted: one holding ',URI=<frontend>' reads as two elements,
    which a SANITIZE_SET gateway never writes, so it is refused rather than believed."""
    crafted = pki.ca.client(f"{pki.batch.uri},By=spiffe://gw;URI={FRONTEND}", "crafted")
    assert send(gateway, "/api/orders", context=pki.as_(crafted)).status == 403


def test_append_forward_gateway_decides_on_its_own_element(
    workdir: Path, pki: Pki, policies: Path, upstream: str
) -> None:
    """APPEND_FORWARD keeps earlier elements, but the one the gateway appended decides."""
    spoof = {"x-forwarded-client-cert": f"URI={FRONTEND}"}
    args = ["--policies", str(policies), "--trusted-proxy-cidr", "127.0.0.1/32"]
    with (
        serving([*args, "--trusted-proxy-xfcc", "APPEND_FORWARD"]) as append_extauthz,
        running_envoy(
            workdir,
            append_extauthz.address,
            upstream,
            tls=pki.listener,
            xfcc=XfccMode.APPEND_FORWARD,
        ) as envoy,
    ):
        assert send(envoy, "/api/orders", context=pki.as_(pki.batch), headers=spoof).status == 403
        got = send(envoy, "/jobs/run", context=pki.as_(pki.batch), headers=spoof)
        assert got.status == 200
        assert got.upstream_headers["x-extauthz-principal"] == [pki.batch.uri]
