"""One decision record: dynamic metadata, decision log, span and ``check --output json`` name
the same fields with the same values, and none of them carries what the record never holds."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from extauthz.cli.check import json_output
from extauthz.decisionlog import DecisionLog
from extauthz.errors import Reason
from extauthz.model import RequestView
from extauthz.outcome import METADATA_FIELDS, RECORD_FIELDS, Outcome, decision_record
from extauthz.policy import ShadowResult
from extauthz.response import metadata_of
from extauthz.telemetry import SPAN_PREFIX, span_attributes

SECRET = "forwarded-token-value"
VIEW = RequestView(method="GET", host="api.test", path="/a?x=1", source_address="10.0.0.1")
VIEW_FIELDS = {"method", "host", "path", "source", "headers"}
SPAN_ALIASES = {"extauthz.jwt_cache_hit": "authn_cache"}


def outcomes() -> Iterator[Outcome]:
    """Allows and denies with every optional part present or absent."""
    shadows = [
        None,
        ShadowResult(True, Reason.ALLOWED, "", -1, None, None, ()),
        ShadowResult(False, Reason.POLICY_DENIED, "dry", 2, None, None, ()),
    ]
    for allowed, principal, policy, version, audits, shadow, cache in itertools.product(
        [True, False],
        ["", "spiffe://td/ns/a/sa/b"],
        ["", "p"],
        ["", "v7"],
        [(), ("audit-p[0]",)],
        shadows,
        [None, True, False],
    ):
        yield Outcome(
            allowed,
            Reason.ALLOWED if allowed else Reason.NO_ALLOW_MATCH,
            200 if allowed else 403,
            tenant="acme",
            policy=policy,
            rule=0 if policy else -1,
            principal=principal,
            request_principal="iss/sub" if principal else "",
            detail="" if allowed else "no ALLOW policy matched",
            headers_to_add=(("x-user", SECRET),),
            headers_to_remove=("x-secret-" + SECRET,),
            audits=audits,
            shadow=shadow,
            jwt_cache_hit=cache,
            version=version,
        )


ALL = list(outcomes())


def span_field(attribute: str) -> str:
    """The record field a span attribute carries."""
    if attribute in SPAN_ALIASES:
        return SPAN_ALIASES[attribute]
    return attribute.removeprefix(SPAN_PREFIX).replace("shadow.", "shadow_")


def test_record_fields_have_their_declared_types() -> None:
    """Every field of a record is declared in RECORD_FIELDS, with its type."""
    for outcome in ALL:
        record = decision_record(outcome, "id-1")
        for name, value in record.items():
            assert name in RECORD_FIELDS, name
            assert isinstance(value, RECORD_FIELDS[name]), name
        assert list(record) == [n for n in RECORD_FIELDS if n in record]


def test_metadata_is_the_records_metadata_fields() -> None:
    """Dynamic metadata is exactly the record's METADATA_FIELDS, empty principals left out."""
    for outcome in ALL:
        record = decision_record(outcome, "id-1")
        expected = {
            name: record[name]
            for name in METADATA_FIELDS
            if name in record and (record[name] or name not in ("principal", "request_principal"))
        }
        assert metadata_of(outcome, "id-1") == expected


def test_log_line_is_the_record_and_the_request() -> None:
    """A decision-log line is the whole record, the latency, and the request's fields."""
    for outcome in ALL:
        fields = DecisionLog("all").fields(outcome, VIEW, "id-1", 0.001)
        record = decision_record(outcome, "id-1")
        assert {k: v for k, v in fields.items() if k in RECORD_FIELDS} == record
        assert set(fields) - set(RECORD_FIELDS) == VIEW_FIELDS | {"latency_ms"}


def test_span_attributes_are_record_fields() -> None:
    """Every extauthz.* span attribute is a record field under the span's name, same value."""
    for outcome in ALL:
        attrs = span_attributes(outcome, VIEW, "id-1")
        record = decision_record(outcome, "id-1")
        for attribute, value in attrs.items():
            if not attribute.startswith(SPAN_PREFIX):
                continue
            name = span_field(attribute)
            assert name in record, attribute
            expected = record[name] == "hit" if name == "authn_cache" else record[name]
            assert value == expected, attribute


def test_check_json_is_record_fields() -> None:
    """``extauthz check --output json`` prints record fields only, with the record's values."""
    for outcome in ALL:
        out = json_output(outcome, "id-1")
        record = decision_record(outcome, "id-1")
        for name, value in out.items():
            assert name in RECORD_FIELDS, name
            assert value == record.get(name, ""), name


def test_no_output_carries_header_values() -> None:
    """Values of the headers set or removed for the upstream are in no output."""
    for outcome in ALL:
        outputs = [
            decision_record(outcome, "id-1"),
            metadata_of(outcome, "id-1"),
            DecisionLog("all").fields(outcome, None, "id-1", 0.0),
            span_attributes(outcome, None, "id-1"),
            json_output(outcome, "id-1"),
        ]
        for output in outputs:
            assert SECRET not in repr(output)


def test_metadata_never_holds_the_detail() -> None:
    """Why a deny happened is for operators: it is not in the metadata sent to Envoy."""
    for outcome in ALL:
        assert "detail" not in metadata_of(outcome, "id-1")
