"""The Check decision path (decode, pipeline, response) on arbitrary CheckRequests.

Input: one selector byte, then either the bytes of a request as they come off the wire
(selector even: any bytes, a CheckRequest or not) or the bytes a FuzzedDataProvider turns
into a request aimed at the example tenants (odd). The request runs through the servicer's
decision path with the example policies, under three configurations. Properties: the bytes
read by ``wire`` give what protobuf's parser and ``decode`` give (the same view, or the same
refusal); no exception escapes; a request decode refuses, or whose peer identity is
invalid, is denied; an allow names its tenant and is a 200.
"""

from __future__ import annotations

from collections.abc import Callable

import atheris
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.message import DecodeError

from tests.fuzz.common import REPO, check, main

with atheris.instrument_imports(include=["extauthz"]):
    from extauthz.authn.jwks import JwksCache
    from extauthz.decode import NOT_PARSED, MalformedRequest, decode, decode_wire
    from extauthz.identity import PeerIdentityError, TrustedProxies, peer_identity
    from extauthz.model import RequestView
    from extauthz.options import CheckOptions
    from extauthz.pathnorm import PathNormalization
    from extauthz.pipeline import CheckPipeline
    from extauthz.registry import Registry
    from extauthz.response import build_response
    from extauthz.servicer import AuthorizationServicer
    from extauthz.store.files import read_directory, sources_of

GATEWAY = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
HOSTS = ["acme.example.com", "api.acme.example.com", "globex.example.com", "other.test", ""]
METHODS = ["GET", "POST", "PUT", "DELETE", "get", ""]
PRINCIPALS = [
    "",
    GATEWAY,
    "spiffe://cluster.local/ns/acme-web/sa/frontend",
    "spiffe://cluster.local/ns/batch/sa/runner",
    "spiffe://old.example/ns/monitoring/sa/prometheus",
]
HEADER_NAMES = [
    "authorization",
    "x-forwarded-client-cert",
    "x-forwarded-for",
    "x-internal-override",
    "x-user",
    "content-type",
]


def _registry() -> Registry:
    docs, errors = read_directory(REPO / "policies")
    assert not errors, errors
    registry = Registry(JwksCache())
    registry.replace_all(sources_of(docs))
    return registry


REGISTRY = _registry()
PROXIES = TrustedProxies(principals=[GATEWAY], cidrs=["10.0.0.0/8"])
CONFIGS = [
    (TrustedProxies(), CheckPipeline()),
    (PROXIES, CheckPipeline(CheckOptions(trusted_proxies=PROXIES, xff_num_trusted_hops=1))),
    (
        TrustedProxies(),
        CheckPipeline(CheckOptions(path_normalization=PathNormalization.DECODE_AND_MERGE_SLASHES)),
    ),
]
SERVICERS = [(proxies, AuthorizationServicer(REGISTRY, p)) for proxies, p in CONFIGS]


def structured(fdp: atheris.FuzzedDataProvider) -> external_auth_pb2.CheckRequest:
    """A request near the example tenants: known hosts and principals, fuzzed values."""
    req = external_auth_pb2.CheckRequest()
    a = req.attributes
    pick = fdp.PickValueInList
    a.source.address.socket_address.address = pick(["10.1.2.3", "192.0.2.7", "::1", "x", ""])
    principal = pick(PRINCIPALS)
    a.source.principal = principal if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(40)
    http = a.request.http
    http.method = pick(METHODS)
    http.host = pick(HOSTS) if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(30)
    http.path = fdp.ConsumeUnicodeNoSurrogates(60)
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        http.headers[pick(HEADER_NAMES)] = fdp.ConsumeUnicodeNoSurrogates(80)
    for name, value in ((":authority", http.host), (":method", http.method), (":path", http.path)):
        if fdp.ConsumeBool():
            http.headers[name] = value
    if fdp.ConsumeBool():
        a.destination.principal = fdp.ConsumeUnicodeNoSurrogates(40)
    return req


def request_of(data: bytes) -> bytes | None:
    if not data:
        return None
    if data[0] % 2:
        return structured(atheris.FuzzedDataProvider(data[1:])).SerializeToString()
    return data[1:]


def decoded(read: Callable[[], RequestView]) -> RequestView | str:
    """The view ``read`` returns, or the reason of its MalformedRequest."""
    try:
        return read()
    except MalformedRequest as exc:
        return str(exc)


def reference(wire: bytes) -> RequestView | str:
    """What protobuf's parser and ``decode`` make of ``wire``."""
    try:
        request = external_auth_pb2.CheckRequest.FromString(wire)
    except DecodeError:
        return NOT_PARSED
    return decoded(lambda: decode(request))


def test_one_input(data: bytes) -> None:
    wire = request_of(data)
    if wire is None:
        return
    view = reference(wire)
    read = decoded(lambda: decode_wire(wire))
    check(read == view, f"wire read {read!r}, protobuf and decode {view!r}: {wire!r}")
    for proxies, servicer in SERVICERS:
        outcome, _ = servicer.answer.decide(wire)  # the servicer's own decision path
        build_response(outcome, "fuzz-decision")
        if not outcome.allowed:
            continue
        check(isinstance(view, RequestView), f"allowed a request decode refuses: {wire!r}")
        check(bool(outcome.tenant) and outcome.status == 200, f"odd allow {outcome}")
        assert isinstance(view, RequestView)
        try:
            peer_identity(view, proxies)
        except PeerIdentityError as exc:
            raise AssertionError(
                f"allowed with an invalid peer identity ({exc}): {wire!r}"
            ) from None


if __name__ == "__main__":
    main("check", test_one_input)
