"""AuthorizationServicer over a real in-process grpc.aio server: every failure is an observed deny.

Each test serves one servicer on 127.0.0.1 and calls it through a real channel; the
observer records what the decision log and the metrics would see. No channel is mocked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2

from extauthz.authn import JwksCache
from extauthz.documents import load_documents
from extauthz.errors import Reason
from extauthz.model import RequestView
from extauthz.outcome import Outcome
from extauthz.pipeline import CheckPipeline
from extauthz.registry import Registry, Snapshot
from extauthz.servicer import AuthorizationServicer, add_to_server
from extauthz.sources import TenantSource
from tests.helpers import Issuer, check_request, policy_yaml, tenant_yaml

HOST = "shop.example.com"
ISSUER = Issuer()


@dataclass
class Recorder:
    """An observer that keeps every (outcome, view) it is given."""

    seen: list[tuple[Outcome, RequestView | None]] = field(default_factory=list)
    fail: bool = False

    def __call__(
        self, outcome: Outcome, view: RequestView | None, decision_id: str, seconds: float
    ) -> None:
        self.seen.append((outcome, view))
        if self.fail:
            raise RuntimeError("observer broke")


def registry_with_shop() -> Registry:
    """A ready registry: tenant shop (JWT with x-user from sub) allowing every request."""
    text = tenant_yaml("shop", match=f"{{hosts: [{HOST}]}}", issuer=ISSUER) + "---\n"
    text += policy_yaml("all", "shop", "  rules: [{}]")
    registry = Registry(JwksCache())
    registry.replace_all({"shop": TenantSource("shop", "1", tuple(load_documents(text, "t.yaml")))})
    assert registry.ready
    return registry


@dataclass
class Served:
    channel: grpc.aio.Channel
    stub: Any
    recorder: Recorder
    servicer: AuthorizationServicer

    async def check(self, request: external_auth_pb2.CheckRequest) -> Any:
        return await self.stub.Check(request, timeout=5)


async def _serve(
    registry: Registry, pipeline: Callable[..., Any], recorder: Recorder
) -> AsyncIterator[Served]:
    servicer = AuthorizationServicer(registry, pipeline, recorder)  # type: ignore[arg-type]
    server = grpc.aio.server()
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(channel, external_auth_pb2_grpc.AuthorizationStub(channel), recorder, servicer)
    finally:
        await channel.close()
        await server.stop(None)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async for s in _serve(registry_with_shop(), CheckPipeline(), Recorder()):
        yield s


def _only_deny(served: Served, reply: Any, reason: Reason) -> Outcome:
    assert reply.status.code != code_pb2.OK
    assert reply.denied_response.status.code == 403
    assert reply.dynamic_metadata.fields["reason"].string_value == reason
    ((outcome, _),) = served.recorder.seen
    assert not outcome.allowed
    assert outcome.reason is reason
    return outcome


async def test_allow_is_observed(served: Served) -> None:
    """A request the policy allows is allowed, and observed once."""
    reply = await served.check(check_request(host=HOST))
    assert reply.status.code == code_pb2.OK
    assert [o.allowed for o, _ in served.recorder.seen] == [True]


async def test_internal_error_is_an_observed_deny() -> None:
    """A pipeline that raises: an internal deny, observed, counted in internal_errors."""

    def broken(snapshot: Snapshot, view: RequestView) -> Outcome:
        raise KeyError("bug")

    async for served in _serve(registry_with_shop(), broken, Recorder()):
        reply = await served.check(check_request(host=HOST))
        _only_deny(served, reply, Reason.INTERNAL)
        assert served.servicer.internal_errors == 1


async def test_not_ready_is_an_observed_deny() -> None:
    """No policies loaded yet: a not_ready deny, observed."""
    async for served in _serve(Registry(JwksCache()), CheckPipeline(), Recorder()):
        reply = await served.check(check_request(host=HOST))
        _only_deny(served, reply, Reason.NOT_READY)


async def test_spent_deadline_is_an_observed_deny() -> None:
    """A Check whose deadline is spent while deciding: a deadline deny, observed."""
    import time

    def slow(snapshot: Snapshot, view: RequestView) -> Outcome:
        time.sleep(0.3)  # longer than the client's deadline below
        return CheckPipeline()(snapshot, view)

    async for served in _serve(registry_with_shop(), slow, Recorder()):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await served.stub.Check(check_request(host=HOST), timeout=0.1)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        ((outcome, _),) = served.recorder.seen
        assert not outcome.allowed
        assert outcome.reason is Reason.DEADLINE


async def test_raising_observer_keeps_the_decision() -> None:
    """An observer that raises changes nothing: the allow and the deny stand."""
    async for served in _serve(registry_with_shop(), CheckPipeline(), Recorder(fail=True)):
        allowed = await served.check(check_request(host=HOST))
        denied = await served.check(check_request(host="other.example.com"))
        assert allowed.status.code == code_pb2.OK
        assert denied.dynamic_metadata.fields["reason"].string_value == Reason.TENANT_UNKNOWN
        assert len(served.recorder.seen) == 2


@pytest.mark.parametrize(
    "sub",
    ["\ud800", "a\rb", "a\x7fb"],
    ids=["lone-surrogate", "carriage-return", "delete"],
)
async def test_unsendable_request_principal_is_an_observed_deny(served: Served, sub: str) -> None:
    """A verified sub that can't go into a response (lone surrogate, CR, DEL) is a deny, logged."""
    token = ISSUER.token(sub=sub)
    reply = await served.check(
        check_request(host=HOST, headers={"authorization": f"Bearer {token}"})
    )
    _only_deny(served, reply, Reason.INTERNAL)


