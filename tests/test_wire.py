"""wire: the serialized CheckRequest read directly gives what protobuf's parser and decode give.

``decode_wire`` reads the shape a proxy sends from the bytes and hands every other shape to
protobuf. Held here: every request protobuf serializes is read from the bytes (so the fast
path is the one Envoy's requests take, and what real Envoy sends is shown to be read too);
for any bytes at all, valid or not, the outcome is the reference's (the same view, or the
same refusal); and each irregular encoding the reader leaves to protobuf is left to it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extauthz import wire
from extauthz.decode import MAX_HEADERS, NOT_PARSED, MalformedRequest, decode, decode_wire
from extauthz.model import RequestView
from tests.helpers import check_request, envoy_request

Request = external_auth_pb2.CheckRequest


def decoded(read: Callable[[], RequestView]) -> RequestView | str:
    try:
        return read()
    except MalformedRequest as exc:
        return str(exc)


def reference(data: bytes) -> RequestView | str:
    """What protobuf's parser and decode make of ``data``: a view or a refusal's reason."""
    try:
        request = Request.FromString(data)
    except DecodeError:
        return NOT_PARSED
    return decoded(lambda: decode(request))


def read_directly(data: bytes) -> bool:
    try:
        wire.read(data)
    except wire.Irregular:
        return False
    return True


def assert_same(data: bytes) -> RequestView | str:
    expected = reference(data)
    assert decoded(lambda: decode_wire(data)) == expected, data
    return expected


# ---------------------------------------------------------------------------------------------
# what protobuf serializes is read from the bytes


def test_envoy_shaped_request_is_read_from_the_bytes() -> None:
    request = envoy_request(
        principal="spiffe://td/ns/a/sa/b",
        destination_principal="spiffe://td/ns/shop/sa/api",
        sni="api.test",
        request_id="r-1",
        body="hello",
        headers={"x-forwarded-for": "10.1.1.1, 10.2.2.2", "authorization": "Bearer t"},
        context_extensions={"tenant": "acme", "route": "r1"},
    )
    data = request.SerializeToString()
    assert read_directly(data)
    view = decode_wire(data)
    assert view == decode(request)
    assert (view.method, view.host, view.path, view.request_id) == (
        "GET", "acme.example.com", "/", "r-1",
    )  # fmt: skip
    assert (view.source_principal, view.destination_principal, view.sni) == (
        "spiffe://td/ns/a/sa/b", "spiffe://td/ns/shop/sa/api", "api.test",
    )  # fmt: skip
    assert (view.source_address, view.source_port) == ("10.0.0.1", 40000)
    assert (view.destination_address, view.destination_port) == ("10.0.0.2", 8080)
    assert view.headers["authorization"] == "Bearer t"
    assert dict(view.context_extensions) == {"tenant": "acme", "route": "r1"}


TEXT = st.text(max_size=12)
NAMES = st.one_of(st.sampled_from([":authority", ":method", ":path", "x-a", "X-A"]), TEXT)


@st.composite
def requests(draw: st.DrawFn) -> external_auth_pb2.CheckRequest:
    """Requests with any text in every field read, and the fields Envoy adds."""
    request = envoy_request(
        method=draw(st.sampled_from(["GET", "POST", "", "G\tET", "get"])),
        host=draw(TEXT),
        path=draw(st.one_of(TEXT, st.just("/a%00"), st.just("/ok"))),
        headers=draw(st.dictionaries(NAMES, TEXT, max_size=6)),
        principal=draw(TEXT),
        destination_principal=draw(TEXT),
        destination_port=draw(st.integers(0, 2**32 - 1)),
        sni=draw(TEXT),
        request_id=draw(TEXT),
        body=draw(TEXT),
        context_extensions=draw(st.dictionaries(TEXT, TEXT, max_size=3)),
    )
    attributes = request.attributes
    if draw(st.booleans()):
        attributes.source.address.socket_address.port_value = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        attributes.source.labels[draw(TEXT)] = draw(TEXT)
        attributes.source.service = draw(TEXT)
        attributes.source.certificate = draw(TEXT)
    if draw(st.booleans()):
        attributes.request.http.raw_body = draw(st.binary(max_size=8))
        attributes.request.http.query = draw(TEXT)
    if draw(st.booleans()):
        attributes.request.time.seconds = draw(st.integers(-(2**63), 2**63 - 1))
    if draw(st.booleans()):
        attributes.ClearField("destination")
    return request


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_any_serialized_request_is_read_from_the_bytes_as_protobuf_reads_it(
    request: external_auth_pb2.CheckRequest,
) -> None:
    data = request.SerializeToString()
    assert read_directly(data)
    fields = wire.read(data)
    http = request.attributes.request.http
    assert (fields.method, fields.host, fields.path, fields.request_id) == (
        http.method, http.host, http.path, http.id,
    )  # fmt: skip
    assert fields.headers == dict(http.headers)
    assert fields.context_extensions == dict(request.attributes.context_extensions)
    assert_same(data)


def test_every_limit_is_the_reference_s() -> None:
    """Requests at and past decode's bounds: the same view or the same refusal."""
    outcomes = set()
    for request in (
        check_request(headers={f"h{i}": "v" for i in range(MAX_HEADERS - 3)}),
        check_request(headers={f"h{i}": "v" for i in range(MAX_HEADERS)}),
        check_request(headers={"x": "v" * (64 * 1024 + 1)}),
        check_request(headers={f"h{i}": "v" * 60_000 for i in range(5)}),
        check_request(headers={"x-forwarded-for": ",".join(["1.1.1.1"] * 65)}),
        check_request(path="/" + "a" * 16 * 1024),
        check_request(host="h" * 1025),
        check_request(headers={"x-a": "\x7f"}),
        check_request(method=""),
    ):
        outcome = assert_same(request.SerializeToString())
        outcomes.add(outcome if isinstance(outcome, str) else "view")
    assert len(outcomes) >= 7, outcomes  # each bound's own refusal, not one generic one


