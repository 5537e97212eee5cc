"""CEL conditions, time windows and data sets: compiled at load, decided from memory."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from extauthz.authn import JwksCache
from extauthz.catalog import CompiledTenant, compile_documents
from extauthz.datasets import DataSets, ShardedSet, ShardedSetBuilder
from extauthz.documents import load_documents
from extauthz.errors import DocumentError, Reason
from extauthz.model import Subject
from extauthz.policy import evaluate
from extauthz.policy.celexpr import CelError, check_cost
from extauthz.policy.timewindow import TimeWindowError, parse_windows, parse_zone

UTC = datetime.UTC
NOON = datetime.datetime(2026, 3, 25, 12, 0, tzinfo=UTC)  # a Wednesday


def tenant(
    rules: str, *, action: str = "ALLOW", extra: str = "", zone: str = "UTC"
) -> CompiledTenant:
    text = (
        "apiVersion: extauthz.io/v1\nkind: Tenant\nmetadata: {name: acme}\n"
        f"spec: {{match: {{}}, timeZone: {zone}}}\n---\n"
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: p, namespace: acme}}\nspec:\n  action: {action}\n  rules:\n{rules}\n"
        + extra
    )
    return compile_documents("acme", load_documents(text, "acme.yaml"), JwksCache())


def when(key: str, *values: str, field: str = "values") -> str:
    quoted = ", ".join(repr(v) for v in values)
    return f"  - when:\n    - key: {key}\n      {field}: [{quoted}]\n"


def subject(**kw: Any) -> Subject:
    base: dict[str, Any] = {"method": "GET", "path": "/", "host": "acme.example.com", "time": NOON}
    return Subject(**{**base, **kw})


def allowed(t: CompiledTenant, **kw: Any) -> bool:
    return evaluate(t.policies, subject(**kw)).allowed


# -- CEL ----------------------------------------------------------------------------------------


def test_cel_allow_on_header_and_claim() -> None:
    """An ALLOW CEL rule admits the request only when header and claim both fit."""
    t = tenant(
        when(
            "extauthz.io/cel",
            'request.headers["x-env"] == "prod" && auth.claims.tier in ["gold", "silver"]',
        )
    )
    good = {"headers": {"x-env": "prod"}, "claims": {"tier": "gold"}}
    assert allowed(t, **good)
    assert not allowed(t, headers={"x-env": "dev"}, claims={"tier": "gold"})
    assert not allowed(t, headers={"x-env": "prod"}, claims={"tier": "bronze"})


def test_cel_error_in_allow_does_not_match() -> None:
    """A missing claim is an evaluation error: an ALLOW rule does not match, and it is counted."""
    t = tenant(when("extauthz.io/cel", 'auth.claims.tier == "gold"'))
    assert t.custom is not None
    assert not allowed(t)
    assert t.custom.cel.errors.count == 1


def test_cel_error_in_deny_denies() -> None:
    """A missing claim in a DENY expression denies (fail closed) instead of letting it through."""
    t = tenant(when("extauthz.io/cel", 'auth.claims.tier == "banned"'), action="DENY")
    result = evaluate(t.policies, subject())
    assert not result.allowed
    assert result.reason is Reason.POLICY_DENIED
    assert allowed(t, claims={"tier": "gold"})


def test_cel_error_in_deny_not_values_denies() -> None:
    """notValues in DENY: an error matches too; the condition is not negated into an allow."""
    t = tenant(
        when("extauthz.io/cel", 'auth.claims.tier == "gold"', field="notValues"), action="DENY"
    )
    assert not allowed(t)  # no claims: error -> deny
    assert allowed(t, claims={"tier": "gold"})
    assert not allowed(t, claims={"tier": "bronze"})


def test_cel_any_value_holds() -> None:
    """Several expressions in values: the condition holds when any is true."""
    t = tenant(when("extauthz.io/cel", 'request.method == "PUT"', 'request.path == "/a"'))
    assert allowed(t, path="/a")
    assert allowed(t, method="PUT")
    assert not allowed(t, path="/b")


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("request.hedaers['a'] == 'b'", "undeclared reference"),
        ("nope == 1", "undeclared reference"),
        ("request.method + 1 == 2", "no matching overload"),
        ("request.method", "must be a bool expression"),
        ("request.method ==", "Syntax error"),
        ("request.headers.exists(k, request.headers.exists(j, k == j))", "nested"),
        ('data.contains("nope", "x")', "no DataSet 'nope'"),
    ],
)
def test_cel_compile_errors_name_file_line_field(expression: str, message: str) -> None:
    """A bad expression is refused at load with file, line and field (even in DENY)."""
    with pytest.raises(DocumentError) as info:
        tenant(when("extauthz.io/cel", expression), action="DENY")
    text = str(info.value)
    assert message in text
    assert "acme.yaml:" in text
    assert "spec.rules[0].when[0].values[0]" in text


def test_cost_check_ignores_macros_in_strings_and_allows_one_level() -> None:
    """One level of comprehension is fine; macro names inside string literals do not count."""
    check_cost('request.headers.exists(k, k == ".all(x, x)")')
    check_cost("[1].all(x, x > 0) && [2].exists(y, y > 1)")
    with pytest.raises(CelError):
        check_cost("[[1]].all(x, x.exists(y, y > 0))")


def test_cel_query_repeated_keys_are_joined() -> None:
    """A repeated query key shows all its values, so a DENY on one of them still matches."""
    t = tenant(when("extauthz.io/cel", 'request.query.role.contains("admin")'), action="DENY")
    assert not allowed(t, query="role=user&role=admin")
    assert not allowed(t, query="role=%61dmin")
    assert allowed(t, query="role=user")


def test_cel_variables() -> None:
    """Every documented variable is there with its value."""
    expr = (
        'source.namespace == "web" && source.serviceAccount == "fe" && source.ip == "10.0.0.1"'
        ' && destination.port == 8080 && auth.principal == "https://i/alice"'
        ' && "api" in auth.audiences && auth.presenter == "cli" && tenant.name == "acme"'
        ' && tenant.timeZone == "Europe/Berlin" && request.host == "acme.example.com"'
        ' && request.time.getHours(tenant.timeZone) == 13 && "read" in auth.claims.scope'
    )
    t = tenant(when("extauthz.io/cel", expr), zone="Europe/Berlin")
    import ipaddress

    claims = {"iss": "https://i", "sub": "alice", "aud": "api", "azp": "cli", "scope": "read write"}
    assert allowed(
        t,
        principal="spiffe://cluster.local/ns/web/sa/fe",
        source_ip=ipaddress.ip_address("10.0.0.1"),
        destination_port=8080,
        claims=claims,
    )


def test_cel_without_time_fails_closed() -> None:
    """An expression on request.time with no clock reading is an error, not a guess."""
    t = tenant(when("extauthz.io/cel", "request.time > timestamp('2000-01-01T00:00:00Z')"))
    assert not allowed(t, time=None)
    assert allowed(t)


# -- time windows -------------------------------------------------------------------------------


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def test_business_hours_window() -> None:
    """Mon-Fri 08:00-22:00 in the tenant's zone: half-open, weekdays only."""
    t = tenant(when("extauthz.io/time-window", "Mon-Fri 08:00-22:00"), zone="America/New_York")
    assert allowed(t, time=at("2026-03-25T12:00:00Z"))  # Wed 08:00 EDT
    assert not allowed(t, time=at("2026-03-25T11:59:59Z"))  # Wed 07:59:59
    assert allowed(t, time=at("2026-03-26T01:59:59Z"))  # Wed 21:59:59
    assert not allowed(t, time=at("2026-03-26T02:00:00Z"))  # Wed 22:00, end excluded
    assert not allowed(t, time=at("2026-03-28T15:00:00Z"))  # Saturday


