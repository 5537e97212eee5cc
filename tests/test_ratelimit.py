"""RateLimit documents and the local limiter, decided through the Check pipeline (no Redis)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from extauthz.authn import JwksCache
from extauthz.catalog import compile_documents
from extauthz.cli import main
from extauthz.documents import load_documents
from extauthz.errors import DocumentError, Reason
from extauthz.model import RequestView
from extauthz.outcome import Outcome
from extauthz.pipeline import CheckPipeline
from extauthz.ratelimit import Limiter
from extauthz.registry import Snapshot
from extauthz.response import build_response

TENANT = """\
apiVersion: extauthz.io/v1
kind: Tenant
metadata: {name: acme}
spec: {match: {hosts: [a.test]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reads, namespace: acme}
spec:
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET, POST]}}]}]
"""


def limit_doc(limits: str, name: str = "quota") -> str:
    return (
        f"---\napiVersion: extauthz.io/v1\nkind: RateLimit\n"
        f"metadata: {{name: {name}, namespace: acme}}\nspec:\n  limits:\n{limits}"
    )


PER_USER = limit_doc('  - key: ["request.headers[x-user]"]\n    requests: 3\n    per: hour\n')


class Clock:
    def __init__(self, now: float = 7200.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def compiled(text: str) -> Snapshot:
    docs = load_documents(text, "acme.yaml")
    return Snapshot.build({"acme": compile_documents("acme", docs, JwksCache())})


def pipeline(clock: Clock | None = None) -> CheckPipeline:
    return CheckPipeline(limiter=Limiter(clock=clock or Clock()))


def request(
    path: str = "/x", method: str = "GET", headers: Mapping[str, str] | None = None
) -> RequestView:
    return RequestView(method=method, host="a.test", path=path, headers=headers or {})


def run(p: CheckPipeline, snapshot: Snapshot, n: int, **kw: object) -> list[Outcome]:
    return [p(snapshot, request(**kw)) for _ in range(n)]  # type: ignore[arg-type]


def test_requests_over_the_limit_get_429_with_headers() -> None:
    """The fourth request of a key in the window is refused with 429, retry-after and RateLimit."""
    snap = compiled(TENANT + PER_USER)
    outcomes = run(pipeline(), snap, 4, headers={"x-user": "bob"})
    assert [o.status for o in outcomes] == [200, 200, 200, 429]
    assert outcomes[0].client_headers == (
        ("ratelimit-policy", '"quota/0";q=3;w=3600'),
        ("ratelimit", '"quota/0";r=2;t=3600'),
    )
    last = outcomes[-1]
    assert (last.reason, last.ratelimit) == (Reason.RATE_LIMITED, "quota/0")
    assert ("retry-after", "3600") in last.client_headers
    assert last.headers_to_add == ()


def test_429_response_carries_headers_and_names_the_limit() -> None:
    """The CheckResponse of a 429: TooManyRequests, the headers to the client, metadata names it."""
    snap = compiled(TENANT + PER_USER)
    p = pipeline()
    allowed = build_response(p(snap, request(headers={"x-user": "b"})))
    names = [h.header.key for h in allowed.ok_response.response_headers_to_add]
    assert names == ["ratelimit-policy", "ratelimit"]
    assert allowed.dynamic_metadata.fields["ratelimit"].string_value == "quota/0"
    run(p, snap, 2, headers={"x-user": "b"})
    denied = build_response(p(snap, request(headers={"x-user": "b"})))
    assert denied.denied_response.status.code == 429
    assert denied.denied_response.body == "too many requests\n"
    got = {h.header.key: h.header.value for h in denied.denied_response.headers}
    assert got["retry-after"] == "3600"
    assert got["ratelimit"] == '"quota/0";r=0;t=3600'


def test_each_key_value_has_its_own_counter() -> None:
    """Another header value is counted apart."""
    snap = compiled(TENANT + PER_USER)
    p = pipeline()
    run(p, snap, 3, headers={"x-user": "bob"})
    assert p(snap, request(headers={"x-user": "alice"})).allowed
    assert not p(snap, request(headers={"x-user": "bob"})).allowed


def test_absent_key_attribute_shares_one_counter() -> None:
    """Leaving the header out does not escape the limit: all such requests share a counter."""
    snap = compiled(TENANT + PER_USER)
    outcomes = run(pipeline(), snap, 4)
    assert [o.status for o in outcomes] == [200, 200, 200, 429]


def test_denied_request_consumes_no_quota() -> None:
    """A request the policies deny is not counted: limits are applied after authorization."""
    snap = compiled(TENANT + PER_USER)
    p = pipeline()
    denied = run(p, snap, 5, method="DELETE", headers={"x-user": "bob"})
    assert {o.reason for o in denied} == {Reason.NO_ALLOW_MATCH}
    assert all(o.allowed for o in run(p, snap, 3, headers={"x-user": "bob"}))


def test_window_rolls_over() -> None:
    """A new fixed window (aligned to the epoch) starts a new count."""
    clock = Clock(7200.0)
    snap = compiled(TENANT + limit_doc("  - {requests: 2, per: second}\n"))
    p = pipeline(clock)
    assert [o.status for o in run(p, snap, 3)] == [200, 200, 429]
    clock.now = 7200.999
    assert p(snap, request()).status == 429
    clock.now = 7201.0
    assert [o.status for o in run(p, snap, 3)] == [200, 200, 429]


def test_rules_narrow_a_limit() -> None:
    """A limit with rules counts only the requests its rules match."""
    limits = (
        '  - requests: 1\n    per: hour\n    rules: [{to: [{operation: {paths: ["/api/*"]}}]}]\n'
    )
    snap = compiled(TENANT + limit_doc(limits))
    p = pipeline()
    assert all(o.allowed and not o.client_headers for o in run(p, snap, 3, path="/home"))
    assert [o.status for o in run(p, snap, 2, path="/api/x")] == [200, 429]


def test_tightest_limit_decides() -> None:
    """With several limits the headers show the one with the least left; any exceeded refuses."""
    limits = "  - {requests: 10, per: minute}\n  - {requests: 2, per: hour}\n"
    snap = compiled(TENANT + limit_doc(limits))
    outcomes = run(pipeline(), snap, 3)
    assert [o.ratelimit for o in outcomes] == ["quota/1"] * 3
    assert outcomes[1].client_headers[1] == ("ratelimit", '"quota/1";r=0;t=3600')
    assert outcomes[2].status == 429


def test_policy_update_applies_the_new_count() -> None:
    """A recompiled limit with a lower count refuses at once, from the counts already made."""
    p = pipeline()
    wide = compiled(TENANT + limit_doc("  - {requests: 100, per: hour}\n"))
    assert all(o.allowed for o in run(p, wide, 3))
    narrow = compiled(TENANT + limit_doc("  - {requests: 3, per: hour}\n"))
    assert p(narrow, request()).status == 429


def test_key_table_is_bounded() -> None:
    """Past maxKeys distinct values, new values share one overflow counter (fail closed)."""
    limits = (
        '  - key: ["request.headers[x-user]"]\n    requests: 2\n    per: hour\n    maxKeys: 3\n'
    )
    snap = compiled(TENANT + limit_doc(limits))
    p = pipeline()
    for i in range(3):
        assert p(snap, request(headers={"x-user": f"u{i}"})).allowed
    extra = [p(snap, request(headers={"x-user": f"attacker{i}"})).status for i in range(4)]
    assert extra == [200, 200, 429, 429]
    assert len(p.limiter.counters) == 4
    assert p.limiter.stats.overflow == 4


def test_outage_modes() -> None:
    """Redis unreachable: a `local` limit enforces this replica's share, a `deny` limit denies."""
    limits = (
        '  - requests: 4\n    per: hour\n    rules: [{to: [{operation: {paths: ["/l"]}}]}]\n'
        "  - requests: 4\n    per: hour\n    onStoreOutage: deny\n"
        '    rules: [{to: [{operation: {paths: ["/d"]}}]}]\n'
    )
    snap = compiled(TENANT + limit_doc(limits))
    p = pipeline()
    p.limiter.shared = True
    p.limiter.replicas = 2
    p.limiter.failing = True
    local = run(p, snap, 3, path="/l")
    assert [o.status for o in local] == [200, 200, 429]  # ceil(4 / 2 replicas)
    deny = p(snap, request(path="/d"))
    assert (deny.status, deny.reason) == (429, Reason.RATELIMIT_UNAVAILABLE)
    assert p.limiter.stats.outage_deny == 1
    assert p.limiter.stats.outage_local == 3


