"""JSON Web Key Sets: parse a JWKS into public keys and the algorithms each one may verify.

Only asymmetric signing keys are kept: RSA (RS256/384/512, PS256/384/512, at least 2048
bits), EC (ES256/384/512, the curve decides) and OKP (EdDSA with Ed25519 or Ed448). A key
that declares ``alg`` verifies only that algorithm; one that does not verifies every
algorithm its type allows. Symmetric (``oct``) keys, encryption keys (``use: enc``) and
unknown key types are skipped, so HMAC can never be used with a published key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

__all__ = [
    "ALGORITHMS",
    "MAX_JWKS_BYTES",
    "MAX_KEYS",
    "JwksError",
    "Key",
    "PublicKey",
    "parse_jwks",
]

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS: Final[Mapping[str, str]] = MappingProxyType(
    {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
)
OKP_CURVES: Final = frozenset({"Ed25519", "Ed448"})
ALGORITHMS: Final = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS.values()) | {"EdDSA"}
MAX_JWKS_BYTES: Final = 1024 * 1024
MAX_KEYS: Final = 100
MIN_RSA_BITS: Final = 2048


class JwksError(ValueError):
    """A JWKS document is not usable. The message names what is wrong, never key material."""


@dataclass(frozen=True, slots=True)
class Key:
    """One public verification key from a JWKS."""

    kid: str | None
    public_key: PublicKey
    algorithms: frozenset[str]


def parse_jwks(text: str | bytes) -> Mapping[str, Key]:
    """Parse a JWKS JSON document into keys by ``kid``.

    A key without ``kid`` is stored under a name starting with NUL (never a real kid), so
    callers can tell it apart; it may verify a token whatever the token's ``kid``. Duplicate
    kids keep the first key. Raises JwksError for invalid JSON, a malformed key of a
    supported type, too many keys, or a set with no usable signing key.
    """
    if len(text) > MAX_JWKS_BYTES:
        raise JwksError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise JwksError(f"JWKS is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError('JWKS must be a JSON object with a "keys" list')
    entries: list[Any] = doc["keys"]
    if len(entries) > MAX_KEYS:
        raise JwksError(f"JWKS has more than {MAX_KEYS} keys")
    keys: dict[str, Key] = {}
    for index, entry in enumerate(entries):
        key = _parse_key(entry, index)
        if key is None:
            continue
        name = key.kid if key.kid is not None else f"\x00{index}"
        keys.setdefault(name, key)
    if not keys:
        raise JwksError("JWKS has no usable signing key (RSA, EC or OKP)")
    return MappingProxyType(keys)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_key(entry: Any, index: int) -> Key | None:
    if not isinstance(entry, dict):
        raise JwksError(f"keys[{index}] is not an object")
    kty = entry.get("kty")
    use = entry.get("use")
    if use is not None and use != "sig":
        return None
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwksError(f"keys[{index}].kid is not a string")
    alg = entry.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise JwksError(f"keys[{index}].alg is not a string")
    try:
        if kty == "RSA":
            allowed = RSA_ALGORITHMS
            public: PublicKey = _public(RSAAlgorithm.from_jwk(entry))
            assert isinstance(public, rsa.RSAPublicKey)
            if public.key_size < MIN_RSA_BITS:
                raise JwksError(f"keys[{index}] is an RSA key shorter than {MIN_RSA_BITS} bits")
        elif kty == "EC":
            crv_alg = EC_ALGORITHMS.get(entry.get("crv", ""))
            if crv_alg is None:
                return None
            allowed = frozenset({crv_alg})
            public = _public(ECAlgorithm.from_jwk(entry))
        elif kty == "OKP":
            if entry.get("crv") not in OKP_CURVES:
                return None
            allowed = frozenset({"EdDSA"})
            public = _public(OKPAlgorithm.from_jwk(entry))
        else:
            return None  # oct (HMAC) and unknown types are never used
    except JwksError:
        raise
    except Exception as exc:  # pyjwt raises InvalidKeyError, cryptography ValueError
        raise JwksError(f"keys[{index}] ({kty}) is malformed: {type(exc).__name__}") from None
    if alg is not None:
        if alg not in allowed:
            return None  # e.g. an RSA key for RSA-OAEP, or alg not matching the curve
        allowed = frozenset({alg})
    return Key(kid=kid, public_key=public, algorithms=allowed)


def _public(key: Any) -> PublicKey:
    """The public half: a JWKS that (wrongly) publishes private parts still verifies."""
    if isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        return key.public_key()
    if isinstance(
        key,
        rsa.RSAPublicKey
        | ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        return key
    raise JwksError(f"unsupported key object {type(key).__name__}")