def test_window_not_values_is_outside() -> None:
    """notValues: the condition holds outside every window."""
    t = tenant(
        when("extauthz.io/time-window", "Mon-Fri 08:00-22:00", field="notValues"), action="DENY"
    )
    assert allowed(t, time=at("2026-03-25T12:00:00Z"))
    assert not allowed(t, time=at("2026-03-28T12:00:00Z"))


def test_window_daylight_saving_berlin() -> None:
    """Europe/Berlin on 2026-03-29: 00:59Z is 01:59 CET, 01:00Z is 03:00 CEST."""
    zone = parse_zone("Europe/Berlin")
    windows = parse_windows(["Sun 03:00-04:00"], zone)
    assert not windows(at("2026-03-29T00:59:59Z"))
    assert windows(at("2026-03-29T01:00:00Z"))
    assert windows(at("2026-03-29T01:59:59Z"))
    assert not windows(at("2026-03-29T02:00:00Z"))
    # a week later the same local window is an hour earlier in UTC than the week before
    assert not windows(at("2026-03-22T01:00:00Z"))  # 02:00 CET
    assert windows(at("2026-03-22T02:00:00Z"))  # 03:00 CET


def test_overnight_window_belongs_to_its_start_day() -> None:
    """Fri 22:00-06:00 covers Friday night into Saturday, not Friday early morning."""
    windows = parse_windows(["Fri 22:00-06:00"], parse_zone("UTC"))
    assert windows(at("2026-03-27T23:00:00Z"))  # Fri 23:00
    assert windows(at("2026-03-28T05:59:00Z"))  # Sat 05:59
    assert not windows(at("2026-03-28T06:00:00Z"))
    assert not windows(at("2026-03-27T05:00:00Z"))  # Fri 05:00