@pytest.mark.parametrize(
    ("limits", "field", "line"),
    [
        ("  - {requests: 1, per: week}\n", "spec.limits[0].per", 7),
        ("  - {requests: 0, per: hour}\n", "spec.limits[0].requests", 7),
        ('  - {requests: 1, per: hour, key: ["request.body"]}\n', "spec.limits[0].key[0]", 7),
        (
            '  - {requests: 1, per: hour, key: ["request.headers[a b]"]}\n',
            "spec.limits[0].key[0]",
            7,
        ),
        ("  - {requests: 1, per: hour, onStoreOutage: open}\n", "spec.limits[0].onStoreOutage", 7),
        ("  - {requests: 1, per: hour, burst: 3}\n", "spec.limits[0].burst", 7),
        (
            "  - requests: 1\n    per: hour\n    rules: [{to: [{operation: {ports: [x]}}]}]\n",
            "spec.limits[0].rules[0].to[0].operation.ports[0]",
            9,
        ),
        (
            "  - requests: 1\n    per: hour\n"
            "    rules: [{when: [{key: extauthz.io/cel, values: ['1 +']}]}]\n",
            "spec.limits[0].rules[0].when[0].values[0]",
            9,
        ),
    ],
)
def test_invalid_limit_is_refused_with_its_place(limits: str, field: str, line: int) -> None:
    """A malformed limit is a DocumentError naming the file, the line and the field."""
    with pytest.raises(DocumentError) as err:
        compiled(limit_doc(limits))
    text = str(err.value)
    assert err.value.field == field, text
    assert err.value.location is not None
    assert (err.value.location.source, err.value.location.line) == ("acme.yaml", line), text