# ---------------------------------------------------------------------------------------------
# what the reader leaves to protobuf


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag(number, 2) + varint(len(payload)) + payload


def header(name: bytes, value: bytes) -> bytes:
    return field(3, field(1, name) + field(2, value))


def compose(
    *,
    top: bytes = b"",
    attributes: bytes = b"",
    request: bytes = b"",
    http: bytes = b"",
    socket: bytes = b"",
) -> bytes:
    """A request written field by field, with extra bytes at the end of each message (so an
    irregularity sits inside one message, not in a second copy of it)."""
    socket = field(2, b"10.0.0.1") + tag(3, 0) + varint(40000) + socket
    http = (
        field(1, b"r") + field(2, b"GET") + header(b":authority", b"shop.test")
        + field(4, b"/") + field(5, b"shop.test") + http
    )  # fmt: skip
    time = tag(1, 0) + varint(1795841103) + tag(2, 0) + varint(688759000)
    request = field(1, time) + field(2, http) + request
    attributes = field(1, field(1, field(1, socket))) + field(4, request) + attributes
    return field(1, attributes) + top


BASE = compose()

IRREGULAR: dict[str, bytes] = {
    # repeated singular fields: protobuf merges messages and keeps the last scalar
    "attributes twice (merged)": compose(top=field(1, field(4, field(2, field(2, b"POST"))))),
    "http twice (merged)": compose(request=field(2, field(2, b"PUT"))),
    "method twice (the last)": compose(http=field(2, b"DELETE")),
    "header key twice (the last)": compose(http=header(b"x-a", b"1") + header(b"x-a", b"2")),
    "map entry, key repeated inside": compose(
        http=field(3, field(1, b"x-a") + field(1, b"x-b") + field(2, b"v"))
    ),
    "extension key twice": compose(
        attributes=field(10, field(1, b"k") + field(2, b"1"))
        + field(10, field(1, b"k") + field(2, b"2"))
    ),
    "port twice": compose(socket=tag(3, 0) + varint(1)),
    "sni twice": compose(attributes=field(12, field(1, b"a") + field(1, b"b"))),
    # other members of a oneof replace the socket address
    "pipe after socket_address": compose(
        attributes=field(2, field(1, field(1, field(2, b"10.0.0.2")) + field(2, field(1, b"/s"))))
    ),
    "named_port after port_value": compose(socket=field(4, b"http")),
    # fields and encodings outside the subset
    "unknown field": compose(request=field(9, b"x")),
    "unknown top-level varint": compose(top=tag(2, 0) + varint(7)),
    "group": compose(http=tag(20, 3) + tag(20, 4)),
    "known field, other wire type": compose(http=tag(7, 0) + varint(1)),
    "tag in two bytes": compose(http=b"\xba\x00" + varint(2) + b"/q"),
    "header_map": compose(http=field(13, field(1, field(1, b"x-a") + field(2, b"1")))),
    "metadata not empty": compose(attributes=field(11, field(1, field(1, b"ns")))),
    "port past 32 bits": compose(
        attributes=field(
            2, field(1, field(1, field(2, b"10.0.0.2") + tag(3, 0) + varint(2**32 + 80)))
        )
    ),
    # not valid at all
    "header value not UTF-8": compose(http=header(b"x-a", b"\xff")),
    "surrogate in UTF-8": compose(http=field(7, b"\xed\xa0\x80")),
    "overlong UTF-8": compose(http=field(8, b"\xc0\xaf")),
    "body not UTF-8": compose(http=field(11, b"\xff")),
    "label not UTF-8": compose(attributes=field(2, field(3, field(1, b"k") + field(2, b"\xc3")))),
    "length past its message's end": compose(http=field(7, b"abc")[:-1]),
    "truncated": BASE[: len(BASE) // 2],
    "varint of 11 bytes": compose(http=tag(9, 0) + b"\xff" * 10 + b"\x01"),
    "no attributes": b"",
    "no http": field(1, field(4, field(1, b""))),
}


def test_composed_requests_are_read_from_the_bytes() -> None:
    """The cases below differ from a request the reader takes only by their irregularity."""
    assert read_directly(BASE)
    assert assert_same(BASE) == decode_wire(BASE)
    assert read_directly(compose(http=header(b"x-a", b"1") + header(b"x-b", b"2")))
    assert read_directly(compose(http=tag(9, 0) + b"\xff" * 9 + b"\x01"))  # size: 10 bytes
    assert read_directly(compose(attributes=field(11, b"") + field(13, b"")))


@pytest.mark.parametrize("name", sorted(IRREGULAR))
def test_irregular_bytes_are_left_to_protobuf(name: str) -> None:
    data = IRREGULAR[name]
    assert not read_directly(data)
    assert_same(data)


def test_upper_case_header_names_are_lowered_as_decode_lowers_them() -> None:
    """Read from the bytes, names not in lower case go to decode, which lowers them."""
    request = envoy_request()
    request.attributes.request.http.headers["X-Up"] = "1"
    data = request.SerializeToString()
    assert read_directly(data)
    assert assert_same(data).headers["x-up"] == "1"  # type: ignore[union-attr]


def test_protobuf_s_reading_of_repeated_fields_is_kept() -> None:
    """What the fallback gives for merged and repeated fields (read from the bytes, the
    first value would be a different request)."""
    assert decode_wire(IRREGULAR["method twice (the last)"]).method == "DELETE"
    assert decode_wire(IRREGULAR["header key twice (the last)"]).headers["x-a"] == "2"
    merged = decode_wire(IRREGULAR["attributes twice (merged)"])
    assert (merged.method, merged.request_id, merged.host) == ("POST", "r", "shop.test")
    assert decode_wire(IRREGULAR["http twice (merged)"]).method == "PUT"
    assert decode_wire(IRREGULAR["pipe after socket_address"]).destination_address == ""
    assert decode_wire(IRREGULAR["port past 32 bits"]).destination_port == 80
    with pytest.raises(MalformedRequest, match="not a CheckRequest"):
        decode_wire(IRREGULAR["header value not UTF-8"])


def mutations(seed: int, count: int) -> Iterator[bytes]:
    rnd = random.Random(seed)
    seeds = [
        BASE,
        envoy_request(request_id="r").SerializeToString(),
        envoy_request(
            principal="spiffe://td/ns/a/sa/b", sni="s", body="b", context_extensions={"k": "v"},
            headers={"authorization": "Bearer x"},
        ).SerializeToString(),
    ]  # fmt: skip
    for _ in range(count):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 3)):
            at = rnd.randrange(len(data) + 1)
            op = rnd.random()
            if op < 0.45 and at < len(data):
                data[at] = rnd.randrange(256)
            elif op < 0.65 and at < len(data):
                del data[at]
            elif op < 0.85:
                data.insert(at, rnd.randrange(256))
            else:
                end = rnd.randrange(at, len(data) + 1)
                data[at:at] = data[at:end]
        yield bytes(data)


