"""parse_jwt_rules: validation of a Tenant's jwtRules and Istio's defaults."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from extauthz.authn import TokenLocation, parse_jwt_rules
from extauthz.authn.rules import JwtRule
from extauthz.documents import load_documents
from extauthz.errors import DocumentError

PATH = ("spec", "jwtRules")
JWKS = json.dumps(
    {"keys": [{**ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(),
                                    as_dict=True), "kid": "k1"}]}
)  # fmt: skip


def parse(rules: Any) -> tuple[JwtRule, ...]:
    doc = {
        "apiVersion": "extauthz.io/v1",
        "kind": "Tenant",
        "metadata": {"name": "acme"},
        "spec": {"jwtRules": rules},
    }
    (document,) = load_documents(yaml.safe_dump(doc), "tenant.yaml")
    return parse_jwt_rules(document, PATH)


def rule(**fields: Any) -> dict[str, Any]:
    return {"issuer": "https://issuer.example", "jwksUri": "https://issuer.example/jwks", **fields}


def error_of(rules: Any) -> DocumentError:
    with pytest.raises(DocumentError) as info:
        parse(rules)
    return info.value


def test_defaults_follow_istio() -> None:
    """Without locations: Authorization with 'Bearer ' and ?access_token; token not forwarded."""
    (parsed,) = parse([rule()])
    assert parsed.locations == (
        TokenLocation("header", "authorization", "Bearer "),
        TokenLocation("param", "access_token"),
    )
    assert parsed.forward_original_token is False
    assert parsed.audiences == frozenset()
    assert parsed.timeout == 5.0


def test_all_fields_are_read() -> None:
    """Every Istio JWTRule field lands in the rule, header names lower-cased."""
    (parsed,) = parse(
        [
            rule(
                audiences=["api", "web"],
                fromHeaders=[{"name": "X-Token", "prefix": "Tok "}],
                fromParams=["t"],
                fromCookies=["session"],
                forwardOriginalToken=True,
                outputPayloadToHeader="X-Payload",
                outputClaimToHeaders=[{"header": "x-user", "claim": "sub"}],
                spaceDelimitedClaims=["roles"],
                timeout="1.5s",
            )
        ]
    )
    assert parsed.audiences == {"api", "web"}
    assert parsed.locations == (
        TokenLocation("header", "x-token", "Tok "),
        TokenLocation("param", "t"),
        TokenLocation("cookie", "session"),
    )
    assert parsed.forward_original_token is True
    assert parsed.output_payload_to_header == "x-payload"
    assert [(c.header, c.claim) for c in parsed.output_claim_to_headers] == [("x-user", "sub")]
    assert parsed.space_delimited_claims == {"roles"}
    assert parsed.timeout == 1.5


def test_absent_rules_are_empty() -> None:
    """A Tenant without jwtRules has no rules."""
    doc = {"apiVersion": "extauthz.io/v1", "kind": "Tenant", "metadata": {"name": "a"}}
    (document,) = load_documents(yaml.safe_dump(doc), "t.yaml")
    assert parse_jwt_rules(document, PATH) == ()


def test_inline_jwks_is_parsed() -> None:
    """An inline jwks string becomes keys by kid, with no jwksUri."""
    (parsed,) = parse([{"issuer": "i", "jwks": JWKS}])
    assert parsed.jwks_uri is None
    assert parsed.jwks is not None
    assert set(parsed.jwks) == {"k1"}


def test_loopback_http_jwks_uri_is_allowed() -> None:
    """http is accepted for 127.0.0.1, localhost and ::1 (local tests, sidecars)."""
    for uri in ("http://127.0.0.1:8080/jwks", "http://localhost/jwks", "http://[::1]:1/jwks"):
        (parsed,) = parse([rule(jwksUri=uri)])
        assert parsed.jwks_uri == uri


@pytest.mark.parametrize(
    ("rules", "field", "words"),
    [
        ("nope", "spec.jwtRules", "list"),
        (["x"], "spec.jwtRules[0]", "mapping"),
        ([rule(issuers="x")], "spec.jwtRules[0].issuers", "unknown field"),
        ([{"jwksUri": "https://a/j"}], "spec.jwtRules[0].issuer", "issuer"),
        ([rule(issuer=3)], "spec.jwtRules[0].issuer", "string"),
        ([rule(audiences="api")], "spec.jwtRules[0].audiences", "list"),
        ([rule(audiences=[1])], "spec.jwtRules[0].audiences", "list"),
        ([rule(jwksUri="http://issuer.example/jwks")], "spec.jwtRules[0].jwksUri", "https"),
        ([rule(jwksUri="ftp://127.0.0.1/jwks")], "spec.jwtRules[0].jwksUri", "https"),
        ([rule(jwksUri="https:///jwks")], "spec.jwtRules[0].jwksUri", "host"),
        ([rule(jwksUri=5)], "spec.jwtRules[0].jwksUri", "string"),
        ([{"issuer": "i"}], "spec.jwtRules[0].jwksUri", "required"),
        ([rule(jwks=JWKS)], "spec.jwtRules[0].jwks", "not both"),
        ([{"issuer": "i", "jwks": "{not json"}], "spec.jwtRules[0].jwks", "JSON"),
        ([{"issuer": "i", "jwks": '{"keys": []}'}], "spec.jwtRules[0].jwks", "usable"),
        (
            [{"issuer": "i", "jwks": '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'}],
            "spec.jwtRules[0].jwks",
            "usable",
        ),
        ([{"issuer": "i", "jwks": {"keys": []}}], "spec.jwtRules[0].jwks", "string"),
        ([rule(fromHeaders={"name": "a"})], "spec.jwtRules[0].fromHeaders", "list"),
        ([rule(fromHeaders=[{"prefix": "B "}])], "spec.jwtRules[0].fromHeaders[0].name", "header"),
        ([rule(fromHeaders=[{"name": "a b"}])], "spec.jwtRules[0].fromHeaders[0].name", "header"),
        (
            [rule(fromHeaders=[{"name": "a", "prefix": 1}])],
            "spec.jwtRules[0].fromHeaders[0].prefix",
            "string",
        ),
        (
            [rule(fromHeaders=[{"name": "a", "x": 1}])],
            "spec.jwtRules[0].fromHeaders[0].x",
            "unknown",
        ),
        ([rule(fromParams=[""])], "spec.jwtRules[0].fromParams", "non-empty"),
        ([rule(fromCookies="c")], "spec.jwtRules[0].fromCookies", "list"),
        ([rule(forwardOriginalToken="yes")], "spec.jwtRules[0].forwardOriginalToken", "true"),
        ([rule(outputPayloadToHeader="")], "spec.jwtRules[0].outputPayloadToHeader", "header"),
        (
            [rule(outputClaimToHeaders=[{"header": "x-u"}])],
            "spec.jwtRules[0].outputClaimToHeaders[0].claim",
            "claim",
        ),
        (
            [rule(outputClaimToHeaders=[{"header": "host", "claim": "sub"}])],
            "spec.jwtRules[0].outputClaimToHeaders[0].header",
            "cannot",
        ),
        ([rule(spaceDelimitedClaims=[3])], "spec.jwtRules[0].spaceDelimitedClaims", "list"),
        ([rule(timeout="5")], "spec.jwtRules[0].timeout", "duration"),
        ([rule(timeout="0s")], "spec.jwtRules[0].timeout", "more than 0"),
        ([rule(), rule()], "spec.jwtRules[1].issuer", "already used"),
    ],
)
def test_invalid_rules_name_the_field(rules: Any, field: str, words: str) -> None:
    """Each invalid value raises DocumentError naming the field, the file and a line."""
    error = error_of(rules)
    assert error.field == field
    assert words in error.message
    assert error.location is not None
    assert error.location.source == "tenant.yaml"
    assert error.location.line > 0


@pytest.mark.parametrize(
    "header",
    ["x-extauthz-tenant", "X-Extauthz-Principal", "x-extauthz-request-principal",
     "X-Forwarded-Client-Cert", "host", "Authorization"],
)  # fmt: skip
def test_claim_cannot_overwrite_identity_or_token_headers(header: str) -> None:
    """outputClaimToHeaders/outputPayloadToHeader refuse identity, host and token headers."""
    claim = error_of([rule(outputClaimToHeaders=[{"header": header, "claim": "sub"}])])
    assert "outputClaimToHeaders[0].header" in str(claim)
    payload = error_of([rule(outputPayloadToHeader=header)])
    assert "outputPayloadToHeader" in str(payload)


def test_claim_cannot_overwrite_pseudo_headers() -> None:
    """A pseudo-header (:authority, :path) is not a header a claim can be written to."""
    for header in (":authority", ":path"):
        assert "outputClaimToHeaders[0].header" in str(
            error_of([rule(outputClaimToHeaders=[{"header": header, "claim": "sub"}])])
        )


def test_claim_cannot_overwrite_the_rules_token_header() -> None:
    """A claim can't be written to the header this rule reads its token from."""
    located = {"fromHeaders": [{"name": "X-Token"}]}
    err = error_of([rule(**located, outputClaimToHeaders=[{"header": "x-token", "claim": "s"}])])
    assert "where this rule reads its token" in str(err)
    (parsed,) = parse([rule(**located, outputPayloadToHeader="authorization")])
    assert parsed.output_payload_to_header == "authorization"


def test_identity_prefix_covers_the_pipeline_headers() -> None:
    """Every header the pipeline sets as identity is refused as a claim output header."""
    from extauthz.pipeline import OWN_HEADERS

    for header in OWN_HEADERS:
        assert "identity" in str(error_of([rule(outputPayloadToHeader=header)]))
