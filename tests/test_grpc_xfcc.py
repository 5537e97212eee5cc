"""x-forwarded-client-cert through a served extauthz: only the trusted proxy's element counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from google.rpc import code_pb2

from tests.helpers import ServerProcess, check_request, serving

OK = code_pb2.OK
DENIED = code_pb2.PERMISSION_DENIED
GATEWAY = "spiffe://cluster.local/ns/istio-system/sa/gateway"
FRONTEND = "spiffe://cluster.local/ns/web/sa/frontend"
OTHER = "spiffe://cluster.local/ns/web/sa/other"
POLICIES = """\
apiVersion: extauthz.io/v1
kind: Tenant
metadata: {name: shop}
spec:
  match: {hosts: [shop.test]}
  trustDomains: [cluster.local]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-only, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/web/sa/frontend]}
"""
# Envoy's element for a client certificate, values as it writes them (URI unquoted).
ELEMENT = "By=" + GATEWAY + ';Hash=9f2c;Subject="CN=client";URI={uri}'
# Client certificates whose URI SAN was crafted to make a naive reader see FRONTEND.
FORGED = {
    "comma": ELEMENT.format(uri=f"{OTHER},By={GATEWAY};Hash=00;URI={FRONTEND}"),
    "semicolon": ELEMENT.format(uri=f"{OTHER};URI={FRONTEND}"),
    "semicolon-first": ELEMENT.format(uri=f"{FRONTEND};URI={OTHER}"),
    "quoted": ELEMENT.format(uri=f'"{FRONTEND}"'),
    "quoted-comma": ELEMENT.format(uri=f'"{OTHER},By={GATEWAY};URI={FRONTEND}"'),
    "quote-in-value": ELEMENT.format(uri=f'{OTHER}",URI="{FRONTEND}'),
}


def decide(server: ServerProcess, xfcc: str, principal: str = GATEWAY) -> int:
    request = check_request(
        host="shop.test", principal=principal, headers={"x-forwarded-client-cert": xfcc}
    )
    return int(server.check(request).status.code)


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("xfcc")
    (directory / "shop.yaml").write_text(POLICIES)
    return directory


@pytest.fixture(scope="module")
def sanitize_set(policies: Path) -> Iterator[ServerProcess]:
    """extauthz behind a SANITIZE_SET gateway (the default mode)."""
    args = ["--policies", str(policies), "--trusted-proxy-principal", GATEWAY]
    with serving(args) as server:
        yield server


@pytest.fixture(scope="module")
def append_forward(policies: Path) -> Iterator[ServerProcess]:
    """extauthz behind an APPEND_FORWARD gateway."""
    args = ["--policies", str(policies), "--trusted-proxy-principal", GATEWAY]
    with serving([*args, "--trusted-proxy-xfcc", "APPEND_FORWARD"]) as server:
        yield server


def test_client_of_the_trusted_gateway_decides(sanitize_set: ServerProcess) -> None:
    """The URI of the gateway's element is the client the policy sees."""
    assert decide(sanitize_set, ELEMENT.format(uri=FRONTEND)) == OK
    assert decide(sanitize_set, ELEMENT.format(uri=OTHER)) == DENIED


def test_xfcc_from_an_untrusted_peer_is_ignored(sanitize_set: ServerProcess) -> None:
    """Another peer's XFCC is not believed: the peer's own identity decides."""
    assert decide(sanitize_set, ELEMENT.format(uri=FRONTEND), principal=OTHER) == DENIED


@pytest.mark.parametrize("xfcc", FORGED.values(), ids=FORGED.keys())
def test_crafted_uri_san_does_not_borrow_an_identity(
    sanitize_set: ServerProcess, xfcc: str
) -> None:
    """A URI SAN with ',', ';URI=' or quotes never passes for FRONTEND: denied."""
    assert decide(sanitize_set, xfcc) == DENIED


def test_sanitize_set_refuses_more_than_one_element(sanitize_set: ServerProcess) -> None:
    """A SANITIZE_SET gateway writes one element; two mean a forged or unsanitized header."""
    two = ELEMENT.format(uri=OTHER) + "," + ELEMENT.format(uri=FRONTEND)
    assert decide(sanitize_set, two) == DENIED
    assert "elements; a SANITIZE_SET proxy writes one" in sanitize_set.logs()


def test_append_forward_trusts_only_the_last_element(append_forward: ServerProcess) -> None:
    """Earlier elements are the client's own text: only the gateway's last one decides."""
    spoofed_first = f"URI={FRONTEND}," + ELEMENT.format(uri=OTHER)
    assert decide(append_forward, spoofed_first) == DENIED
    assert decide(append_forward, f"URI={OTHER}," + ELEMENT.format(uri=FRONTEND)) == OK


@pytest.mark.parametrize(
    "name", [n for n in FORGED if n != "comma"], ids=[n for n in FORGED if n != "comma"]
)
def test_append_forward_refuses_crafted_uri_sans(append_forward: ServerProcess, name: str) -> None:
    """Under APPEND_FORWARD too, ';URI=' and quoted URIs in the last element are refused."""
    assert decide(append_forward, FORGED[name]) == DENIED
