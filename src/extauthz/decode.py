"""CheckRequest -> RequestView: read the protobuf once, into a small immutable object.

Everything after this module is plain Python. Anything the Check can't be decided without
(no HTTP attributes, no method, oversized or undecodable headers) is a MalformedRequest,
which the servicer turns into a deny.

So is a value no conforming proxy forwards, which must never be matched against a policy:
a control character (U+0000-U+001F, U+007F) in the method, host or path, or in a header
name or value (horizontal tab excepted in values, where HTTP allows it between words),
``%00`` in the path, and a header value that is not UTF-8. Sizes are bounded too: the
path, the host, each header value, all headers together, and the number of
``x-forwarded-for`` entries (see the ``MAX_*`` constants).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.protobuf.message import DecodeError

from extauthz import compiled, wire
from extauthz.model import RequestView

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_VALUE_BYTES",
    "MAX_HOST_BYTES",
    "MAX_PATH_BYTES",
    "MAX_XFF_ENTRIES",
    "NOT_PARSED",
    "MalformedRequest",
    "decode",
    "decode_bytes",
    "decode_wire",
]

MAX_HEADERS: Final = 512
MAX_HEADER_BYTES: Final = 256 * 1024
MAX_HEADER_VALUE_BYTES: Final = 64 * 1024  # one header, repeated values joined
MAX_PATH_BYTES: Final = 16 * 1024
MAX_HOST_BYTES: Final = 1024
MAX_XFF_ENTRIES: Final = 64
# Sizes are counted in characters of the decoded text (a character is at least one byte).
# Control characters, as bytes for bytes.translate (one C pass, several times faster than a
# regular expression search on the few KiB of a request's headers).
# Method, host, path and header names: these and HTAB; header values: these.
_CTL_VALUE: Final = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])
NOT_PARSED: Final = "not a CheckRequest: protobuf does not parse it"
_NO_EXTENSIONS: Final[Mapping[str, str]] = MappingProxyType({})  # nearly every Check's


def _has_control(text: str, controls: bytes) -> bool:
    data = text.encode("utf-8", "surrogatepass")
    return len(data.translate(None, controls)) != len(data)


class MalformedRequest(ValueError):
    """The CheckRequest lacks what a decision needs, or is out of bounds."""


def decode(request: external_auth_pb2.CheckRequest) -> RequestView:
    if not request.HasField("attributes"):
        raise MalformedRequest("no attributes")
    attrs = request.attributes
    http_request = attrs.request  # each protobuf attribute read costs: read once
    if not http_request.HasField("http"):
        raise MalformedRequest("no attributes.request.http")
    http = http_request.http
    headers, names, values = _headers(http)
    extensions = attrs.context_extensions
    source = attrs.source
    destination = attrs.destination
    source_socket = source.address.socket_address
    destination_socket = destination.address.socket_address
    return _view(
        http.method,
        http.host,
        http.path,
        http.scheme,
        http.protocol,
        http.id,
        headers,
        names,
        values,
        source_socket.address,
        source_socket.port_value,
        source.principal,
        destination_socket.address,
        destination_socket.port_value,
        destination.principal,
        attrs.tls_session.sni,
        dict(extensions) if extensions else _NO_EXTENSIONS,
    )


# The compiled build reads the request's bytes itself (``wire``): a third cheaper than
# protobuf's parse and attribute reads. In pure Python a loop over the bytes costs about four
# times those, so the pure build parses with protobuf (bench/accounting.py --part inprocess,
# the decode rows).
_READ_WIRE: Final = compiled.build() == compiled.COMPILED


def decode_bytes(data: bytes) -> RequestView:
    """``decode`` of the serialized CheckRequest ``data``; a MalformedRequest also for bytes
    that are not one."""
    return decode_wire(data) if _READ_WIRE else _parse_and_decode(data)


def decode_wire(data: bytes) -> RequestView:
    """``decode_bytes`` by way of ``wire.read``: the shape a proxy sends is read from the
    bytes, any other is parsed by protobuf and given to ``decode``."""
    try:
        fields = wire.read(data)
    except wire.Irregular:
        return _parse_and_decode(data)
    headers = fields.headers
    names = "".join(headers)
    values = "".join(headers.values())
    size = len(names) + len(values)
    if len(headers) > MAX_HEADERS or size > MAX_HEADER_BYTES or names.lower() != names:
        return _parse_and_decode(data)  # words the error, or lowers the names as decode does
    extensions = fields.context_extensions
    return _view(
        fields.method,
        fields.host,
        fields.path,
        fields.scheme,
        fields.protocol,
        fields.request_id,
        headers,
        names,
        values,
        fields.source_address,
        fields.source_port,
        fields.source_principal,
        fields.destination_address,
        fields.destination_port,
        fields.destination_principal,
        fields.sni,
        extensions if extensions else _NO_EXTENSIONS,
    )


def _parse_and_decode(data: bytes) -> RequestView:
    try:
        request = external_auth_pb2.CheckRequest.FromString(data)
    except DecodeError:
        raise MalformedRequest(NOT_PARSED) from None
    return decode(request)


def _view(
    method: str,
    host: str,
    path: str,
    scheme: str,
    protocol: str,
    request_id: str,
    headers: dict[str, str],
    names: str,
    values: str,
    source_address: str,
    source_port: int,
    source_principal: str,
    destination_address: str,
    destination_port: int,
    destination_principal: str,
    sni: str,
    extensions: Mapping[str, str],
) -> RequestView:
    """The checked RequestView of the request's fields (``names`` and ``values``: the
    header names and values, each joined without separator)."""
    method = method or headers.get(":method", "")
    host = host or headers.get(":authority", "")
    path = path or headers.get(":path", "")
    # Control characters: one pass over the line and the headers; only when it finds one,
    # the header text is looked at alone (a header's fault is reported before the line's).
    line = method + host + path
    controls = "\t" in line or "\t" in names or _has_control(line + names + values, _CTL_VALUE)
    if controls and ("\t" in names or _has_control(names + values, _CTL_VALUE)):
        raise MalformedRequest("control character in a header")
    _check_headers(headers, values)
    if not method:
        raise MalformedRequest("no HTTP method")
    _check_line(method, host, path, controls)
    # Positional: cheaper than keywords, on every Check.
    return RequestView(
        method,
        host,
        path,
        scheme,
        protocol,
        request_id,
        headers,
        source_address,
        source_port,
        source_principal,
        destination_address,
        destination_port,
        destination_principal,
        sni,
        extensions,
    )


def _check_line(method: str, host: str, path: str, controls: bool) -> None:
    """Method, host and path: bounded, no control character (``controls``: one of them
    holds one, the headers have none), no NUL spelled ``%00``."""
    if len(path) > MAX_PATH_BYTES:
        raise MalformedRequest(f"path longer than {MAX_PATH_BYTES} bytes")
    if len(host) > MAX_HOST_BYTES:
        raise MalformedRequest(f"host longer than {MAX_HOST_BYTES} bytes")
    if controls:
        raise MalformedRequest("control character in method, host or path")
    if "%00" in path:
        raise MalformedRequest("%00 in path")


def _check_headers(headers: dict[str, str], values: str) -> None:
    """Each value bounded, and x-forwarded-for with at most MAX_XFF_ENTRIES entries (control
    characters are checked by ``decode``). ``values`` is the values of ``headers`` joined
    without separator."""
    if len(values) > MAX_HEADER_VALUE_BYTES:  # only then can one value be too long
        for name, value in headers.items():
            if len(value) > MAX_HEADER_VALUE_BYTES:
                raise MalformedRequest(
                    f"header {name!r} longer than {MAX_HEADER_VALUE_BYTES} bytes"
                )
    xff = headers.get("x-forwarded-for")
    if xff is not None and xff.count(",") >= MAX_XFF_ENTRIES:
        raise MalformedRequest(f"x-forwarded-for has more than {MAX_XFF_ENTRIES} entries")


def _headers(
    http: attribute_context_pb2.AttributeContext.HttpRequest,
) -> tuple[dict[str, str], str, str]:
    """Lower-case names; repeated values joined with ',' (as Envoy's RBAC sees them). With
    the names and the values, each joined without separator (for the checks)."""
    out: dict[str, str] = {}
    size = 0
    mapped = http.headers
    if mapped:
        if len(mapped) > MAX_HEADERS:
            raise MalformedRequest(f"more than {MAX_HEADERS} headers")
        # Envoy sends lower-case names: copy the map (one lookup per name: cheaper than
        # dict(mapped) on protobuf's map), and only when a name is not lower case (lower()
        # changes no character of the joined names) lower them one by one.
        out = {name: mapped[name] for name in mapped}
        names = "".join(out)
        values = "".join(out.values())
        size = len(names) + len(values)
        if names.lower() != names:
            out = {name.lower(): value for name, value in out.items()}
            names = "".join(out)
            values = "".join(out.values())
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
        names = "".join(out)
        values = "".join(out.values())
    else:
        names = values = ""
    if size > MAX_HEADER_BYTES:
        raise MalformedRequest(f"headers larger than {MAX_HEADER_BYTES} bytes")
    return out, names, values
