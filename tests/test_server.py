"""The gRPC server end to end: a real `extauthz serve` process answering Check calls."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import json_format
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.helpers import REPO, ServerProcess, check_request

FRONTEND = "spiffe://cluster.local/ns/acme-web/sa/frontend"
EXAMPLES = sorted((REPO / "examples" / "requests").glob("*.json"))


def meta(response: external_auth_pb2.CheckResponse) -> dict[str, object]:
    return json_format.MessageToDict(response.dynamic_metadata)


def headers_of(response: external_auth_pb2.CheckResponse) -> dict[str, str]:
    return {h.header.key: h.header.value for h in response.ok_response.headers}


def test_allow_sets_identity_headers_and_strips_forgeries(example_server: ServerProcess) -> None:
    """An allowed call tells the upstream who called; a client's own copies are removed."""
    response = example_server.check(
        check_request(
            host="orders.acme.example.com",
            path="/api/orders?page=2",
            principal=FRONTEND,
            headers={"x-extauthz-request-principal": "forged", "x-user": "forged"},
        )
    )
    assert response.status.code == code_pb2.OK
    assert headers_of(response) == {"x-extauthz-tenant": "acme", "x-extauthz-principal": FRONTEND}
    removed = set(response.ok_response.headers_to_remove)
    assert {"x-extauthz-request-principal", "x-user"} <= removed
    assert meta(response)["policy"] == "acme/frontend-to-orders"
    assert meta(response)["decision"] == "allow"


def test_policy_deny_is_403_without_internals(example_server: ServerProcess) -> None:
    """A DENY match is PERMISSION_DENIED + HTTP 403; the body names no policy."""
    response = example_server.check(
        check_request(
            host="orders.acme.example.com",
            path="/api/orders",
            principal=FRONTEND,
            headers={"x-internal-override": "1"},
        )
    )
    assert response.status.code == code_pb2.PERMISSION_DENIED
    assert response.denied_response.status.code == 403
    assert "override" not in response.denied_response.body
    assert meta(response)["reason"] == "policy_denied"
    assert meta(response)["policy"] == "acme/deny-override-header"


def test_unknown_tenant_is_denied(example_server: ServerProcess) -> None:
    """A request no tenant claims is denied, with the reason in the metadata."""
    response = example_server.check(check_request(host="www.example.org"))
    assert response.status.code == code_pb2.PERMISSION_DENIED
    assert meta(response)["reason"] == "tenant_unknown"


def test_strict_tenant_without_peer_identity_is_denied(example_server: ServerProcess) -> None:
    """acme is STRICT: a call without an mTLS identity never reaches the policies."""
    response = example_server.check(check_request(host="acme.example.com", path="/api/orders"))
    assert response.denied_response.status.code == 403
    assert meta(response)["reason"] == "mtls_required"


