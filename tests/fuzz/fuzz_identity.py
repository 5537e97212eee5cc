"""SPIFFE ID and XFCC parsers: only their own errors escape, and nothing is invented.

Input: one selector byte (0: SPIFFE ID, else XFCC), then the text (UTF-8, invalid bytes
replaced).
"""

from __future__ import annotations

import atheris

from tests.fuzz.common import check, main

with atheris.instrument_imports(include=["extauthz"]):
    from extauthz.identity import (
        PeerIdentityError,
        TrustedProxies,
        parse_spiffe_id,
        parse_xfcc,
        peer_identity,
        xfcc_client,
    )
    from extauthz.model import RequestView

GATEWAY = "spiffe://cluster.local/ns/istio-system/sa/gateway"
PROXIES = TrustedProxies(principals=[GATEWAY])


def spiffe(text: str) -> None:
    try:
        parsed = parse_spiffe_id(text)
    except PeerIdentityError:
        return
    check(parsed.uri == text, f"SPIFFE ID {text!r} parsed as {parsed.uri!r}")
    check(parse_spiffe_id(parsed.uri) == parsed, "a parsed SPIFFE ID does not parse again")


def xfcc(text: str) -> None:
    try:
        elements = parse_xfcc(text)
    except ValueError:
        elements = None
    if elements is not None:
        for pairs in elements:
            check(bool(pairs), f"empty XFCC element from {text!r}")
            for key, _value in pairs:
                check(bool(key) and not any(c in key for c in ',;"'), f"bad key {key!r}")
    try:
        client = xfcc_client(text)
    except PeerIdentityError:
        client = None
    else:
        check(elements is not None, f"xfcc_client accepted {text!r}, which parse_xfcc refuses")
    if client is not None:
        check(client.uri in text.replace("\\", ""), f"client {client.uri} not in {text!r}")
    view = RequestView(source_principal=GATEWAY, headers={"x-forwarded-client-cert": text})
    try:
        peer = peer_identity(view, PROXIES)
    except PeerIdentityError:
        return
    check(peer == client, f"peer_identity {peer} differs from xfcc_client {client}")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    text = data[1:].decode("utf-8", "replace")
    if data[0] == 0:
        spiffe(text)
    else:
        xfcc(text)


if __name__ == "__main__":
    main("identity", test_one_input)
