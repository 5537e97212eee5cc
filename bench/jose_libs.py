"""Time JWT verification with pyjwt, joserfc and jwcrypto on the same tokens.

Run ``python bench/jose_libs.py``. Each library gets its key imported once (as extauthz does
when it caches a JWKS), then verifies one RS256 (2048-bit) and one ES256 token in a loop, in
two tiers:

- ``decode``: the library's own token API (parse, verify, check iss/aud/exp);
- ``signature``: only the library's signature primitive over the signing input, which is what
  extauthz calls: it parses the compact JWS itself anyway (size limit, ``alg``/``kid``, the
  unverified ``iss`` that picks the rule) and checks the claims itself.

Prints microseconds per verify and each library's time relative to the fastest in the tier,
plus the bare ``cryptography`` call as the floor. Not part of the test suite.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc import jwk as rfc_jwk
from joserfc import jwt as rfc_jwt
from joserfc.jws import JWSRegistry
from jwcrypto import jwa as jc_jwa
from jwcrypto import jwk as jc_jwk
from jwcrypto import jwt as jc_jwt

ROUNDS = 5
MIN_SECONDS_PER_ROUND = 0.3

Verify = Callable[[], Any]


def _time(fn: Verify) -> float:
    """Median microseconds per call over ROUNDS rounds of at least MIN_SECONDS_PER_ROUND."""
    fn()  # warm up, and fail early if the setup is wrong
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - start >= MIN_SECONDS_PER_ROUND / 4:
            break
        n *= 2
    per_call: list[float] = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        per_call.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(per_call)


def _cases(alg: str, private: Any) -> dict[str, dict[str, Verify]]:
    now = int(time.time())
    claims = {
        "iss": "https://issuer.example",
        "sub": "user-1",
        "aud": "api",
        "iat": now,
        "exp": now + 3600,
    }
    token = pyjwt.encode(claims, private, algorithm=alg, headers={"kid": "k1"})
    public = private.public_key()
    jwk_dict = json.loads(pyjwt.algorithms.get_default_algorithms()[alg].to_jwk(public))
    jwk_dict.update(kid="k1", alg=alg)

    pyjwt_key = pyjwt.PyJWK(jwk_dict)
    rfc_key = rfc_jwk.import_key(jwk_dict)
    jc_key = jc_jwk.JWK(**jwk_dict)

    def with_pyjwt() -> Any:
        return pyjwt.decode(
            token, pyjwt_key.key, algorithms=[alg], audience="api", issuer="https://issuer.example"
        )

    def with_joserfc() -> Any:
        decoded = rfc_jwt.decode(token, rfc_key, algorithms=[alg])
        rfc_jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": "https://issuer.example"},
            aud={"essential": True, "value": "api"},
        ).validate(decoded.claims)
        return decoded.claims

    def with_jwcrypto() -> Any:
        checked = jc_jwt.JWT(
            jwt=token,
            key=jc_key,
            algs=[alg],
            check_claims={"iss": "https://issuer.example", "aud": "api"},
        )
        return json.loads(checked.claims)

    head, payload, sig_b64 = token.split(".")
    signing_input = f"{head}.{payload}".encode()
    signature = pyjwt.utils.base64url_decode(sig_b64)
    pyjwt_alg = pyjwt.algorithms.get_default_algorithms()[alg]
    rfc_alg = JWSRegistry.algorithms[alg]
    jc_alg = jc_jwa.JWA.signing_alg(alg)

    def sig_pyjwt() -> Any:
        assert pyjwt_alg.verify(signing_input, pyjwt_key.key, signature)

    def sig_joserfc() -> Any:
        assert rfc_alg.verify(signing_input, signature, rfc_key)

    def sig_jwcrypto() -> Any:
        jc_alg.verify(jc_key, signing_input, signature)  # raises when invalid

    def sig_floor() -> Any:
        if alg == "RS256":
            public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:  # JOSE carries ES signatures as r||s; converting them is part of the floor
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            public.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))

    return {
        "decode": {"pyjwt": with_pyjwt, "joserfc": with_joserfc, "jwcrypto": with_jwcrypto},
        "signature": {
            "pyjwt": sig_pyjwt,
            "joserfc": sig_joserfc,
            "jwcrypto": sig_jwcrypto,
            "(cryptography floor)": sig_floor,
        },
    }


def main() -> None:
    keys = {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
    }
    for alg, private in keys.items():
        for tier, cases in _cases(alg, private).items():
            results = {name: _time(fn) for name, fn in cases.items()}
            best = min(v for k, v in results.items() if not k.startswith("("))
            print(f"{alg} {tier}:")
            for name, micros in sorted(results.items(), key=lambda kv: kv[1]):
                print(f"  {name:21s} {micros:8.1f} us/verify  x{micros / best:.2f}")


if __name__ == "__main__":
    main()