def test_sunday_night_wraps_into_monday() -> None:
    """Sun 23:00-01:00 wraps around the end of the week."""
    windows = parse_windows(["Sun 23:00-01:00", "Sat,Wed 10:00-24:00"], parse_zone("UTC"))
    assert windows(at("2026-03-29T23:30:00Z"))
    assert windows(at("2026-03-30T00:30:00Z"))  # Monday 00:30
    assert not windows(at("2026-03-30T01:00:00Z"))
    assert windows(at("2026-03-25T23:59:59Z"))  # Wed until midnight
    assert not windows(at("2026-03-26T10:00:00Z"))  # Thu


@pytest.mark.parametrize(
    "value",
    [
        "Mon-Fri 8:00-22:00",
        "Mon-Fri 08:00-08:00",
        "Mo 08:00-10:00",
        "Mon 24:00-10:00",
        "Mon-Fri 08:00-25:00",
        "08:00",
        "Mon - Fri 08:00-10:00",
    ],
)
def test_bad_windows_are_refused(value: str) -> None:
    """A value outside the grammar is refused at load, naming the field."""
    with pytest.raises(DocumentError) as info:
        tenant(when("extauthz.io/time-window", value), action="DENY")
    assert "spec.rules[0].when[0].values" in str(info.value)


def test_bad_time_zone_is_refused() -> None:
    """spec.timeZone must be an IANA zone name."""
    with pytest.raises(DocumentError) as info:
        tenant(when("extauthz.io/time-window", "Mon 08:00-10:00"), zone="Mars/Olympus")
    assert "spec.timeZone" in str(info.value)
    with pytest.raises(TimeWindowError):
        parse_zone("../../etc/passwd")


def test_unknown_extauthz_key_is_refused() -> None:
    """A misspelt extauthz.io key is an error, not a dropped condition."""
    with pytest.raises(DocumentError, match="unknown condition key"):
        tenant(when("extauthz.io/celx", "true"), action="DENY")


# -- data sets ----------------------------------------------------------------------------------

REVOKED = (
    "---\napiVersion: extauthz.io/v1\nkind: DataSet\n"
    "metadata: {name: revoked-jti, namespace: acme}\nspec: {values: [a1b2, c3d4]}\n"
)


def test_dataset_membership_denies_revoked_jti() -> None:
    """A DENY on data.contains("revoked-jti", auth.claims.jti) denies a revoked token only."""
    t = tenant(
        when("extauthz.io/cel", 'data.contains("revoked-jti", auth.claims.jti)'),
        action="DENY",
        extra=REVOKED,
    )
    assert not allowed(t, claims={"jti": "a1b2"})
    assert allowed(t, claims={"jti": "zzzz"})
    assert not allowed(t, claims={"jti": 7})  # not a string: error, fail closed
    assert not allowed(t)  # no token: no jti, fail closed


def test_dataset_values_must_be_strings() -> None:
    """A DataSet value that is not a string is refused with its field."""
    bad = REVOKED.replace("[a1b2, c3d4]", "[a1b2, 12]")
    with pytest.raises(DocumentError, match=r"spec\.values\[1\]"):
        tenant(when("extauthz.io/cel", "true"), extra=bad)


def test_large_dataset() -> None:
    """A set of 100 000 values decides in one lookup."""
    values = ", ".join(f"v{i}" for i in range(100_000))
    extra = REVOKED.replace("[a1b2, c3d4]", f"[{values}]")
    t = tenant(
        when("extauthz.io/cel", 'data.contains("revoked-jti", auth.claims.jti)'),
        action="DENY",
        extra=extra,
    )
    assert not allowed(t, claims={"jti": "v99999"})
    assert allowed(t, claims={"jti": "v100000"})


