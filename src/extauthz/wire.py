"""The serialized CheckRequest read as it arrives, for the shape Envoy sends.

``read(data)`` walks the protobuf wire format of a CheckRequest once and returns the fields a
decision reads (``Fields``), without building protobuf objects. It accepts only a strict
subset of the encodings protobuf accepts, the one a proxy produces: every field known to
the schema and sent with its own wire type, each singular field at most once, map keys
unique and text that is valid UTF-8, the socket form of an address, and no header map or
metadata. Anything else raises ``Irregular``, and ``decode.decode_bytes`` hands the same
bytes to protobuf's parser and ``decode.decode``: that path, not this one, decides what an
unusual request means (the merging of repeated messages, the last of a repeated scalar, a
oneof's last member, unknown fields) and words its errors.

So this reader never has to be right about a case it does not take: it only has to give,
for what it takes, what protobuf's parser gives. ``tests/test_wire.py`` holds the two equal
over generated and mutated requests, and ``tests/fuzz/fuzz_check.py`` does so on every input.

Positions are ``i64``: machine integers in the compiled build (a sixth off a read), plain
ints in Python. Varint values stay ``int``, so a 64-bit value never wraps.
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import i64

__all__ = ["Fields", "Irregular", "read"]

_LEN: Final = 2  # wire type of length-delimited fields
_VARINT: Final = 0
_MAX_VARINT: Final = (1 << 64) - 1
_MAX_UINT32: Final = (1 << 32) - 1


class Irregular(Exception):
    """The bytes are outside the subset ``read`` takes (not necessarily invalid)."""


class Fields:
    """What ``read`` found; absent values are empty, as protobuf reads them."""

    def __init__(self) -> None:
        self.has_http = False
        self.method = ""
        self.host = ""
        self.path = ""
        self.scheme = ""
        self.protocol = ""
        self.request_id = ""
        self.headers: dict[str, str] = {}
        self.source_address = ""
        self.source_port = 0
        self.source_principal = ""
        self.destination_address = ""
        self.destination_port = 0
        self.destination_principal = ""
        self.sni = ""
        self.context_extensions: dict[str, str] = {}


def read(data: bytes) -> Fields:
    """The fields of the serialized CheckRequest ``data``; ``Irregular`` for anything outside
    the subset (see the module's docstring), including a request without attributes.http."""
    fields = Fields()
    end: i64 = len(data)
    pos: i64 = 0
    seen = False
    while pos < end:
        tag: i64 = data[pos]
        pos += 1
        if tag != 0x0A or seen:  # 1: attributes, once
            raise Irregular()
        seen = True
        size, pos = _length(data, pos, end)
        _attributes(data, pos, pos + size, fields)
        pos += size
    if not fields.has_http:
        raise Irregular()
    return fields


def _attributes(data: bytes, pos: i64, end: i64, fields: Fields) -> None:
    seen: i64 = 0
    while pos < end:
        number, pos = _field(data, pos, end, _LEN)
        size, pos = _length(data, pos, end)
        stop = pos + size
        if number == 10:  # context_extensions
            key, value = _entry(data, pos, stop)
            if key in fields.context_extensions:
                raise Irregular()
            fields.context_extensions[key] = value
        else:
            seen = _once(seen, number)
            if number == 1:
                _peer(data, pos, stop, fields, True)
            elif number == 2:
                _peer(data, pos, stop, fields, False)
            elif number == 4:
                _request(data, pos, stop, fields)
            elif number == 12:  # tls_session: 1 sni
                sni = ""
                inner: i64 = 0
                while pos < stop:
                    number, pos = _field(data, pos, stop, _LEN)
                    if number != 1:
                        raise Irregular()
                    inner = _once(inner, number)
                    sni, pos = _string(data, pos, stop)
                fields.sni = sni
            elif (number == 11 or number == 13) and size == 0:  # metadata contexts, empty
                pass
            else:
                raise Irregular()
        pos = stop


def _peer(data: bytes, pos: i64, end: i64, fields: Fields, source: bool) -> None:
    address = ""
    port = 0
    principal = ""
    seen: i64 = 0
    while pos < end:
        number, pos = _field(data, pos, end, _LEN)
        if number == 3:  # labels: read (so that they are valid), not kept
            size, pos = _length(data, pos, end)
            _entry(data, pos, pos + size)
            pos += size
            continue
        seen = _once(seen, number)
        if number == 1:
            size, pos = _length(data, pos, end)
            address, port = _address(data, pos, pos + size)
            pos += size
        elif number == 4:
            principal, pos = _string(data, pos, end)
        elif number == 2 or number == 5:  # service, certificate
            _, pos = _string(data, pos, end)
        else:
            raise Irregular()
    if source:
        fields.source_address = address
        fields.source_port = port
        fields.source_principal = principal
    else:
        fields.destination_address = address
        fields.destination_port = port
        fields.destination_principal = principal


def _address(data: bytes, pos: i64, end: i64) -> tuple[str, int]:
    """envoy.config.core.v3.Address holding a socket_address: (address, port_value)."""
    if pos == end:
        return "", 0
    number, pos = _field(data, pos, end, _LEN)
    size, pos = _length(data, pos, end)
    if number != 1 or pos + size != end:  # only socket_address, once
        raise Irregular()
    address = ""
    port = 0
    seen: i64 = 0
    while pos < end:
        tag: i64 = data[pos]
        number = tag >> 3
        seen = _once(seen, number)
        if number == 1 or number == 3 or number == 6:  # protocol, port_value, ipv4_compat
            number, pos = _field(data, pos, end, _VARINT)
            value, pos = _varint(data, pos, end)
            if number == 3:
                if value > _MAX_UINT32:
                    raise Irregular()
                port = value
        elif number == 2 or number == 5 or number == 7:
            number, pos = _field(data, pos, end, _LEN)
            text, pos = _string(data, pos, end)
            if number == 2:
                address = text
        else:  # named_port (the other member of port_value's oneof) and anything unknown
            raise Irregular()
    return address, port


def _request(data: bytes, pos: i64, end: i64, fields: Fields) -> None:
    seen: i64 = 0
    while pos < end:
        number, pos = _field(data, pos, end, _LEN)
        seen = _once(seen, number)
        size, pos = _length(data, pos, end)
        stop = pos + size
        if number == 2:
            _http(data, pos, stop, fields)
        elif number == 1:  # time: google.protobuf.Timestamp, 1 seconds, 2 nanos
            inner = 0
            while pos < stop:
                number, pos = _field(data, pos, stop, _VARINT)
                if number != 1 and number != 2:
                    raise Irregular()
                inner = _once(inner, number)
                _, pos = _varint(data, pos, stop)
        else:
            raise Irregular()
        pos = stop


def _http(data: bytes, pos: i64, end: i64, fields: Fields) -> None:
    fields.has_http = True
    headers = fields.headers
    seen: i64 = 0
    while pos < end:
        tag: i64 = data[pos]
        number = tag >> 3
        if number == 3:
            number, pos = _field(data, pos, end, _LEN)
            size, pos = _length(data, pos, end)
            key, value = _entry(data, pos, pos + size)
            if key in headers:
                raise Irregular()
            headers[key] = value
            pos += size
            continue
        seen = _once(seen, number)
        if number == 9:  # size
            number, pos = _field(data, pos, end, _VARINT)
            _, pos = _varint(data, pos, end)
        elif number == 12:  # raw_body: bytes, any
            number, pos = _field(data, pos, end, _LEN)
            size, pos = _length(data, pos, end)
            pos += size
        elif number == 0 or number > 11:  # 13 header_map, and anything unknown
            raise Irregular()
        else:
            number, pos = _field(data, pos, end, _LEN)
            text, pos = _string(data, pos, end)
            if number == 1:
                fields.request_id = text
            elif number == 2:
                fields.method = text
            elif number == 4:
                fields.path = text
            elif number == 5:
                fields.host = text
            elif number == 6:
                fields.scheme = text
            elif number == 10:
                fields.protocol = text
            # 7 query, 8 fragment, 11 body: read (so that they are valid UTF-8), not kept


def _entry(data: bytes, pos: i64, end: i64) -> tuple[str, str]:
    """A map<string, string> entry: (key, value), each at most once, absent as ""."""
    key = value = ""
    seen: i64 = 0
    while pos < end:
        number, pos = _field(data, pos, end, _LEN)
        seen = _once(seen, number)
        if number == 1:
            key, pos = _string(data, pos, end)
        elif number == 2:
            value, pos = _string(data, pos, end)
        else:
            raise Irregular()
    return key, value


def _once(seen: i64, number: i64) -> i64:
    """``seen`` with ``number`` added; Irregular if it was there (a repeated singular field)."""
    bit: i64 = 1 << number
    if seen & bit:
        raise Irregular()
    return seen | bit


def _field(data: bytes, pos: i64, end: i64, wire_type: i64) -> tuple[i64, i64]:
    """The field number of the one-byte tag at ``pos`` (every field read here has a number
    below 16), which must have ``wire_type``; and the position after it."""
    if pos >= end:
        raise Irregular()
    tag: i64 = data[pos]
    if tag >= 0x80 or tag & 7 != wire_type:
        raise Irregular()
    return tag >> 3, pos + 1


def _varint(data: bytes, pos: i64, end: i64) -> tuple[int, i64]:
    """A varint of at most 10 bytes and 64 bits, and the position after it."""
    value = 0
    shift = 0
    while pos < end and shift < 70:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value > _MAX_VARINT:
                raise Irregular()
            return value, pos
        shift += 7
    raise Irregular()


def _length(data: bytes, pos: i64, end: i64) -> tuple[i64, i64]:
    """The length prefix at ``pos`` (at most 5 bytes), which must fit before ``end``."""
    if pos < end and data[pos] < 0x80:  # nearly every length
        size = data[pos]
        pos += 1
    else:
        size, pos = _varint(data, pos, min(end, pos + 5))
    if size > end - pos:
        raise Irregular()
    return size, pos


def _string(data: bytes, pos: i64, end: i64) -> tuple[str, i64]:
    """The length-delimited UTF-8 text at ``pos`` and the position after it."""
    size, pos = _length(data, pos, end)
    stop = pos + size
    try:
        return data[pos:stop].decode("utf-8"), stop
    except UnicodeDecodeError:
        raise Irregular() from None
