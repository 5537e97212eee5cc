"""SPIFFE ID and XFCC parsing, and which identity a request carries."""

from __future__ import annotations

import contextlib
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.identity import (
    PeerIdentityError,
    TrustedProxies,
    parse_spiffe_id,
    parse_xfcc,
    peer_identity,
)
from extauthz.model import RequestView

TD_CHARS = string.ascii_lowercase + string.digits + ".-_"
SEG_CHARS = string.ascii_letters + string.digits + ".-_"
trust_domains = st.text(TD_CHARS, min_size=1, max_size=40)
segments = st.text(SEG_CHARS, min_size=1, max_size=20).filter(lambda s: s not in (".", ".."))


@given(trust_domains, st.lists(segments, max_size=6))
def test_valid_spiffe_ids_round_trip(td: str, segs: list[str]) -> None:
    """Any ID built by the rules parses, and its URI is the input."""
    uri = f"spiffe://{td}" + "".join(f"/{s}" for s in segs)
    parsed = parse_spiffe_id(uri)
    assert parsed.uri == uri
    assert parsed.trust_domain == td


@given(st.text(max_size=80))
def test_parser_never_accepts_what_it_cannot_rebuild(value: str) -> None:
    """Whatever it accepts is exactly a valid ID; anything else raises PeerIdentityError."""
    try:
        parsed = parse_spiffe_id(value)
    except PeerIdentityError:
        return
    assert parsed.uri == value


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("http://cluster.local/ns/a", "scheme"),
        ("SPIFFE://cluster.local/ns/a", "scheme"),
        ("spiffe://", "empty trust domain"),
        ("spiffe:///ns/a", "empty trust domain"),
        ("spiffe://Cluster.local/ns/a", "lower-case"),
        ("spiffe://cluster.local:8080/ns/a", "lower-case"),
        ("spiffe://user@cluster.local/ns/a", "lower-case"),
        ("spiffe://cluster.local/ns//a", "empty path segment"),
        ("spiffe://cluster.local/ns/a/", "empty path segment"),
        ("spiffe://cluster.local/ns/../a", "'..'"),
        ("spiffe://cluster.local/ns/a?x=1", "path segments"),
        ("spiffe://cluster.local/ns/a#f", "path segments"),
        ("spiffe://cluster.local/ns/%41", "path segments"),
        ("spiffe://" + "a" * 256, "trust domain longer"),
        ("spiffe://td/" + "a" * 2048, "longer than 2048"),
    ],
)
def test_invalid_spiffe_ids_are_rejected(value: str, why: str) -> None:
    """Each SPIFFE rule is enforced, with a message that says which."""
    with pytest.raises(PeerIdentityError, match=why):
        parse_spiffe_id(value)


def test_istio_path_parts() -> None:
    """Namespace and service account come from /ns/<ns>/sa/<sa>."""
    sid = parse_spiffe_id("spiffe://cluster.local/ns/shop/sa/cart")
    assert (sid.namespace, sid.service_account) == ("shop", "cart")
    assert parse_spiffe_id("spiffe://cluster.local/workload").namespace is None


xfcc_values = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)


