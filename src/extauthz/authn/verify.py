"""Compact JWS parsing, signature and time checks. Pure functions, no I/O.

extauthz parses the compact serialization itself (it needs the header and the unverified
``iss`` before it knows which rule and keys apply) and calls pyjwt's algorithm objects only
for the signature primitive; ``bench/jose_libs.py`` measures why.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from jwt.algorithms import (
    Algorithm,
    ECAlgorithm,
    OKPAlgorithm,
    RSAAlgorithm,
    RSAPSSAlgorithm,
)

from extauthz.authn.keys import ALGORITHMS, Key

__all__ = [
    "MAX_CLAIM_DEPTH",
    "MAX_TOKEN_BYTES",
    "InvalidToken",
    "ParsedToken",
    "check_times",
    "parse_token",
    "verify_signature",
]

MAX_TOKEN_BYTES: Final = 16 * 1024
MAX_CLAIM_DEPTH: Final = 16  # nesting of objects and arrays in the header and the payload
_B64URL: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

_SIGNERS: Final[Mapping[str, Algorithm]] = MappingProxyType(
    {
        "RS256": RSAAlgorithm(RSAAlgorithm.SHA256),
        "RS384": RSAAlgorithm(RSAAlgorithm.SHA384),
        "RS512": RSAAlgorithm(RSAAlgorithm.SHA512),
        "PS256": RSAPSSAlgorithm(RSAPSSAlgorithm.SHA256),
        "PS384": RSAPSSAlgorithm(RSAPSSAlgorithm.SHA384),
        "PS512": RSAPSSAlgorithm(RSAPSSAlgorithm.SHA512),
        "ES256": ECAlgorithm(ECAlgorithm.SHA256),
        "ES384": ECAlgorithm(ECAlgorithm.SHA384),
        "ES512": ECAlgorithm(ECAlgorithm.SHA512),
        "EdDSA": OKPAlgorithm(),
    }
)
assert frozenset(_SIGNERS) == ALGORITHMS


class InvalidToken(Exception):
    """The token cannot be accepted. ``detail`` is short and never contains the token."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ParsedToken:
    """A compact JWS split and decoded, not yet verified."""

    alg: str
    kid: str | None
    payload: Mapping[str, Any]
    payload_segment: str  # base64url, as in the token (outputPayloadToHeader forwards it)
    signing_input: bytes
    signature: bytes


def parse_token(token: str) -> ParsedToken:
    """Split and decode a compact JWS. Raises InvalidToken for anything malformed.

    Rejects: more than MAX_TOKEN_BYTES, not three base64url segments (no padding), a
    header or payload that is not a JSON object (duplicate keys, NaN and Infinity are
    rejected too) or that nests objects and arrays deeper than MAX_CLAIM_DEPTH, an ``alg``
    outside the asymmetric set (so ``none`` and HMAC), and any ``crit`` header (no
    extension is understood).
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken("token too large")
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidToken("token is not ASCII") from None
    parts = raw.split(b".")
    if len(parts) != 3:
        raise InvalidToken("token is not a compact JWS")
    head_b64, payload_b64, sig_b64 = parts
    header = _json_object(_b64decode(head_b64), "header")
    payload = _json_object(_b64decode(payload_b64), "payload")
    signature = _b64decode(sig_b64)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise InvalidToken("algorithm not allowed")
    if "crit" in header:
        raise InvalidToken("critical header extensions are not supported")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidToken("kid is not a string")
    return ParsedToken(
        alg=alg,
        kid=kid,
        payload=MappingProxyType(payload),
        payload_segment=payload_b64.decode("ascii"),
        signing_input=raw[: len(head_b64) + 1 + len(payload_b64)],
        signature=signature,
    )


def verify_signature(token: ParsedToken, candidates: Iterable[Key]) -> Key:
    """The first candidate key that allows the token's alg and verifies its signature."""
    signer = _SIGNERS[token.alg]
    allowed = False
    for key in candidates:
        if token.alg not in key.algorithms:
            continue
        allowed = True
        try:
            ok = signer.verify(token.signing_input, key.public_key, token.signature)
        except Exception:  # a malformed signature is just a failed verification
            ok = False
        if ok:
            return key
    raise InvalidToken("signature invalid" if allowed else "algorithm does not match the key")


def check_times(
    payload: Mapping[str, Any], now: float, skew: float
) -> tuple[float | None, float | None]:
    """``exp`` and ``nbf`` (finite numbers when present) against ``now`` with ``skew`` seconds.

    Returns them as floats, for the cache window.
    """
    exp = _numeric(payload, "exp")
    if exp is not None and now > exp + skew:
        raise InvalidToken("token expired")
    nbf = _numeric(payload, "nbf")
    if nbf is not None and now < nbf - skew:
        raise InvalidToken("token not yet valid")
    return exp, nbf


def _numeric(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"{name} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidToken(f"{name} is out of range") from None
    if not math.isfinite(number):
        raise InvalidToken(f"{name} is out of range")
    return number


def _b64decode(segment: bytes) -> bytes:
    if not _B64URL.issuperset(segment):
        raise InvalidToken("token is not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("token is not base64url") from None
    # One spelling per token: set padding bits in the last character (RFC 4648 3.5) would let
    # a token be written 16 ways, and anything keyed on its text would see 16 tokens.
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment:
        raise InvalidToken("token is not canonical base64url")
    return raw


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise InvalidToken(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"{what} is not a JSON object")
    if _too_deep(value):
        raise InvalidToken(f"{what} nested deeper than {MAX_CLAIM_DEPTH}")
    return value


def _too_deep(value: dict[str, Any]) -> bool:
    """Objects and arrays nested more than MAX_CLAIM_DEPTH deep (the top object is 1)."""
    level: list[Any] = [value]
    for _ in range(MAX_CLAIM_DEPTH):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(name)