def test_ratelimit_needs_a_namespace() -> None:
    """A RateLimit names its tenant in metadata.namespace."""
    with pytest.raises(DocumentError, match=r"metadata\.namespace"):
        load_documents(
            "apiVersion: extauthz.io/v1\nkind: RateLimit\nmetadata: {name: q}\nspec: {}\n", "x"
        )


def test_policy_validate_accepts_a_ratelimit(tmp_path: Path) -> None:
    """`extauthz policy validate` runs the same loader on RateLimit documents."""
    path = tmp_path / "acme.yaml"
    path.write_text(TENANT + PER_USER)
    assert main(["policy", "validate", str(path)]) == 0
    path.write_text(TENANT + limit_doc("  - {requests: 1, per: fortnight}\n"))
    assert main(["policy", "validate", str(path)]) != 0


def test_counters_of_ended_windows_are_forgotten() -> None:
    """The counter table only holds current windows, even with no Redis sync running."""
    clock = Clock(7200.0)
    limits = '  - key: ["request.headers[x-user]"]\n    requests: 5\n    per: second\n'
    snap = compiled(TENANT + limit_doc(limits))
    p = pipeline(clock)
    for i in range(50):
        p(snap, request(headers={"x-user": f"u{i}"}))
    assert len(p.limiter.counters) == 50
    clock.now = 7202.0
    p(snap, request(headers={"x-user": "late"}))
    assert len(p.limiter.counters) == 1
    assert len(p.limiter.sizes) == 1


def test_raised_limit_admits_again_at_once() -> None:
    """A limit raised by a policy update admits again in the same window, without a sync."""
    p = pipeline()
    narrow = compiled(TENANT + limit_doc("  - {requests: 2, per: hour}\n"))
    assert [o.status for o in run(p, narrow, 3)] == [200, 200, 429]
    wide = compiled(TENANT + limit_doc("  - {requests: 4, per: hour}\n"))
    assert [o.status for o in run(p, wide, 3)] == [200, 200, 429]


def test_a_quiet_second_is_not_an_outage() -> None:
    """Only a failed sync, or none for stale_after seconds, counts as Redis unreachable."""
    clock = Clock(7200.0)
    limiter = Limiter(clock=clock, stale_after=3.0)
    limiter.shared = True
    limiter.last_ok = 7198.5  # the last heartbeat, 1.5 s ago
    assert not limiter.outage(clock())
    assert limiter.outage(7201.6)
    limiter.failing = True
    assert limiter.outage(clock())