def test_invalid_peer_identity_is_denied(example_server: ServerProcess) -> None:
    """A source.principal that is not a SPIFFE ID is refused, not treated as absent."""
    response = example_server.check(
        check_request(host="acme.example.com", principal="spiffe://Bad_TD/ns/a")
    )
    assert meta(response)["reason"] == "peer_invalid"
    assert response.status.code == code_pb2.PERMISSION_DENIED


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_server_agrees_with_offline_check(example_server: ServerProcess, example: Path) -> None:
    """Every example request gets the same decision over gRPC as from `extauthz check`."""
    request = json_format.Parse(example.read_text(), external_auth_pb2.CheckRequest())
    response = example_server.check(request)
    offline = subprocess.run(
        [
            sys.executable,
            "-m",
            "extauthz",
            "check",
            "--policies",
            str(REPO / "policies"),
            "--request",
            str(example),
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    expected = json.loads(offline.stdout)
    got = meta(response)
    assert (got["decision"], got["reason"], got["policy"]) == (
        expected["decision"],
        expected["reason"],
        expected["policy"],
    )
    assert offline.returncode == (0 if expected["decision"] == "allow" else 1)


def test_bad_token_is_401_with_www_authenticate(example_server: ServerProcess) -> None:
    """An expired token is UNAUTHENTICATED + 401 + www-authenticate, whatever the policies say."""
    example = REPO / "examples" / "requests" / "acme-expired-token.json"
    response = example_server.check(
        json_format.Parse(example.read_text(), external_auth_pb2.CheckRequest())
    )
    assert response.status.code == code_pb2.UNAUTHENTICATED
    assert response.denied_response.status.code == 401
    www = {h.header.key: h.header.value for h in response.denied_response.headers}
    assert 'error="invalid_token"' in www["www-authenticate"]
    assert meta(response)["reason"] == "jwt_invalid"


def test_valid_token_forwards_claims_and_drops_token(example_server: ServerProcess) -> None:
    """A verified user: request principal and x-user go up, the token header does not."""
    example = REPO / "examples" / "requests" / "acme-user-read-orders.json"
    response = example_server.check(
        json_format.Parse(example.read_text(), external_auth_pb2.CheckRequest())
    )
    assert response.status.code == code_pb2.OK
    headers = headers_of(response)
    assert headers["x-extauthz-request-principal"] == "https://issuer.acme.example.com/alice"
    assert headers["x-user"] == "alice"
    assert "authorization" in response.ok_response.headers_to_remove


def _malformed() -> list[tuple[str, external_auth_pb2.CheckRequest]]:
    empty = external_auth_pb2.CheckRequest()
    no_http = external_auth_pb2.CheckRequest()
    no_http.attributes.source.principal = FRONTEND
    no_method = check_request(method="", host="acme.example.com")
    del no_method.attributes.request.http.headers[":method"]
    many = check_request(
        host="orders.acme.example.com",
        principal=FRONTEND,
        headers={f"x-h{i}": "v" for i in range(600)},
    )
    huge = check_request(
        host="orders.acme.example.com", principal=FRONTEND, headers={"x-big": "a" * 300_000}
    )
    raw = check_request(host="orders.acme.example.com", principal=FRONTEND)
    http = raw.attributes.request.http
    http.ClearField("headers")
    http.header_map.headers.add(key=":authority", raw_value=b"orders.acme.example.com")
    http.header_map.headers.add(key="x-bin", raw_value=b"\xff\xfe\xfd")
    return [
        ("empty", empty),
        ("no-http", no_http),
        ("no-method", no_method),
        ("600-headers", many),
        ("300k-header", huge),
        ("non-utf8-header", raw),
    ]


@pytest.mark.parametrize(("name", "request_"), _malformed(), ids=[n for n, _ in _malformed()])
def test_malformed_requests_are_denied(
    example_server: ServerProcess, name: str, request_: external_auth_pb2.CheckRequest
) -> None:
    """Whatever is missing or out of bounds, the answer is a deny, and the server lives on."""
    response = example_server.check(request_)
    assert response.status.code == code_pb2.PERMISSION_DENIED, name
    assert meta(response)["reason"] == "malformed_request"
    ok = example_server.check(
        check_request(host="orders.acme.example.com", path="/api/orders", principal=FRONTEND)
    )
    assert ok.status.code == code_pb2.OK


def test_header_map_is_decoded_like_headers(example_server: ServerProcess) -> None:
    """Envoy's newer header_map (raw_value, repeated keys) decides like the plain map."""
    req = check_request(host="orders.acme.example.com", path="/api/orders", principal=FRONTEND)
    http = req.attributes.request.http
    http.ClearField("headers")
    for key, value in [
        (":authority", b"orders.acme.example.com"),
        (":path", b"/api/orders"),
        ("x-internal-override", b"a"),
        ("x-internal-override", b"b"),
    ]:
        http.header_map.headers.add(key=key, raw_value=value)
    response = example_server.check(req)
    assert meta(response)["reason"] == "policy_denied"


def test_undecodable_bytes_are_denied_and_server_survives(example_server: ServerProcess) -> None:
    """Bytes that are no CheckRequest get a malformed_request deny, and nothing else changes."""
    call = example_server.channel.unary_unary(
        "/envoy.service.auth.v3.Authorization/Check",
        request_serializer=lambda b: b,
        response_deserializer=external_auth_pb2.CheckResponse.FromString,
    )
    reply = call(b"\xff\xff\xff\xff\x0f garbage", timeout=5)
    assert reply.denied_response.status.code == 403
    assert meta(reply)["reason"] == "malformed_request"
    ok = example_server.check(
        check_request(host="orders.acme.example.com", path="/api/orders", principal=FRONTEND)
    )
    assert ok.status.code == code_pb2.OK


def test_every_response_carries_dynamic_metadata(example_server: ServerProcess) -> None:
    """Allow or deny, the access log gets tenant, decision, reason and a decision id."""
    for req in (
        check_request(host="www.example.org", request_id="r-1"),
        check_request(
            host="orders.acme.example.com", path="/api/orders", principal=FRONTEND, request_id="r-2"
        ),
    ):
        got = meta(example_server.check(req))
        assert {"tenant", "decision", "reason", "policy", "rule", "decision_id"} <= got.keys()
        assert got["decision_id"] == req.attributes.request.http.id


def test_health_and_reflection(example_server: ServerProcess) -> None:
    """Health says SERVING for the server and for Authorization; reflection lists them."""
    for service in ("", "envoy.service.auth.v3.Authorization"):
        reply = example_server.health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(example_server.channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"envoy.service.auth.v3.Authorization", "grpc.health.v1.Health"} <= names