@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from(["By", "Hash", "URI", "Subject", "DNS"]), xfcc_values),
            min_size=1,
            max_size=4,
        ),
        min_size=1,
        max_size=4,
    )
)
@settings(max_examples=300)
def test_xfcc_quoted_round_trip(elements: list[list[tuple[str, str]]]) -> None:
    """Elements written with quoted, escaped values parse back to the same pairs."""

    def quote(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    header = ",".join(";".join(f"{k}={quote(v)}" for k, v in el) for el in elements)
    assert parse_xfcc(header) == elements


@given(st.text(max_size=120))
def test_xfcc_garbage_raises_value_error_or_parses(header: str) -> None:
    """No input makes the parser fail in any way but ValueError."""
    with contextlib.suppress(ValueError):
        parse_xfcc(header)


GATEWAY = "spiffe://cluster.local/ns/istio-system/sa/gateway"
CLIENT = "spiffe://cluster.local/ns/shop/sa/cart"
XFCC = f'By={GATEWAY};Hash=abc;Subject="CN=x,O=y";URI=spiffe://other/ns/a/sa/b,By={GATEWAY};URI={CLIENT}'


def test_xfcc_from_append_forward_proxy_uses_last_element() -> None:
    """An APPEND_FORWARD gateway speaks for its client: the element it appended, the last."""
    view = RequestView(source_principal=GATEWAY, headers={"x-forwarded-client-cert": XFCC})
    peer = peer_identity(view, TrustedProxies([GATEWAY], xfcc="APPEND_FORWARD"))
    assert peer is not None
    assert peer.uri == CLIENT


def test_xfcc_from_sanitize_set_proxy_is_its_one_element() -> None:
    """A SANITIZE_SET gateway (the default) writes one element: that one is the client."""
    header = f'By={GATEWAY};Hash=abc;Subject="CN=x,O=y";URI={CLIENT};DNS=cart.shop'
    view = RequestView(source_principal=GATEWAY, headers={"x-forwarded-client-cert": header})
    assert peer_identity(view, TrustedProxies([GATEWAY])) == parse_spiffe_id(CLIENT)


ADMIN = "spiffe://cluster.local/ns/admin/sa/root"
# What Envoy writes for client certificates whose URI SAN was crafted (values unquoted).
FORGED = {
    "comma": f"By={GATEWAY};Hash=abc;URI=spiffe://x/y,By={GATEWAY};Hash=def;URI={ADMIN}",
    "semicolon": f"By={GATEWAY};Hash=abc;URI=spiffe://x/y;URI={ADMIN}",
    "semicolon-first": f"By={GATEWAY};Hash=abc;URI={ADMIN};URI=spiffe://x/y",
    "quoted": f'By={GATEWAY};Hash=abc;URI="{ADMIN}"',
    "quoted-comma": f'By={GATEWAY};Hash=abc;URI="spiffe://x/y,By={GATEWAY};URI={ADMIN}"',
}


@pytest.mark.parametrize("header", FORGED.values(), ids=FORGED.keys())
def test_xfcc_forged_by_a_crafted_uri_san_is_refused(header: str) -> None:
    """A URI SAN holding ',', ';URI=' or quotes never yields another identity: an error."""
    view = RequestView(source_principal=GATEWAY, headers={"x-forwarded-client-cert": header})
    with pytest.raises(PeerIdentityError):
        peer_identity(view, TrustedProxies([GATEWAY]))
    if header != FORGED["comma"]:  # the one form APPEND_FORWARD cannot tell from a client's
        with pytest.raises(PeerIdentityError):
            peer_identity(view, TrustedProxies([GATEWAY], xfcc="APPEND_FORWARD"))


@given(st.text(max_size=60), st.sampled_from(["SANITIZE_SET", "APPEND_FORWARD"]))
@settings(max_examples=300)
def test_xfcc_client_never_invents_an_identity(san: str, mode: str) -> None:
    """Whatever a certificate's URI SAN holds, the identity read is that SAN or an error."""
    header = f"By={GATEWAY};Hash=abc;URI={san}"
    view = RequestView(source_principal=GATEWAY, headers={"x-forwarded-client-cert": header})
    try:
        peer = peer_identity(view, TrustedProxies([GATEWAY], xfcc=mode))
    except PeerIdentityError:
        return
    assert peer is None or (mode == "APPEND_FORWARD" and "," in san) or peer.uri == san


def test_trusted_proxies_refuse_an_unknown_xfcc_mode() -> None:
    """Only Envoy's two modes that set the header are accepted."""
    with pytest.raises(ValueError, match="XFCC mode"):
        TrustedProxies([GATEWAY], xfcc="FORWARD_ONLY")


def test_xfcc_from_untrusted_peer_is_ignored() -> None:
    """Anyone else's XFCC header is ignored: the peer is who mTLS says it is."""
    view = RequestView(
        source_principal=CLIENT, headers={"x-forwarded-client-cert": f"URI={GATEWAY}"}
    )
    peer = peer_identity(view, TrustedProxies([GATEWAY]))
    assert peer is not None
    assert peer.uri == CLIENT


def test_xfcc_trusted_by_cidr() -> None:
    """A proxy may be trusted by its address instead of its identity."""
    view = RequestView(
        source_address="10.1.2.3", headers={"x-forwarded-client-cert": f"URI={CLIENT}"}
    )
    assert peer_identity(view, TrustedProxies(cidrs=["10.1.0.0/16"])) == parse_spiffe_id(CLIENT)
    assert peer_identity(view, TrustedProxies(cidrs=["10.2.0.0/16"])) is None


def test_xfcc_without_uri_means_no_identity() -> None:
    """A client certificate without a URI SAN is no SPIFFE identity."""
    view = RequestView(
        source_principal=GATEWAY, headers={"x-forwarded-client-cert": 'Hash=abc;Subject="CN=x"'}
    )
    assert peer_identity(view, TrustedProxies([GATEWAY])) is None


def test_malformed_xfcc_from_trusted_proxy_raises() -> None:
    """A broken header from a trusted proxy is an error, not a silent fallback."""
    view = RequestView(
        source_principal=GATEWAY, headers={"x-forwarded-client-cert": 'URI="unterminated'}
    )
    with pytest.raises(PeerIdentityError, match="unterminated"):
        peer_identity(view, TrustedProxies([GATEWAY]))
