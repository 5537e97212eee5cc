"""Hostile and valid JWTs through the gRPC interface.

The tenant's only policy allows everything, so any token that is not refused with 401 would
be allowed: each hostile token must come back UNAUTHENTICATED, never OK.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format
from google.rpc import code_pb2

from tests.helpers import (
    Issuer,
    ServerProcess,
    check_request,
    policy_yaml,
    serving,
    tenant_yaml,
    wait_for,
)

ISSUER = Issuer(iss="https://issuer.test", kid="k1")
OTHER = Issuer(iss="https://issuer.test", kid="k1")  # same iss and kid, different key


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, object], payload: dict[str, object], signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return head + "." + b64(signature)


def claims(**extra: object) -> dict[str, object]:
    now = int(time.time())
    return {"iss": ISSUER.iss, "sub": "mallory", "aud": "api", "exp": now + 600, **extra}


def hs256_with_public_key() -> str:
    pem = ISSUER.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps(claims()).encode())
    sig = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def tampered() -> str:
    head, _, sig = ISSUER.token(aud="api").split(".")
    return f"{head}.{b64(json.dumps(claims(sub='admin')).encode())}.{sig}"


HOSTILE = {
    "alg-none": forged({"alg": "none", "typ": "JWT"}, claims()),
    "alg-none-with-kid": forged({"alg": "none", "kid": "k1"}, claims(), b"x"),
    "hs256-signed-with-public-key": hs256_with_public_key(),
    "expired": ISSUER.token(aud="api", exp_in=-3600),
    "not-yet-valid": ISSUER.token(aud="api", nbf=int(time.time()) + 3600),
    "wrong-issuer": Issuer(iss="https://evil.test").token(aud="api"),
    "wrong-audience": ISSUER.token(aud="other"),
    "unknown-kid": Issuer(iss=ISSUER.iss, kid="k9").token(aud="api"),
    "other-key-same-kid": OTHER.token(aud="api"),
    "tampered-payload": tampered(),
    "oversized": ISSUER.token(aud="api", pad="x" * 20_000),
    "garbage": "not.a.jwt",
    "empty-segments": "..",
    "not-base64": "%%%.%%%.%%%",
    "rs256-alg-for-an-ec-key": forged({"alg": "RS256", "kid": "k1"}, claims(), b"\x00" * 256),
}


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("jwt")
    extra = "    audiences: [api]"
    (root / "t.yaml").write_text(
        tenant_yaml("users", issuer=ISSUER, extra_rule=extra)
        + "---\n"
        + policy_yaml("allow-all", "users", "  rules: [{}]")
    )
    with serving(["--policies", str(root)]) as server:
        yield server


def call(server: ServerProcess, **headers: str) -> tuple[int, dict[str, object]]:
    response = server.check(check_request(host="users.test", headers=headers))
    return response.status.code, json_format.MessageToDict(response.dynamic_metadata)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_token_is_401(jwt_server: ServerProcess, name: str) -> None:
    """Every kind of bad token is refused with 401 before any policy is consulted."""
    code, meta = call(jwt_server, authorization=f"Bearer {HOSTILE[name]}")
    assert code == code_pb2.UNAUTHENTICATED, meta
    assert meta["reason"] == "jwt_invalid"


def test_two_different_tokens_are_ambiguous(jwt_server: ServerProcess) -> None:
    """A token in the header and another in the query string: refused, not guessed."""
    token = ISSUER.token(aud="api")
    response = jwt_server.check(
        check_request(
            host="users.test",
            path=f"/x?access_token={ISSUER.token(aud='api', sub='bob')}",
            headers={"authorization": f"Bearer {token}"},
        )
    )
    assert response.status.code == code_pb2.UNAUTHENTICATED
    assert json_format.MessageToDict(response.dynamic_metadata)["reason"] == "jwt_ambiguous"


def test_valid_token_and_no_token_are_allowed(jwt_server: ServerProcess) -> None:
    """The control: a good token is allowed with its principal; no token is allowed too."""
    code, meta = call(jwt_server, authorization=f"Bearer {ISSUER.token(aud='api')}")
    assert code == code_pb2.OK
    assert meta["request_principal"] == "https://issuer.test/alice"
    code, meta = call(jwt_server)
    assert code == code_pb2.OK
    assert "request_principal" not in meta


class _JwksHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_jwks_uri_is_fetched_in_the_background(tmp_path: Path) -> None:
    """A tenant with jwksUri on a real local HTTP server: keys arrive, tokens verify."""
    handler = type("H", (_JwksHandler,), {"body": ISSUER.jwks.encode()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json"
        tenant = tenant_yaml("users").replace(
            "  mtls:", f"  jwtRules:\n  - issuer: {ISSUER.iss}\n    jwksUri: {uri}\n  mtls:"
        )
        (tmp_path / "t.yaml").write_text(
            tenant
            + "---\n"
            + policy_yaml("p", "users", "  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]")
        )
        with serving(["--policies", str(tmp_path), "--jwks-allow-private"]) as server:
            token = ISSUER.token()
            wait_for(
                lambda: call(server, authorization=f"Bearer {token}")[0] == code_pb2.OK,
                15,
                what="jwks",
            )
            assert call(server)[0] == code_pb2.PERMISSION_DENIED
    finally:
        httpd.shutdown()
        httpd.server_close()
