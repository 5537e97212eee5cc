"""response: an Outcome becomes Envoy's CheckResponse, and a deny tells the client nothing."""

from __future__ import annotations

from google.protobuf import json_format
from google.rpc import code_pb2

from extauthz.errors import Reason
from extauthz.outcome import Outcome, deny
from extauthz.response import WWW_AUTHENTICATE, build_response, metadata_of

ALLOW = Outcome(
    True,
    Reason.ALLOWED,
    200,
    tenant="acme",
    policy="reads",
    rule=0,
    principal="spiffe://td/ns/a/sa/b",
    headers_to_add=(("x-extauthz-tenant", "acme"), ("x-user", "alice")),
    headers_to_remove=("x-extauthz-principal", "authorization"),
    version="v3",
)


def test_allow_sets_and_removes_headers() -> None:
    """An allow is status OK with the upstream headers set (overwriting) and removed."""
    response = build_response(ALLOW, "d-1")
    assert response.status.code == code_pb2.OK
    ok = response.ok_response
    assert [(h.header.key, h.header.value) for h in ok.headers] == list(ALLOW.headers_to_add)
    assert all(h.append_action == h.OVERWRITE_IF_EXISTS_OR_ADD for h in ok.headers)
    assert list(ok.headers_to_remove) == list(ALLOW.headers_to_remove)


def test_policy_deny_is_403_with_a_plain_body() -> None:
    """A policy deny is PERMISSION_DENIED, HTTP 403, a body that names no policy."""
    outcome = deny(Reason.POLICY_DENIED, "deny-admin", tenant="acme", policy="deny-admin")
    response = build_response(outcome, "d-2")
    assert response.status.code == code_pb2.PERMISSION_DENIED
    assert response.status.message == "policy_denied"
    denied = response.denied_response
    assert denied.status.code == 403
    assert denied.body == "access denied\n"
    assert "deny-admin" not in denied.body
    assert not response.HasField("ok_response")


def test_token_deny_is_401_with_www_authenticate() -> None:
    """A bad token is UNAUTHENTICATED, HTTP 401 and a www-authenticate challenge."""
    response = build_response(deny(Reason.JWT_INVALID, "expired", status=401), "d-3")
    assert response.status.code == code_pb2.UNAUTHENTICATED
    headers = {h.header.key: h.header.value for h in response.denied_response.headers}
    assert headers["www-authenticate"] == WWW_AUTHENTICATE
    assert response.denied_response.status.code == 401


def test_unknown_status_denies_with_403() -> None:
    """A deny with a status we have no template for is still a 403 deny."""
    response = build_response(deny(Reason.INTERNAL, "boom", status=500), "d-4")
    assert response.status.code == code_pb2.PERMISSION_DENIED
    assert response.denied_response.status.code == 403


def test_deny_detail_never_reaches_the_client() -> None:
    """The detail of a deny is in no part of the response."""
    outcome = deny(Reason.JWT_INVALID, "signature of eyJsecret", status=401)
    assert "eyJsecret" not in json_format.MessageToJson(build_response(outcome, "d-5"))


def test_dynamic_metadata_is_the_metadata() -> None:
    """Every response carries metadata_of as dynamic_metadata, typed as in the record."""
    response = build_response(ALLOW, "d-6")
    meta = json_format.MessageToDict(response.dynamic_metadata)
    expected = metadata_of(ALLOW, "d-6")
    assert meta == {k: float(v) if isinstance(v, int) else v for k, v in expected.items()}
    assert meta["decision"] == "allow"
    assert meta["policy_version"] == "v3"


def test_denies_do_not_share_state() -> None:
    """Two denies built one after another do not leak fields into each other."""
    first = build_response(deny(Reason.POLICY_DENIED, "a", tenant="one"), "d-7")
    second = build_response(deny(Reason.NO_ALLOW_MATCH, "b", tenant="two"), "d-8")
    assert first.status.message == "policy_denied"
    assert second.status.message == "no_allow_match"
    assert len(second.denied_response.headers) == len(first.denied_response.headers)
