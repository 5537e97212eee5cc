"""Authenticator: finding, verifying and mapping tokens, with real keys and real signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from extauthz.authn import Authenticator, AuthnResult, JwksCache, parse_jwt_rules
from extauthz.documents import load_documents
from extauthz.errors import Reason
from extauthz.model import RequestView

ISS = "https://issuer.example"
OTHER_ISS = "https://other.example"
NOW = 1_700_000_000.0

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
ROGUE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(private: Any, kid: str, **extra: Any) -> dict[str, Any]:
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        data = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**data, "kid": kid, **extra}


JWKS = json.dumps({"keys": [jwk(RSA_KEY, "rsa"), jwk(EC_KEY, "ec"), jwk(ED_KEY, "ed")]})


def sign(
    claims: dict[str, Any] | None = None,
    *,
    key: Any = RSA_KEY,
    alg: str = "RS256",
    kid: str | None = "rsa",
    **overrides: Any,
) -> str:
    payload = {"iss": ISS, "sub": "alice", "aud": "api", "exp": NOW + 3600, "iat": NOW}
    payload.update(claims or {})
    payload.update(overrides)
    payload = {k: v for k, v in payload.items() if v is not None}  # None: leave the claim out
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def make_rules(*rules: dict[str, Any]) -> Any:
    doc = {
        "apiVersion": "extauthz.io/v1",
        "kind": "Tenant",
        "metadata": {"name": "acme"},
        "spec": {"jwtRules": list(rules)},
    }
    (document,) = load_documents(yaml.safe_dump(doc), "tenant.yaml")
    return parse_jwt_rules(document, ("spec", "jwtRules"))


def authenticator(*rules: dict[str, Any], **kwargs: Any) -> Authenticator:
    if not rules:
        rules = ({"issuer": ISS, "jwks": JWKS, "audiences": ["api"]},)
    return Authenticator(make_rules(*rules), JwksCache(), **kwargs)


def bearer(token: str, **headers: str) -> RequestView:
    return RequestView(path="/", headers={"authorization": f"Bearer {token}", **headers})


def check(auth: Authenticator, view: RequestView, now: float = NOW) -> AuthnResult:
    return auth.authenticate(view, now=now)


def assert_invalid(result: AuthnResult) -> None:
    assert result.error is not None
    assert result.error.reason is Reason.JWT_INVALID
    assert result.claims is None
    assert result.request_principal is None


# --- valid tokens --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg", "kid"),
    [
        (RSA_KEY, "RS256", "rsa"),
        (RSA_KEY, "RS512", "rsa"),
        (RSA_KEY, "PS256", "rsa"),
        (EC_KEY, "ES256", "ec"),
        (ED_KEY, "EdDSA", "ed"),
    ],
)
def test_valid_token_gives_claims_and_principal(key: Any, alg: str, kid: str) -> None:
    """A token signed by a JWKS key verifies: claims, iss/sub principal, issuer, no error."""
    result = check(authenticator(), bearer(sign(key=key, alg=alg, kid=kid)))
    assert result.error is None
    assert result.claims is not None
    assert result.claims["sub"] == "alice"
    assert result.request_principal == f"{ISS}/alice"
    assert result.issuer == ISS


def test_no_token_is_no_principal_and_no_error() -> None:
    """Without a token anywhere the rules look, the request goes on unauthenticated."""
    result = check(authenticator(), RequestView(path="/x", headers={"x-other": "1"}))
    assert result == AuthnResult()


def test_non_bearer_authorization_is_no_token() -> None:
    """An Authorization header without the configured prefix carries no token."""
    result = check(authenticator(), RequestView(headers={"authorization": "Basic dXNlcjpwdw=="}))
    assert result.claims is None
    assert result.error is None


def test_bearer_prefix_is_case_insensitive() -> None:
    """'bearer <token>' is read like 'Bearer <token>' (auth schemes are case-insensitive)."""
    result = check(authenticator(), RequestView(headers={"authorization": f"bearer {sign()}"}))
    assert result.request_principal == f"{ISS}/alice"


def test_token_without_kid_tries_the_keys() -> None:
    """A token without kid verifies against the key that signed it."""
    result = check(authenticator(), bearer(sign(key=EC_KEY, alg="ES256", kid=None)))
    assert result.request_principal == f"{ISS}/alice"


def test_audience_list_matches_any() -> None:
    """aud as a list is accepted when one of its entries is configured."""
    result = check(authenticator(), bearer(sign(aud=["other", "api"])))
    assert result.error is None


def test_no_audiences_configured_accepts_any_audience() -> None:
    """Without audiences in the rule, aud is not checked (Istio)."""
    auth = authenticator({"issuer": ISS, "jwks": JWKS})
    assert check(auth, bearer(sign(aud="anything"))).error is None


def test_clock_skew_accepts_just_expired_token() -> None:
    """exp within clock_skew of now is still accepted."""
    result = check(authenticator(clock_skew=60), bearer(sign(exp=NOW - 30)))
    assert result.error is None


def test_rule_is_chosen_by_issuer() -> None:
    """With two rules, the token's iss picks the rule whose keys verify it."""
    other = json.dumps({"keys": [jwk(ROGUE_KEY, "other")]})
    auth = authenticator(
        {"issuer": ISS, "jwks": JWKS},
        {"issuer": OTHER_ISS, "jwks": other},
    )
    result = check(auth, bearer(sign(key=ROGUE_KEY, kid="other", iss=OTHER_ISS)))
    assert result.request_principal == f"{OTHER_ISS}/alice"
    assert result.issuer == OTHER_ISS


