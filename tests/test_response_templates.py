"""Responses copied from the ones kept per outcome are the responses built afresh."""

from __future__ import annotations

import pytest
from envoy.service.auth.v3 import external_auth_pb2

from extauthz import response
from extauthz.errors import Reason
from extauthz.outcome import OUTCOME_FIELDS, Outcome
from extauthz.policy import RuleRef, ShadowResult

OUTCOMES = [
    Outcome(
        True,
        Reason.ALLOWED,
        200,
        tenant="t",
        policy="ns/allow",
        rule=0,
        principal="spiffe://td/ns/a/sa/b",
        request_principal="https://issuer/alice",
        headers_to_add=(("x-extauthz-tenant", "t"), ("x-user", "alice\tsmith")),
        headers_to_remove=("authorization",),
        audits=("ns/audit[0]",),
        version="v7",
    ),
    Outcome(False, Reason.NO_ALLOW_MATCH, 403, tenant="t", detail="no ALLOW policy matched"),
    Outcome(False, Reason.JWT_INVALID, 401, tenant="t", detail="bad signature"),
    Outcome(False, Reason.INTERNAL, 500, detail="odd status"),
    Outcome(
        True,
        Reason.ALLOWED,
        200,
        tenant="t",
        shadow=ShadowResult(
            False, Reason.POLICY_DENIED, "ns/dry", 1, RuleRef("ns/dry", 1), None, ()
        ),
    ),
    Outcome(
        True,
        Reason.ALLOWED,
        200,
        tenant="t",
        ratelimit="per-user/0",
        client_headers=(("ratelimit", '"per-user/0";r=7;t=3'),),
    ),
    Outcome(
        False,
        Reason.RATE_LIMITED,
        429,
        tenant="t",
        ratelimit="per-user/0",
        client_headers=(("retry-after", "3"), ("ratelimit", '"per-user/0";r=0;t=3')),
    ),
]


def fresh(outcome: Outcome, decision_id: str) -> bytes:
    return response._build(outcome, decision_id).SerializeToString(deterministic=True)


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_copied_response_serializes_like_a_fresh_one(outcome: Outcome) -> None:
    """Built twice (the second from the kept one), a response is the fresh one (same
    deterministic bytes: map entries may go out in another order, which means the same)."""
    for decision_id in ("first-id", "second-id", ""):
        built = response.build_response(outcome, decision_id)
        assert built.SerializeToString(deterministic=True) == fresh(outcome, decision_id)
        assert built.dynamic_metadata.fields["decision_id"].string_value == decision_id


@pytest.mark.parametrize(
    "decision_id",
    ["", "a", "x" * 104, "x" * 105, "x" * 128, "y" * 300, "z" * 20_000, "\u00e9\u4e2d" * 50],
)
def test_decision_id_of_every_length_is_merged_into_the_kept_bytes(decision_id: str) -> None:
    """The appended decision_id (its lengths are varints of one, two and three bytes across
    these) parses into the one dynamic_metadata, next to the kept fields."""
    for outcome in OUTCOMES[:2]:
        data = response.encode_response(outcome, decision_id)
        parsed = external_auth_pb2.CheckResponse.FromString(data)
        assert parsed.SerializeToString(deterministic=True) == fresh(outcome, decision_id)
        assert parsed.dynamic_metadata.fields["decision_id"].string_value == decision_id


def test_decision_id_with_a_lone_surrogate_is_refused() -> None:
    """No bytes for an id protobuf could not carry (the servicer turns this into a deny)."""
    with pytest.raises(UnicodeEncodeError):
        response.encode_response(OUTCOMES[0], "\ud800")


def test_detail_and_cache_hit_do_not_change_the_response() -> None:
    """Outcomes differing only in detail or jwt_cache_hit get the same response."""
    base = OUTCOMES[2]
    other = base.replace(detail="another detail", jwt_cache_hit=True)
    assert response.build_response(other, "d").SerializeToString(
        deterministic=True
    ) == response.build_response(base, "d").SerializeToString(deterministic=True)


