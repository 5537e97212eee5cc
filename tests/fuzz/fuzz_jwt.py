"""The JWT front end: token extraction and verification for a tenant with inline JWKS.

Input: a selector byte, then the token text (UTF-8, invalid bytes replaced), sent in the
``authorization`` header (selector even, ``Bearer`` prefix) or the ``access_token`` query
parameter (odd). Properties: ``_authenticate`` raises nothing but InvalidToken (the public
``authenticate`` would turn anything else into a deny and hide it); a request principal
is only ever given for a token that an independent check (PyJWT, ES256, the tenant's key,
issuer and audience) accepts.
"""

from __future__ import annotations

import json
import urllib.parse

import atheris
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.fuzz.common import check, main

with atheris.instrument_imports(include=["extauthz"]):
    from extauthz.authn.jwks import JwksCache
    from extauthz.authn.verify import InvalidToken
    from extauthz.catalog import compile_documents
    from extauthz.documents import load_documents
    from extauthz.model import RequestView

ISSUER = "https://issuer.fuzz.test"
AUDIENCE = "fuzz-api"
NOW = 1_900_000_000.0  # a fixed clock: seeds signed for it stay valid
# A fixed key, so seed tokens verify in every run (test data, not a secret).
KEY = ec.derive_private_key(0x5EED_F022_0123_4567_89AB_CDEF, ec.SECP256R1())
JWK = json.loads(ECAlgorithm.to_jwk(KEY.public_key()))
JWK.update(kid="fuzz-1", alg="ES256", use="sig")
TENANT = f"""
apiVersion: extauthz.io/v1
kind: Tenant
metadata: {{name: fuzz}}
spec:
  match: {{hosts: [fuzz.test]}}
  jwtRules:
  - issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks: '{json.dumps({"keys": [JWK]})}'
    fromHeaders: [{{name: authorization, prefix: "Bearer "}}]
    fromParams: [access_token]
    outputClaimToHeaders: [{{header: x-user, claim: sub}}]
"""
AUTHN = compile_documents("fuzz", load_documents(TENANT, "fuzz.yaml"), JwksCache()).authenticator


def sign(claims: dict[str, object], **headers: object) -> str:
    """A token the tenant accepts (for the seed corpus)."""
    return jwt.encode(claims, KEY, algorithm="ES256", headers={"kid": "fuzz-1", **headers})


def independently_valid(token: str) -> bool:
    try:
        jwt.decode(
            token,
            KEY.public_key(),
            algorithms=["ES256"],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=120,
            # times are the engine's own (its clock and skew); a non-string sub is allowed
            # (the principal is then "<iss>/", as Istio forms it)
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_sub": False,
                "verify_jti": False,
            },
        )
    except jwt.PyJWTError:
        return False
    return True


def test_one_input(data: bytes) -> None:
    if not data:
        return
    token = data[1:].decode("utf-8", "replace")
    if data[0] % 2:
        view = RequestView(
            host="fuzz.test", path="/x?access_token=" + urllib.parse.quote(token, safe="")
        )
    else:
        view = RequestView(
            host="fuzz.test", path="/x", headers={"authorization": "Bearer " + token}
        )
    try:
        result = AUTHN._authenticate(view, NOW)
    except InvalidToken:
        return
    if result.request_principal is not None:
        # the extractor trims whitespace and reads a header as comma-joined values (repeated
        # headers), each with the prefix; one token must then verify on its own
        candidates = [token.strip()]
        if not data[0] % 2:
            parts = [p.strip() for p in ("Bearer " + token).split(",")]
            candidates = [p[7:].strip() for p in parts if p[:7].lower() == "bearer "]
        valid = any(independently_valid(c) for c in candidates if c)
        check(valid, f"principal {result.request_principal} for {token!r}")


if __name__ == "__main__":
    main("jwt", test_one_input)