def test_mutated_bytes_give_the_reference_outcome() -> None:
    """Bytes flipped, dropped, inserted and repeated in Envoy-shaped requests: whichever way
    the bytes are read, the same view or the same refusal."""
    direct = refused = 0
    for data in mutations(seed=11, count=20_000):
        outcome = assert_same(data)
        direct += read_directly(data)
        refused += isinstance(outcome, str)
    assert direct > 500, (direct, refused)  # both paths were exercised
    assert refused > 500, (direct, refused)


# ---------------------------------------------------------------------------------------------
# what a real Envoy sends


@pytest.mark.envoy
def test_real_envoy_requests_are_read_from_the_bytes(tmp_path: Path) -> None:
    """The CheckRequests a real Envoy sends (with and without a body) take the direct path."""
    from tests.envoy_support import authorizer_in_thread, echo_upstream, running_envoy, send

    captured: list[bytes] = []
    with (
        authorizer_in_thread(
            _Capture(captured).Check, deserializer=None, serializer=None
        ) as address,
        echo_upstream() as upstream,
        running_envoy(tmp_path, address, upstream, with_request_body=1024) as envoy,
    ):
        assert send(envoy, "/a?x=1", headers={"authorization": "Bearer t"}).status == 200
        assert send(envoy, "/b", method="POST", body=b"hello").status == 200
    assert len(captured) == 2
    for data in captured:
        assert read_directly(data), Request.FromString(data)
        assert_same(data)
    views = [decode_wire(data) for data in captured]
    assert [(v.method, v.path) for v in views] == [("GET", "/a?x=1"), ("POST", "/b")]
    assert views[0].headers["authorization"] == "Bearer t"


class _Capture:
    def __init__(self, captured: list[bytes]) -> None:
        self.captured = captured
        ok = external_auth_pb2.CheckResponse()
        ok.status.code = 0
        self.ok = ok.SerializeToString()

    async def Check(self, request: bytes, context: Any) -> bytes:
        self.captured.append(request)
        return self.ok


def test_byte_builders_write_what_protobuf_writes() -> None:
    """The builders above encode as protobuf does (so each irregular case is the encoding
    its name says, next to a request protobuf itself would write)."""
    request = Request()
    request.attributes.request.http.method = "GET"
    request.attributes.source.address.socket_address.port_value = 300
    expected = field(
        1,
        field(1, field(1, field(1, tag(3, 0) + varint(300))))
        + field(4, field(2, field(2, b"GET"))),
    )
    assert expected == request.SerializeToString()
    built = Request.FromString(BASE)
    assert built.attributes.request.http.headers[":authority"] == "shop.test"
    assert built.attributes.request.time.nanos == 688759000
    assert Request.FromString(built.SerializeToString()) == built