def test_cel_reads_verified_claims_views() -> None:
    """Claims arrive as read-only mappings from the verifier; CEL reads them all the same."""
    from types import MappingProxyType

    t = tenant(when("extauthz.io/cel", 'auth.claims.org.id == "x"'))
    assert allowed(t, claims=MappingProxyType({"org": {"id": "x"}, "exp": 1}))


def test_referenced_variables() -> None:
    """Only the variables an expression reads are built per request; spacing does not hide one."""
    from extauthz.policy.celexpr import referenced

    assert referenced('request . headers["a"] == "auth.claims"') == {"request.headers"}
    assert referenced("auth.claims.x == tenant.name") == {"auth.claims", "tenant.name"}


def test_cel_with_spaced_selects() -> None:
    """An expression written with spaces around dots still sees its variables."""
    t = tenant(when("extauthz.io/cel", 'request . headers["x"] == "1" && auth . claims . a == 2'))
    assert allowed(t, headers={"x": "1"}, claims={"a": 2})


def test_deeply_nested_claims_fail_closed() -> None:
    """Claims nested too deep to convert are an evaluation error: a DENY on them matches."""
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    t = tenant(when("extauthz.io/cel", 'auth.claims.tier == "banned"'), action="DENY")
    assert not allowed(t, claims={"tier": "gold", "deep": deep})
    assert allowed(t, claims={"tier": "gold"})


def test_unconvertible_claims_decide_only_rules_reading_them() -> None:
    """Claims too deep to convert fail the rule reading them, not one reading the method."""
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    rules = when("extauthz.io/cel", 'auth.claims.tier == "gold"') + when(
        "extauthz.io/cel", 'request.method == "GET"'
    )
    t = tenant(rules)
    assert t.custom is not None
    assert allowed(t, claims={"tier": "silver", "deep": deep})
    assert t.custom.cel.errors.count == 1
    assert not allowed(t, method="POST", claims={"tier": "silver", "deep": deep})


def test_out_of_range_claim_fails_only_rules_reading_claims() -> None:
    """A claim the runtime can't hold (an integer beyond 64 bits) fails the rules reading
    claims, in DENY too, and leaves a rule on the method deciding as usual."""
    claims = {"tier": "gold", "n": 10**30}
    rules = when("extauthz.io/cel", 'auth.claims.tier == "gold"') + when(
        "extauthz.io/cel", 'request.method == "GET"'
    )
    t = tenant(rules)
    assert t.custom is not None
    assert allowed(t, claims=claims)
    assert t.custom.cel.errors.count == 1
    assert not allowed(t, method="POST", claims=claims)
    deny = tenant(when("extauthz.io/cel", 'auth.claims.tier == "banned"'), action="DENY")
    assert not allowed(deny, claims=claims)


def test_cel_rules_of_one_check_share_its_request_only() -> None:
    """Every CEL rule of a Check reads that Check's request; the next Check reads its own."""
    rules = when("extauthz.io/cel", 'request.headers["x-env"] == "prod"')
    extra = (
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: d, namespace: acme}\nspec:\n  action: DENY\n  rules:\n"
        + when("extauthz.io/cel", '"x-block" in request.headers')
    )
    t = tenant(rules, extra=extra)
    assert allowed(t, headers={"x-env": "prod"})
    assert not allowed(t, headers={"x-env": "prod", "x-block": "1"})
    assert not allowed(t, headers={"x-env": "dev"})
    assert allowed(t, headers={"x-env": "prod"})


def test_cel_reads_each_tokens_own_claims() -> None:
    """Converted claims kept per token payload never answer for another token's claims."""
    from types import MappingProxyType

    t = tenant(when("extauthz.io/cel", 'auth.claims.tier == "gold"'))
    gold = MappingProxyType({"tier": "gold"})
    tokens = [MappingProxyType({"tier": "bronze", "n": i}) for i in range(200)]
    for claims in [gold, *tokens, gold]:
        assert allowed(t, claims=claims) == (claims is gold)


