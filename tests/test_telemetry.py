"""Spans and metrics of Checks, read through the OpenTelemetry SDK's in-memory exporter/reader.

A real ``Server`` answers on a real 127.0.0.1 gRPC port; only the telemetry's export end is the
SDK's in-memory one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.rpc import code_pb2
from opentelemetry.trace import SpanKind

from extauthz.telemetry import OTHER_TENANT, SPAN_NAME
from tests.helpers import Issuer, check_request
from tests.telemetry_support import HOST, running, shop_policies

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    return shop_policies(tmp_path / "policies", Issuer())


async def test_span_is_a_child_of_the_forwarded_traceparent(policies: Path) -> None:
    """The Check span joins the trace Envoy forwarded (W3C traceparent) as a SERVER child."""
    async with running(policies) as r:
        traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
        await r.check(check_request(host=HOST, headers={"traceparent": traceparent}))
        (span,) = r.spans.get_finished_spans()
    assert span.name == SPAN_NAME
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.parent.is_remote


async def test_span_is_a_child_of_b3_headers(policies: Path) -> None:
    """B3 multi headers (x-b3-traceid, x-b3-spanid) parent the span as well."""
    async with running(policies) as r:
        headers = {"x-b3-traceid": TRACE_ID, "x-b3-spanid": PARENT_ID, "x-b3-sampled": "1"}
        await r.check(check_request(host=HOST, headers=headers))
        (span,) = r.spans.get_finished_spans()
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_ID


async def test_span_without_trace_headers_is_a_root(policies: Path) -> None:
    """No trace headers: the span starts a trace of its own."""
    async with running(policies) as r:
        await r.check(check_request(host=HOST))
        (span,) = r.spans.get_finished_spans()
    assert span.parent is None


async def test_span_attributes_name_the_decision(policies: Path) -> None:
    """Tenant, decision, reason, deciding policy and the JWT cache hit are span attributes."""
    issuer = Issuer()
    shop_policies(policies, issuer)
    token = issuer.token()
    async with running(policies) as r:
        request = check_request(host=HOST, headers={"authorization": f"Bearer {token}"})
        await r.check(request)
        await r.check(request)
        first, second = r.spans.get_finished_spans()
    attrs = dict(second.attributes or {})
    assert attrs["extauthz.tenant"] == "shop"
    assert attrs["extauthz.decision"] == "allow"
    assert attrs["extauthz.reason"] == "allowed"
    assert attrs["extauthz.policy"] == "shop/allow-get"
    assert attrs["extauthz.rule"] == 0
    assert attrs["extauthz.jwt_cache_hit"] is True
    assert dict(first.attributes or {})["extauthz.jwt_cache_hit"] is False
    assert token not in str(attrs)


async def test_span_carries_the_shadow_decision(policies: Path) -> None:
    """A dry-run DENY that matches shows as the span's shadow decision; the request passes."""
    async with running(policies) as r:
        response = await r.check(check_request(host=HOST, path="/shadowed"))
        (span,) = r.spans.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert response.status.code == code_pb2.OK
    assert attrs["extauthz.decision"] == "allow"
    assert attrs["extauthz.shadow.decision"] == "deny"
    assert attrs["extauthz.shadow.policy"] == "shop/dry-deny"


async def test_no_spans_when_tracing_is_off(policies: Path) -> None:
    """Without a tracer provider nothing is traced, while metrics still count."""
    async with running(policies, tracing=False) as r:
        await r.check(check_request(host=HOST))
        assert r.spans.get_finished_spans() == ()
        assert sum(p.value for _, p in r.points("extauthz.checks")) == 1


async def test_checks_counted_by_tenant_decision_and_reason(policies: Path) -> None:
    """extauthz.checks counts each Check once under its tenant, decision and reason."""
    async with running(policies) as r:
        for _ in range(3):
            await r.check(check_request(host=HOST))
        await r.check(check_request(host=HOST, method="POST"))
        await r.check(check_request(host="nobody.example.org"))
        counts = {
            (a["tenant"], a["decision"], a["reason"]): p.value
            for a, p in r.points("extauthz.checks")
        }
        durations = {
            labels["decision"]: n
            for labels, n in r.samples("extauthz_check_duration_seconds_count")
        }
    assert counts == {
        ("shop", "allow", "allowed"): 3,
        ("shop", "deny", "no_allow_match"): 1,
        ("", "deny", "tenant_unknown"): 1,
    }
    assert durations == {"allow": 3, "deny": 2}


async def test_jwt_cache_lookups_counted(policies: Path) -> None:
    """The same token twice: one cache miss (verified), one hit."""
    issuer = Issuer()
    shop_policies(policies, issuer)
    async with running(policies) as r:
        request = check_request(host=HOST, headers={"authorization": f"Bearer {issuer.token()}"})
        await r.check(request)
        await r.check(request)
        results = {a["result"]: p.value for a, p in r.points("extauthz.jwt.cache.lookups")}
    assert results == {"miss": 1, "hit": 1}


async def test_shadow_decisions_counted(policies: Path) -> None:
    """A dry-run match is counted as a shadow deny next to the enforced allow."""
    async with running(policies) as r:
        await r.check(check_request(host=HOST, path="/shadowed"))
        await r.check(check_request(host=HOST, path="/other"))
        counts = {
            (a["decision"], a["enforced"]): p.value
            for a, p in r.points("extauthz.shadow.decisions")
        }
    assert counts[("deny", "allow")] == 1
    assert counts.get(("allow", "allow"), 0) == 1


async def test_tenant_label_is_capped(policies: Path) -> None:
    """Past --metrics-max-tenants, tenants share the _other label value."""
    async with running(policies, max_tenants=0) as r:
        await r.check(check_request(host=HOST))
        tenants = {a["tenant"] for a, _ in r.points("extauthz.checks")}
    assert tenants == {OTHER_TENANT}


async def test_policy_version_and_store_state_observed(policies: Path) -> None:
    """Gauges report each tenant's serving version, its age, readiness and the store state."""
    async with running(policies) as r:
        version = r.server.components.registry.snapshot.tenants["shop"].version
        info = [a for a, _ in r.points("extauthz.policy.info")]
        ages = [a["tenant"] for a, _ in r.points("extauthz.policy.age")]
        connected = [p.value for _, p in r.points("extauthz.store.connected")]
        ready = [p.value for _, p in r.points("extauthz.ready")]
    assert info == [{"tenant": "shop", "version": version}]
    assert ages == ["shop"]
    assert connected == [1]
    assert ready == [1]