# --- hostile and invalid tokens ----------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"


def good_payload() -> dict[str, Any]:
    return {"iss": ISS, "sub": "alice", "aud": "api", "exp": NOW + 3600}


def hmac_with_public_key() -> str:
    """HS256 whose secret is the RSA public key's PEM: the classic key-confusion attack."""
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = unsigned({"alg": "HS256", "kid": "rsa", "typ": "JWT"}, good_payload())
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def tampered() -> str:
    head, _, sig = sign().split(".")
    payload = b64(json.dumps({**good_payload(), "sub": "admin"}).encode())
    return f"{head}.{payload}.{sig}"


HOSTILE = {
    "bad signature (other key, same kid)": lambda: sign(key=ROGUE_KEY),
    "tampered payload": tampered,
    "alg none": lambda: unsigned({"alg": "none", "kid": "rsa"}, good_payload()) + ".",
    "HS256 with the public key": hmac_with_public_key,
    "RS256 header on an EC key": lambda: sign(key=RSA_KEY, alg="RS256", kid="ec"),
    "ES384 on a P-256 key": lambda: sign(
        key=ec.generate_private_key(ec.SECP384R1()), alg="ES384", kid="ec"
    ),
    "unknown kid": lambda: sign(kid="nope"),
    "expired": lambda: sign(exp=NOW - 120),
    "not yet valid": lambda: sign(nbf=NOW + 120),
    "exp not a number": lambda: sign(exp="tomorrow"),
    "issuer not configured": lambda: sign(iss="https://evil.example"),
    "no issuer": lambda: sign(iss=None),
    "audience not allowed": lambda: sign(aud="other"),
    "no audience": lambda: sign(aud=None),
    "two segments": lambda: ".".join(sign().split(".")[:2]),
    "four segments": lambda: sign() + ".abc",
    "padding in segment": lambda: sign().replace(".", "=.", 1),
    "header not JSON": lambda: b64(b"{nope") + "." + sign().split(".", 1)[1],
    "header a JSON list": lambda: b64(b"[1]") + "." + sign().split(".", 1)[1],
    "crit header": lambda: jwt.encode(
        good_payload(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa", "crit": ["exp"]}
    ),
    "oversized": lambda: sign(pad="x" * 17_000),
    "non-ASCII": lambda: sign() + "é",
}


def exp_infinite() -> str:
    head = b64(json.dumps({"alg": "RS256", "kid": "rsa"}).encode())
    body = json.dumps({**good_payload(), "exp": 0}).replace('"exp": 0', '"exp": 1e999')
    signing_input = f"{head}.{b64(body.encode())}"
    sig = jwt.algorithms.RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input.encode(), RSA_KEY)
    return f"{signing_input}.{b64(sig)}"


HOSTILE["exp infinite"] = exp_infinite


