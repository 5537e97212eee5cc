"""decode: a CheckRequest read once into a RequestView; what can't be decided on is refused."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2

from extauthz.decode import MAX_HEADER_BYTES, MAX_HEADERS, MalformedRequest, decode
from tests.helpers import check_request


def test_fields_of_the_request() -> None:
    """Method, host, path, id, addresses, principals and SNI come through unchanged."""
    request = check_request(
        method="POST",
        host="api.test",
        path="/a/b?c=1",
        principal="spiffe://td/ns/a/sa/b",
        destination_principal="spiffe://td/ns/shop/sa/api",
        sni="api.test",
        request_id="r-1",
    )
    view = decode(request)
    assert (view.method, view.host, view.path, view.request_id) == (
        "POST", "api.test", "/a/b?c=1", "r-1",
    )  # fmt: skip
    assert view.source_principal == "spiffe://td/ns/a/sa/b"
    assert view.destination_principal == "spiffe://td/ns/shop/sa/api"
    assert (view.source_address, view.source_port) == ("10.0.0.1", 40000)
    assert (view.destination_address, view.destination_port) == ("10.0.0.2", 8080)
    assert view.sni == "api.test"


def test_header_names_are_lower_case() -> None:
    """Header names are lower-cased, whatever case they arrive in."""
    request = check_request(headers={"X-Tenant": "acme"})
    request.attributes.request.http.headers["X-Mixed"] = "v"
    view = decode(request)
    assert view.headers["x-tenant"] == "acme"
    assert view.headers["x-mixed"] == "v"
    assert all(name == name.lower() for name in view.headers)


def test_header_map_repeats_are_joined() -> None:
    """Repeated header_map entries are joined with ',' (as Envoy's RBAC sees them)."""
    request = check_request()
    http = request.attributes.request.http
    http.ClearField("headers")
    entries = http.header_map.headers
    entries.add(key=":method", value="GET")
    entries.add(key="X-A", raw_value=b"1")
    entries.add(key="x-a", value="2")
    assert decode(request).headers["x-a"] == "1,2"


def test_method_and_host_from_pseudo_headers() -> None:
    """Without http.method/host/path, the pseudo-headers stand in."""
    request = check_request(method="PUT", host="h.test", path="/p")
    http = request.attributes.request.http
    http.ClearField("method")
    http.ClearField("host")
    http.ClearField("path")
    view = decode(request)
    assert (view.method, view.host, view.path) == ("PUT", "h.test", "/p")


def test_no_attributes_is_malformed() -> None:
    """A CheckRequest without attributes can't be decided."""
    with pytest.raises(MalformedRequest, match="no attributes"):
        decode(external_auth_pb2.CheckRequest())


def test_no_http_is_malformed() -> None:
    """A CheckRequest without HTTP attributes can't be decided."""
    request = external_auth_pb2.CheckRequest()
    request.attributes.source.principal = "spiffe://td/ns/a/sa/b"
    with pytest.raises(MalformedRequest, match=r"attributes\.request\.http"):
        decode(request)


def test_no_method_is_malformed() -> None:
    """A request without a method can't be matched against methods: refused."""
    request = check_request()
    http = request.attributes.request.http
    http.ClearField("method")
    del http.headers[":method"]
    with pytest.raises(MalformedRequest, match="no HTTP method"):
        decode(request)


def test_too_many_headers_is_malformed() -> None:
    """More than MAX_HEADERS headers is refused, in either encoding."""
    request = check_request(headers={f"x-{n}": "v" for n in range(MAX_HEADERS)})
    with pytest.raises(MalformedRequest, match="headers"):
        decode(request)


def test_oversized_headers_are_malformed() -> None:
    """Headers larger than MAX_HEADER_BYTES in all are refused."""
    request = check_request(headers={"x-big": "v" * MAX_HEADER_BYTES})
    with pytest.raises(MalformedRequest, match="larger than"):
        decode(request)


def test_raw_value_not_utf8_is_malformed() -> None:
    """A header_map raw value that is not UTF-8 is refused, not guessed at."""
    request = check_request()
    http = request.attributes.request.http
    http.ClearField("headers")
    http.header_map.headers.append(base_pb2.HeaderValue(key="x-bad", raw_value=b"\xff\xfe"))
    http.header_map.headers.add(key=":method", value="GET")
    with pytest.raises(MalformedRequest, match="not UTF-8"):
        decode(request)