def test_changing_a_returned_response_leaves_the_next_one_alone() -> None:
    """A caller mutating its response cannot alter what the next Check gets."""
    outcome = OUTCOMES[0]
    first = response.build_response(outcome, "a")
    first.ok_response.headers.add().header.key = "x-injected"
    first.dynamic_metadata.fields["decision"].string_value = "deny"
    assert response.build_response(outcome, "b").SerializeToString(deterministic=True) == fresh(
        outcome, "b"
    )


def test_invalid_header_is_refused_every_time() -> None:
    """A header Envoy would refuse raises on every call, never served from a kept response."""
    outcome = OUTCOMES[0].replace(headers_to_add=(("x-user", "a\r\nb"),))
    for _ in range(2):
        with pytest.raises(response.InvalidHeader):
            response.build_response(outcome, "d")


def test_kept_responses_are_bounded_in_entries_and_bytes() -> None:
    """At most `entries` responses and `max_bytes` of them are kept; a large one is not."""
    templates = response._Templates(entries=3, max_bytes=2000, max_entry_bytes=900)
    for n in range(10):
        outcome = OUTCOMES[0].replace(request_principal=f"https://issuer/user{n}")
        templates.put(response._response_key(outcome), response._template(outcome))
    assert len(templates) <= 3
    assert 0 < templates.total_bytes <= 2000
    big = OUTCOMES[0].replace(headers_to_add=(("x-claims", "x" * 1000),))
    templates.put(response._response_key(big), response._template(big))
    assert templates.get(response._response_key(big)) is None


@pytest.mark.parametrize("allowed", [True, False])
def test_rate_limit_headers_are_added_to_each_copy(allowed: bool) -> None:
    """Outcomes differing only in their RateLimit headers share one kept response, and each
    response carries its own headers."""
    base = Outcome(
        allowed,
        Reason.ALLOWED if allowed else Reason.RATE_LIMITED,
        200 if allowed else 429,
        tenant="rl",
        ratelimit="q/0",
    )
    kept = len(response._templates)
    for remaining in range(5):
        outcome = base.replace(client_headers=(("ratelimit", f'"q/0";r={remaining};t=9'),))
        built = response.build_response(outcome, "d")
        assert built.SerializeToString(deterministic=True) == fresh(outcome, "d")
        headers = (
            built.ok_response.response_headers_to_add if allowed else built.denied_response.headers
        )
        assert [h.header.value for h in headers if h.header.key == "ratelimit"] == [
            f'"q/0";r={remaining};t=9'
        ]
    assert len(response._templates) == kept + 1


def test_every_field_a_response_carries_is_in_the_key() -> None:
    """Outcomes differing in any field but detail, jwt_cache_hit and client_headers never
    share a kept response: each such change moves the key; the three that leave it alone
    leave the kept part of the response alone too."""
    base = OUTCOMES[0]
    changed = {
        "allowed": False,
        "reason": Reason.POLICY_DENIED,
        "status": 401,
        "tenant": "other",
        "policy": "ns/other",
        "rule": 3,
        "principal": "spiffe://td/ns/x/sa/y",
        "request_principal": "https://issuer/bob",
        "detail": "other",
        "headers_to_add": (("x-user", "bob"),),
        "headers_to_remove": (),
        "audits": (),
        "shadow": OUTCOMES[4].shadow,
        "jwt_cache_hit": False,
        "version": "v8",
        "ratelimit": "q/1",
        "client_headers": (("ratelimit", "x"),),
    }
    assert set(changed) == set(OUTCOME_FIELDS)
    for name, value in changed.items():
        other = base.replace(**{name: value})
        assert getattr(other, name) == value != getattr(base, name)
        same_key = response._response_key(other) == response._response_key(base)
        assert same_key == (name in {"detail", "jwt_cache_hit", "client_headers"}), name
        if same_key:
            assert fresh(other.replace(client_headers=()), "d") == fresh(base, "d"), name


def test_outcomes_compare_and_hash_by_value() -> None:
    a = OUTCOMES[0]
    b = a.replace()
    assert a is not b
    assert a == b
    assert hash(a) == hash(b)
    assert a != a.replace(rule=1)
    assert repr(a).startswith("Outcome(allowed=True, reason=")
    with pytest.raises(TypeError, match="no field 'rulez'"):
        a.replace(rulez=1)
