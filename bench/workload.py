"""The benchmark workload: one realistic CheckRequest and the tenant that decides it.

Every benchmark builds its request here, so the in-process numbers (engine.py), the direct
gRPC load (grpc_load.py, h2load's data file) and the ghz call data (ghz/make_calldata.py)
all describe the same Check:

- an ingress gateway (SPIFFE ``source.principal``) calling ``GET /api/v2/orders/{id}/items``
  on ``api.bench.example.com`` for an end user with an ES256 JWT from the bench issuer;
- 14 headers, as Envoy sends them: pseudo-headers, ``authorization``, an
  ``x-forwarded-client-cert`` written by the gateway, trace context, forwarding headers;
- the tenant is ``bench/policies/bench.yaml`` (20 policies, allowed by the 15th, no AUDIT
  match).

The token is ``bench/policies/bench-token.jwt`` (expires in 2100). ``python bench/workload.py
rekey`` signs a new one with a new throwaway key and writes the public JWKS into the tenant;
the private key is never written anywhere. ``python bench/workload.py show`` prints the
request as JSON; ``show --deny`` the same request as a ``DELETE``, which the tenant denies
(no ALLOW policy matches) and two AUDIT policies match, so that its decision is always
written to the decision log: a flood of denies (``grpc_load.py --request``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Final

from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import json_format

BENCH: Final = Path(__file__).resolve().parent
REPO: Final = BENCH.parent
POLICIES: Final = BENCH / "policies"
TENANT_FILE: Final = POLICIES / "bench.yaml"
TOKEN_FILE: Final = POLICIES / "bench-token.jwt"

TENANT: Final = "bench"
HOST: Final = "api.bench.example.com"
ISSUER: Final = "https://issuer.bench.example.com"
KID: Final = "bench-1"
PEER: Final = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
DESTINATION: Final = "spiffe://cluster.local/ns/orders/sa/orders-api"
PATH: Final = "/api/v2/orders/98731/items"
EXPIRES: Final = 4102444800  # 2100-01-01
DECIDING_POLICY: Final = "bench/p15-allow-orders-read"


def token() -> str:
    return TOKEN_FILE.read_text().strip()


def headers(jwt: str, method: str = "GET") -> dict[str, str]:
    """The request headers as Envoy puts them in ``attributes.request.http.headers``."""
    return {
        ":authority": HOST,
        ":method": method,
        ":path": PATH,
        ":scheme": "https",
        "accept": "application/json",
        "accept-encoding": "gzip, deflate, br",
        "authorization": f"Bearer {jwt}",
        "user-agent": "bench-web/4.2.0 (Linux x86_64)",
        "x-forwarded-for": "198.18.7.21",
        "x-forwarded-proto": "https",
        "x-request-id": "5f0c2a4e-9b1d-4c55-a1e2-3d4f5a6b7c8d",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "x-forwarded-client-cert": (
            f"By={DESTINATION};"
            "Hash=8f6c2d7e1b0a9c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5;"
            f'Subject="";URI={PEER}'
        ),
        "x-envoy-attempt-count": "1",
    }


def check_request(jwt: str | None = None, method: str = "GET") -> external_auth_pb2.CheckRequest:
    """The benchmark CheckRequest (allowed by DECIDING_POLICY; denied as a DELETE)."""
    req = external_auth_pb2.CheckRequest()
    a = req.attributes
    a.source.address.socket_address.address = "10.20.0.14"
    a.source.address.socket_address.port_value = 51734
    a.source.principal = PEER
    a.destination.address.socket_address.address = "10.20.3.9"
    a.destination.address.socket_address.port_value = 8080
    a.destination.principal = DESTINATION
    a.tls_session.sni = "outbound_.8080_._.orders-api.orders.svc.cluster.local"
    http = a.request.http
    http.id = "5f0c2a4e-9b1d-4c55-a1e2-3d4f5a6b7c8d"
    http.method = method
    http.host = HOST
    http.path = PATH
    http.scheme = "https"
    http.protocol = "HTTP/2"
    http.size = 0
    for name, value in headers(jwt if jwt is not None else token(), method).items():
        http.headers[name] = value
    return req


def load_request(path: Path) -> external_auth_pb2.CheckRequest:
    """A CheckRequest from a JSON file (proto3 JSON, like examples/requests/*.json)."""
    req = external_auth_pb2.CheckRequest()
    json_format.Parse(path.read_text(), req)
    return req


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message (the body of a unary call)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def request_json(req: external_auth_pb2.CheckRequest) -> str:
    """Proto3 JSON (what ghz and grpcurl take as call data)."""
    return json_format.MessageToJson(req, indent=2, sort_keys=True)


def rekey() -> None:
    """A new throwaway key: sign a new token, put the public JWKS into the tenant."""
    import time

    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=KID, alg="ES256", use="sig")
    jwks = json.dumps({"keys": [jwk]})
    claims = {
        "iss": ISSUER,
        "sub": "user-7f3a9c",
        "aud": ["orders-api", "profile-api"],
        "scope": "orders.read profile.read openid",
        "groups": ["customers", "beta"],
        "tenant_id": "t-000042",
        "azp": "bench-web",
        "iat": int(time.time()),
        "exp": EXPIRES,
    }
    signed = pyjwt.encode(claims, key, algorithm="ES256", headers={"kid": KID})
    text = TENANT_FILE.read_text()
    new, count = re.subn(r"(?m)^(    jwks: ).*$", lambda m: f"{m.group(1)}'{jwks}'", text)
    if count != 1:
        raise SystemExit(f"{TENANT_FILE}: expected exactly one 'jwks:' line, found {count}")
    TENANT_FILE.write_text(new)
    TOKEN_FILE.write_text(signed + "\n")
    print(f"wrote {TENANT_FILE.relative_to(REPO)} and {TOKEN_FILE.relative_to(REPO)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the benchmark CheckRequest as proto3 JSON")
    show.add_argument("--deny", action="store_true", help="as a DELETE: denied and audited")
    sub.add_parser("rekey", help="new throwaway key: re-sign the token, rewrite the JWKS")
    args = parser.parse_args(argv)
    if args.command == "rekey":
        rekey()
    else:
        request = check_request(method="DELETE" if args.deny else "GET")
        sys.stdout.write(request_json(request) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