@pytest.mark.parametrize(
    "expression",
    [
        'auth.claims.jti in data["revoked-jti"]',
        'data["revoked-jti"].exists(v, v == auth.claims.jti)',
    ],
)
def test_small_dataset_as_a_list(expression: str) -> None:
    """A small set can be read as a list, data["revoked-jti"] (the name has a dash)."""
    t = tenant(when("extauthz.io/cel", expression), action="DENY", extra=REVOKED)
    assert not allowed(t, claims={"jti": "c3d4"})
    assert allowed(t, claims={"jti": "zzzz"})


def test_large_dataset_as_a_list_is_refused() -> None:
    """Reading a set of more than 1000 values as a list (copied per request) is refused."""
    values = ", ".join(f"v{i}" for i in range(1001))
    extra = REVOKED.replace("[a1b2, c3d4]", f"[{values}]")
    with pytest.raises(DocumentError, match=r"data\.contains\(name, value\)"):
        tenant(when("extauthz.io/cel", 'auth.claims.jti in data["revoked-jti"]'), extra=extra)


def test_dataset_names_inside_strings_do_not_count() -> None:
    """A string that looks like data.name is not a read of a set."""
    t = tenant(
        when(
            "extauthz.io/cel",
            'request.path == "data.nope" || data.contains("revoked-jti", request.path)',
        ),
        extra=REVOKED,
    )
    assert allowed(t, path="data.nope")
    assert allowed(t, path="a1b2")
    assert not allowed(t, path="/x")


# -- live data sets (a store's, changed in place) -----------------------------------------------


def live_tenant(rules: str, data: DataSets, *, action: str = "DENY") -> CompiledTenant:
    text = (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: p, namespace: acme}}\nspec:\n  action: {action}\n  rules:\n{rules}\n"
    )
    return compile_documents("acme", load_documents(text, "acme.yaml"), JwksCache(), data=data)


def test_live_set_changes_are_seen_without_a_recompile() -> None:
    """A compiled tenant reads its live sets as they are when a condition is evaluated."""
    data = DataSets(live=True)
    t = live_tenant(when("extauthz.io/cel", 'data.contains("revoked-jti", auth.claims.jti)'), data)
    assert not allowed(t, claims={"jti": "a1"})  # not loaded yet: fail closed
    data.put("revoked-jti", ShardedSet())
    assert allowed(t, claims={"jti": "a1"})
    data.change("revoked-jti", ["a1", "b2"], [])
    assert not allowed(t, claims={"jti": "a1"})
    data.change("revoked-jti", [], ["a1"])
    assert allowed(t, claims={"jti": "a1"})
    assert not allowed(t, claims={"jti": "b2"})


def test_live_set_read_as_a_list_fails_closed_past_the_limit() -> None:
    """A live set read as a list decides while it is small; once it has grown past the list
    limit (data add does not know who reads it how), the condition fails closed."""
    data = DataSets(live=True)
    data.change("allowed", ["u1"], [])
    t = live_tenant(
        when("extauthz.io/cel", "auth.claims.sub in data.allowed"), data, action="ALLOW"
    )
    assert allowed(t, claims={"sub": "u1"})
    data.change("allowed", [f"u{i}" for i in range(2, 1002)], [])
    assert not allowed(t, claims={"sub": "u1"})
    assert t.custom is not None
    assert t.custom.cel.errors.count == 1


def test_live_set_shards_hold_every_value() -> None:
    """A live set split into shards, built a shard at a time from values that may repeat,
    answers for every value it holds, and only those."""
    builder = ShardedSetBuilder(100_000)
    builder.add_all(f"v{i}" for i in range(100_000))
    builder.add_all(f"v{i}" for i in range(0, 100_000, 3))
    assert len(list(builder.steps())) == len(builder.result.shards)
    values = builder.result
    assert len(values.shards) > 1
    assert len(values) == 100_000
    assert all(f"v{i}" in values for i in range(0, 100_000, 997))
    assert "v100000" not in values
    not_a_string: object = 7  # CEL may look up a value of another type
    assert not_a_string not in values


def test_live_set_is_not_walked_by_the_garbage_collector() -> None:
    """A live set of strings is invisible to the cyclic collector (no pause per value)."""
    import gc

    values = ShardedSet(50_000)
    values.add_all(f"v{i}" for i in range(50_000))
    values.discard_all(["v1", "v2"])
    assert not any(gc.is_tracked(shard) for shard in values.shards)
    assert "v3" in values
    assert "v1" not in values