@pytest.mark.parametrize(
    ("request_kw", "detail"),
    [
        ({"path": "/a\x00b"}, "control character"),
        ({"path": "/a%00b"}, "%00"),
        ({"path": "/a\nb"}, "control character"),
        ({"host": HOST + "\x01"}, "control character"),
        ({"headers": {"x-a": "1\r\nx-b: 2"}}, "control character"),
        ({"headers": {"x-a\x00": "1"}}, "control character"),
        ({"headers": {"x-a\tb": "1"}}, "control character"),
        ({"path": "/" + "a" * 17_000}, "path longer"),
        ({"headers": {"x-a": "a" * 70_000}}, "'x-a' longer"),
        ({"headers": {"x-forwarded-for": ",".join(["10.0.0.1"] * 65)}}, "x-forwarded-for"),
    ],
    ids=["nul", "pct00", "lf-path", "ctl-host", "crlf-header", "nul-name", "tab-name",
         "long-path", "long-header", "xff-entries"],
)  # fmt: skip
async def test_malformed_values_are_denied(
    served: Served, request_kw: dict[str, Any], detail: str
) -> None:
    """A value no conforming proxy forwards is a malformed_request deny, never matched."""
    reply = await served.check(check_request(**{"host": HOST, **request_kw}))
    outcome = _only_deny(served, reply, Reason.MALFORMED_REQUEST)
    assert detail in outcome.detail


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff", b"\x0a\x05\x0a\x03", b"\x0a\x02\xc3\x28"],
    ids=["bad-tag", "truncated", "not-utf8"],
)
async def test_bytes_that_are_not_a_check_request_are_denied(served: Served, data: bytes) -> None:
    """The servicer takes the request's bytes: bytes protobuf does not parse reach it and
    are a malformed_request deny (with the reason), never a crash or an allow."""
    call: Any = served.channel.unary_unary(
        "/envoy.service.auth.v3.Authorization/Check",
        request_serializer=None,
        response_deserializer=external_auth_pb2.CheckResponse.FromString,
    )
    reply = await call(data, timeout=5)
    outcome = _only_deny(served, reply, Reason.MALFORMED_REQUEST)
    assert "not a CheckRequest" in outcome.detail


async def test_tab_in_header_value_is_allowed(served: Served) -> None:
    """HTAB inside a header value is legal HTTP: the request is decided, here allowed."""
    reply = await served.check(check_request(host=HOST, headers={"x-a": "a\tb"}))
    assert reply.status.code == code_pb2.OK


def _nested(depth: int) -> Any:
    """A claim value that, inside the payload object, nests ``depth`` levels in all."""
    value: Any = "x"
    for n in range(depth - 1):
        value = [value] if n % 2 else {"a": value}
    return value


async def test_claims_nested_too_deep_are_jwt_invalid(served: Served) -> None:
    """A signed token whose payload nests deeper than 16 levels is a jwt_invalid deny."""
    deep = ISSUER.token(deep=_nested(17))
    reply = await served.check(
        check_request(host=HOST, headers={"authorization": f"Bearer {deep}"})
    )
    assert reply.denied_response.status.code == 401
    ((outcome, _),) = served.recorder.seen
    assert outcome.reason is Reason.JWT_INVALID
    assert "nested deeper than 16" in outcome.detail
    ok = ISSUER.token(deep=_nested(16))
    reply = await served.check(check_request(host=HOST, headers={"authorization": f"Bearer {ok}"}))
    assert reply.status.code == code_pb2.OK


async def test_oversized_token_is_jwt_invalid(served: Served) -> None:
    """A token over 16 KiB is a jwt_invalid deny, never parsed."""
    big = ISSUER.token(pad="x" * 16_000)
    reply = await served.check(check_request(host=HOST, headers={"authorization": f"Bearer {big}"}))
    ((outcome, _),) = served.recorder.seen
    assert reply.denied_response.status.code == 401
    assert outcome.reason is Reason.JWT_INVALID
    assert outcome.detail == "token too large"


@pytest.mark.parametrize(
    "request_id",
    [
        # what a decision_id field, a status and a whole allow look like on the wire
        '"\x0f\n\r\n\x0bdecision_id\x12\x00\n\x02\x08\x00\x1a\x00',
        "\x08\x00" * 200,  # longer than one length byte can say
        "\u00e9" * 70,
    ],
)
async def test_crafted_request_id_stays_one_string(served: Served, request_id: str) -> None:
    """The request id (sent by the client, the decision id in the response) is written into
    the response as a length-delimited string: bytes shaped like protobuf fields change no
    other field, and a deny stays a deny."""
    for host, allowed in ((HOST, True), ("elsewhere.test", False)):
        reply = await served.check(check_request(host=host, request_id=request_id))
        assert (reply.status.code == code_pb2.OK) is allowed
        fields = reply.dynamic_metadata.fields
        assert fields["decision_id"].string_value == request_id
        assert fields["decision"].string_value == ("allow" if allowed else "deny")
        assert reply.HasField("ok_response") is allowed
        assert reply.HasField("denied_response") is not allowed