WHY = {  # the word the detail must contain: each token fails for its own reason
    "ES384 on a P-256 key": "algorithm does not match",
    "HS256 with the public key": "algorithm not allowed",
    "RS256 header on an EC key": "algorithm does not match",
    "alg none": "algorithm not allowed",
    "audience not allowed": "audience",
    "bad signature (other key, same kid)": "signature invalid",
    "crit header": "critical",
    "exp infinite": "exp is out of range",
    "exp not a number": "exp is not a number",
    "expired": "expired",
    "four segments": "compact JWS",
    "header a JSON list": "JSON object",
    "header not JSON": "not JSON",
    "issuer not configured": "issuer",
    "no audience": "audience",
    "no issuer": "issuer",
    "non-ASCII": "ASCII",
    "not yet valid": "not yet valid",
    "oversized": "too large",
    "padding in segment": "base64url",
    "tampered payload": "signature invalid",
    "two segments": "compact JWS",
    "unknown kid": "unknown kid",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_token_is_invalid(name: str) -> None:
    """Every malformed, forged, misused or out-of-window token is JWT_INVALID, never claims."""
    token = HOSTILE[name]()
    result = check(authenticator(), bearer(token))
    assert_invalid(result)
    assert result.error is not None
    assert WHY[name] in result.error.detail
    assert token not in result.error.detail
    assert len(result.error.detail) < 80


def test_oversized_token_is_rejected_before_parsing() -> None:
    """A 17 KiB token is rejected by size, whatever it contains."""
    result = check(authenticator(), bearer("a" * 17_000))
    assert_invalid(result)
    assert result.error is not None
    assert "large" in result.error.detail


def test_keys_not_fetched_yet_is_invalid() -> None:
    """A rule whose remote JWKS was never fetched rejects tokens rather than skipping checks."""
    auth = authenticator({"issuer": ISS, "jwksUri": "https://issuer.example/jwks"})
    assert_invalid(check(auth, bearer(sign())))


def test_token_in_other_rules_location_is_invalid() -> None:
    """A token found only where another issuer's rule looks is not accepted for its issuer."""
    other = json.dumps({"keys": [jwk(ROGUE_KEY, "other")]})
    auth = authenticator(
        {"issuer": ISS, "jwks": JWKS, "fromHeaders": [{"name": "x-a"}]},
        {"issuer": OTHER_ISS, "jwks": other, "fromHeaders": [{"name": "x-b"}]},
    )
    result = check(auth, RequestView(headers={"x-b": sign()}))
    assert_invalid(result)


def test_cached_token_from_wrong_location_is_invalid() -> None:
    """A verified, cached token presented in another rule's location is still refused."""
    other = json.dumps({"keys": [jwk(ROGUE_KEY, "other")]})
    auth = authenticator(
        {"issuer": ISS, "jwks": JWKS, "fromHeaders": [{"name": "x-a"}]},
        {"issuer": OTHER_ISS, "jwks": other, "fromHeaders": [{"name": "x-b"}]},
    )
    token = sign()
    assert check(auth, RequestView(headers={"x-a": token})).error is None
    assert_invalid(check(auth, RequestView(headers={"x-b": token})))


@settings(max_examples=300, deadline=None)
@given(garbage=st.text(max_size=300))
def test_garbage_authorization_never_raises_or_authenticates(garbage: str) -> None:
    """Arbitrary header text never raises and never yields claims."""
    auth = GARBAGE_AUTH
    for value in (garbage, f"Bearer {garbage}"):
        result = auth.authenticate(RequestView(headers={"authorization": value}), now=NOW)
        assert result.claims is None
        assert result.request_principal is None


@settings(max_examples=200, deadline=None)
@given(
    segments=st.lists(
        st.text(alphabet="ABCDEFabcdef0123456789-_", max_size=40), min_size=3, max_size=3
    )
)
def test_garbage_base64_segments_never_authenticate(segments: list[str]) -> None:
    """Three base64url-looking segments that are not a signed token never yield claims."""
    result = GARBAGE_AUTH.authenticate(bearer(".".join(segments)), now=NOW)
    assert result.claims is None


GARBAGE_AUTH = authenticator()


# --- ambiguity and locations -------------------------------------------------------------


def test_different_tokens_in_header_and_param_are_ambiguous() -> None:
    """A header token and a different query token: JWT_AMBIGUOUS, no claims."""
    view = RequestView(
        path=f"/p?access_token={sign(sub='bob')}",
        headers={"authorization": f"Bearer {sign()}"},
    )
    result = check(authenticator(), view)
    assert result.error is not None
    assert result.error.reason is Reason.JWT_AMBIGUOUS
    assert result.claims is None


def test_repeated_authorization_headers_with_different_tokens_are_ambiguous() -> None:
    """Two Authorization values (joined by ',') carrying different tokens are ambiguous."""
    view = RequestView(headers={"authorization": f"Bearer {sign()},Bearer {sign(sub='bob')}"})
    result = check(authenticator(), view)
    assert result.error is not None
    assert result.error.reason is Reason.JWT_AMBIGUOUS


def test_same_token_in_two_places_is_fine() -> None:
    """The same token in the header and the query string is one token."""
    token = sign()
    view = RequestView(
        path=f"/p?access_token={token}", headers={"authorization": f"Bearer {token}"}
    )
    assert check(authenticator(), view).request_principal == f"{ISS}/alice"


def test_from_headers_with_prefix() -> None:
    """fromHeaders with a custom prefix strips it; the default locations are then not used."""
    auth = authenticator(
        {"issuer": ISS, "jwks": JWKS, "fromHeaders": [{"name": "x-jwt", "prefix": "Tok "}]}
    )
    assert check(auth, RequestView(headers={"x-jwt": f"Tok {sign()}"})).error is None
    assert check(auth, bearer(sign())) == AuthnResult()


def test_default_query_param_access_token() -> None:
    """Without locations, ?access_token= is read (Istio's default)."""
    view = RequestView(path=f"/p?a=1&access_token={sign()}&b=2")
    assert check(authenticator(), view).request_principal == f"{ISS}/alice"


def test_from_params_is_url_decoded() -> None:
    """fromParams reads the named query parameter, URL-decoded."""
    token = sign()
    encoded = token.replace(".", "%2E").replace("-", "%2D")
    auth = authenticator({"issuer": ISS, "jwks": JWKS, "fromParams": ["tok"]})
    result = check(auth, RequestView(path=f"/p?x=y&tok={encoded}"))
    assert result.request_principal == f"{ISS}/alice"


def test_from_cookies() -> None:
    """fromCookies reads the named cookie among others."""
    auth = authenticator({"issuer": ISS, "jwks": JWKS, "fromCookies": ["session"]})
    view = RequestView(headers={"cookie": f"theme=dark; session={sign()}; lang=en"})
    assert check(auth, view).request_principal == f"{ISS}/alice"


# --- forwarding and output headers -------------------------------------------------------


def test_token_header_removed_by_default() -> None:
    """forwardOriginalToken false (the default): the token's header is removed."""
    result = check(authenticator(), bearer(sign()))
    assert result.headers_to_remove == ("authorization",)


def test_forward_original_token_keeps_header() -> None:
    """forwardOriginalToken true: nothing is removed."""
    auth = authenticator({"issuer": ISS, "jwks": JWKS, "forwardOriginalToken": True})
    assert check(auth, bearer(sign())).headers_to_remove == ()


def test_output_claim_to_headers() -> None:
    """Claims are copied to headers: strings, numbers, booleans, nested and list claims."""
    auth = authenticator(
        {
            "issuer": ISS,
            "jwks": JWKS,
            "forwardOriginalToken": True,
            "outputClaimToHeaders": [
                {"header": "x-sub", "claim": "sub"},
                {"header": "x-level", "claim": "level"},
                {"header": "x-admin", "claim": "admin"},
                {"header": "x-org", "claim": "org.name"},
                {"header": "x-groups", "claim": "groups"},
                {"header": "x-missing", "claim": "missing"},
            ],
        }
    )
    token = sign(level=3, admin=True, org={"name": "acme"}, groups=["a", "b"])
    result = check(auth, bearer(token))
    assert result.headers_to_add == (
        ("x-sub", "alice"),
        ("x-level", "3"),
        ("x-admin", "true"),
        ("x-org", "acme"),
        ("x-groups", "a,b"),
    )
    assert result.headers_to_remove == ("x-missing",)


def test_claim_with_newline_is_not_emitted() -> None:
    """A claim value with CR/LF never becomes a header value (no header injection)."""
    auth = authenticator(
        {"issuer": ISS, "jwks": JWKS, "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]}
    )
    result = check(auth, bearer(sign(sub="alice\r\nx-admin: true")))
    assert result.error is None
    assert result.headers_to_add == ()
    assert "x-sub" in result.headers_to_remove


def test_output_headers_removed_without_token() -> None:
    """Without a token, the output headers are removed so a client cannot forge them."""
    auth = authenticator(
        {
            "issuer": ISS,
            "jwks": JWKS,
            "outputPayloadToHeader": "x-jwt-payload",
            "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}],
        }
    )
    result = check(auth, RequestView(headers={"x-sub": "admin"}))
    assert result.headers_to_remove == ("x-jwt-payload", "x-sub")
    assert result.headers_to_add == ()


def test_output_payload_to_header_is_base64url_payload() -> None:
    """outputPayloadToHeader carries the payload JSON, base64url, as Envoy forwards it."""
    auth = authenticator({"issuer": ISS, "jwks": JWKS, "outputPayloadToHeader": "x-jwt-payload"})
    token = sign()
    result = check(auth, bearer(token))
    ((name, value),) = result.headers_to_add
    assert name == "x-jwt-payload"
    decoded = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    assert decoded == jwt.decode(token, options={"verify_signature": False})


# --- cache --------------------------------------------------------------------------------


def test_second_call_is_a_cache_hit() -> None:
    """The same token twice: the second result comes from the cache, with the same claims."""
    auth = authenticator()
    token = sign()
    first = check(auth, bearer(token))
    second = check(auth, bearer(token))
    assert first.cache_hit is False
    assert second.cache_hit is True
    assert second.claims == first.claims
    assert second.headers_to_remove == first.headers_to_remove


def test_cache_entry_not_used_past_exp() -> None:
    """Past exp + skew a cached token is not a hit: it is re-checked and rejected."""
    auth = authenticator(clock_skew=10)
    token = sign(exp=NOW + 100)
    assert check(auth, bearer(token)).error is None
    assert check(auth, bearer(token), now=NOW + 105).cache_hit is True
    late = check(auth, bearer(token), now=NOW + 111)
    assert late.cache_hit is False
    assert_invalid(late)


def test_cache_entry_not_used_before_nbf() -> None:
    """A cached token is not accepted at a time before its nbf - skew."""
    auth = authenticator(clock_skew=10)
    token = sign(nbf=NOW)
    assert check(auth, bearer(token)).error is None
    assert_invalid(check(auth, bearer(token), now=NOW - 20))


def test_cache_is_bounded() -> None:
    """With cache_size 1, a second token evicts the first (no hit on its return)."""
    auth = authenticator(cache_size=1)
    a, b = sign(), sign(sub="bob")
    check(auth, bearer(a))
    check(auth, bearer(b))
    assert check(auth, bearer(a)).cache_hit is False


def test_cached_token_with_another_signature_is_verified_afresh() -> None:
    """A cached token's header and payload under another signature miss the cache, and fail."""
    auth = authenticator()
    token = sign()
    assert check(auth, bearer(token)).error is None
    head, payload, _ = token.split(".")
    forged = f"{head}.{payload}.{sign(sub='bob').split('.')[2]}"
    result = check(auth, bearer(forged))
    assert result.cache_hit is False
    assert_invalid(result)
    assert check(auth, bearer(token)).cache_hit is True


def test_cache_hit_follows_where_the_token_was_found() -> None:
    """The same cached token in another header removes that header, not the first one."""
    auth = authenticator(
        {"issuer": ISS, "jwks": JWKS, "fromHeaders": [{"name": "x-a"}, {"name": "x-b"}]}
    )
    token = sign()
    first = check(auth, RequestView(path="/", headers={"x-a": token}))
    hits = [check(auth, RequestView(path="/", headers={name: token})) for name in ("x-b", "x-a")]
    assert first.cache_hit is False
    assert [hit.cache_hit for hit in hits] == [True, True]
    assert "x-b" in hits[0].headers_to_remove
    assert "x-a" not in hits[0].headers_to_remove
    assert hits[1].headers_to_remove == first.headers_to_remove


def test_authenticate_is_fast_on_cache_hit() -> None:
    """A cache hit costs no signature check: 2000 hits take well under a second."""
    auth = authenticator()
    view = bearer(sign())
    check(auth, view)
    start = time.perf_counter()
    for _ in range(2000):
        assert auth.authenticate(view, now=NOW).cache_hit
    assert time.perf_counter() - start < 1.0


def test_properties_union_over_rules() -> None:
    """jwks_uris and space_delimited_claims are the union over the rules."""
    auth = authenticator(
        {"issuer": ISS, "jwksUri": "https://a.example/jwks", "spaceDelimitedClaims": ["roles"]},
        {"issuer": OTHER_ISS, "jwksUri": "https://b.example/jwks", "spaceDelimitedClaims": ["x"]},
    )
    assert auth.jwks_uris == {"https://a.example/jwks", "https://b.example/jwks"}
    assert auth.space_delimited_claims == {"roles", "x"}


def test_non_canonical_base64url_is_invalid() -> None:
    """A signature whose last character differs only in padding bits is refused: one token
    has one spelling (PyJWT refuses it too), so nothing keyed on its text sees two tokens."""
    token = sign(key=EC_KEY, alg="ES256", kid="ec")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    head, payload, signature = token.split(".")
    assert len(signature) % 4 == 2  # 64 bytes: the last character holds 4 padding bits
    twin = signature[:-1] + alphabet[alphabet.index(signature[-1]) ^ 1]
    assert check(authenticator(), bearer(token)).error is None
    result = check(authenticator(), bearer(f"{head}.{payload}.{twin}"))
    assert_invalid(result)
    assert result.error is not None
    assert "canonical" in result.error.detail
