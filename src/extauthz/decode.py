"""CheckRequest -> RequestView: read the protobuf once, into a small immutable object.

Everything after this module is plain Python. Anything the Check can't be decided without
(no HTTP attributes, no method, oversized or undecodable headers) is a MalformedRequest,
which the servicer turns into a deny.
"""

from __future__ import annotations

from typing import Final

from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

from extauthz.model import RequestView

__all__ = ["MAX_HEADERS", "MAX_HEADER_BYTES", "MalformedRequest", "decode"]

MAX_HEADERS: Final = 512
MAX_HEADER_BYTES: Final = 256 * 1024


class MalformedRequest(ValueError):
    """The CheckRequest lacks what a decision needs, or is out of bounds."""


def decode(request: external_auth_pb2.CheckRequest) -> RequestView:
    if not request.HasField("attributes"):
        raise MalformedRequest("no attributes")
    attrs = request.attributes
    if not attrs.request.HasField("http"):
        raise MalformedRequest("no attributes.request.http")
    http = attrs.request.http
    headers = _headers(http)
    method = http.method or headers.get(":method", "")
    if not method:
        raise MalformedRequest("no HTTP method")
    source = attrs.source
    destination = attrs.destination
    source_socket = source.address.socket_address
    destination_socket = destination.address.socket_address
    return RequestView(
        method=method,
        host=http.host or headers.get(":authority", ""),
        path=http.path or headers.get(":path", ""),
        scheme=http.scheme,
        protocol=http.protocol,
        request_id=http.id,
        headers=headers,
        source_address=source_socket.address,
        source_port=source_socket.port_value,
        source_principal=source.principal,
        destination_address=destination_socket.address,
        destination_port=destination_socket.port_value,
        destination_principal=destination.principal,
        sni=attrs.tls_session.sni,
        context_extensions=dict(attrs.context_extensions),
    )


def _headers(http: attribute_context_pb2.AttributeContext.HttpRequest) -> dict[str, str]:
    """Lower-case names; repeated values joined with ',' (as Envoy's RBAC sees them)."""
    out: dict[str, str] = {}
    size = 0
    if http.headers:
        if len(http.headers) > MAX_HEADERS:
            raise MalformedRequest(f"more than {MAX_HEADERS} headers")
        # Envoy sends lower-case names: copy the map in one go, and only when a name is not
        # lower case (lower() changes no character of the joined names) lower them one by one.
        out = dict(http.headers)
        names = "".join(out)
        size = len(names) + sum(map(len, out.values()))
        if names.lower() != names:
            out = {name.lower(): value for name, value in http.headers.items()}
    elif http.HasField("header_map"):
        entries = http.header_map.headers
        if len(entries) > MAX_HEADERS:
            raise MalformedRequest(f"more than {MAX_HEADERS} headers")
        for entry in entries:
            if entry.raw_value:
                try:
                    value = entry.raw_value.decode("utf-8")
                except UnicodeDecodeError:
                    raise MalformedRequest(f"header {entry.key!r} is not UTF-8") from None
            else:
                value = entry.value
            size += len(entry.key) + len(value)
            name = entry.key.lower()
            out[name] = f"{out[name]},{value}" if name in out else value
    if size > MAX_HEADER_BYTES:
        raise MalformedRequest(f"headers larger than {MAX_HEADER_BYTES} bytes")
    return out
