"""The one result type of a Check, how a denial is made, and the record of a decision.

``Outcome`` is what the pipeline returns and what every output reads: the response for Envoy,
the decision log, the span and ``extauthz check``. It lives below the pipeline so those
outputs can name it without importing the pipeline (and, through it, the registry).

``decision_record`` is the one definition of what a decision says to the outside: its field
names, their types, and what is never in it (the values of the headers set or removed for
the upstream, which may carry a forwarded token or claims). Dynamic metadata, the decision
log, the span and ``extauthz check --output json`` each take fields from it
(``METADATA_FIELDS`` for the first and the CLI) and never name one of their own.
"""

from __future__ import annotations

from typing import Any, Final

from extauthz.errors import Reason
from extauthz.model import described, fields_hash, same_fields
from extauthz.policy import ShadowResult

__all__ = [
    "METADATA_FIELDS",
    "OUTCOME_FIELDS",
    "RECORD_FIELDS",
    "Outcome",
    "RecordValue",
    "decision_record",
    "deny",
]


OUTCOME_FIELDS: Final = (
    "allowed",
    "reason",
    "status",
    "tenant",
    "policy",
    "rule",
    "principal",
    "request_principal",
    "detail",
    "headers_to_add",
    "headers_to_remove",
    "audits",
    "shadow",
    "jwt_cache_hit",
    "version",
    "ratelimit",
    "client_headers",
)

_FIELD_NAMES: Final = frozenset(OUTCOME_FIELDS)


class Outcome:
    """The one result type of a Check; ``response.encode_response`` maps it to a
    CheckResponse. Immutable by convention, compared by value. A plain class: in the
    compiled build a native one, built without a Python-level call (a NamedTuple's
    constructor is one, on every Check)."""

    __slots__ = OUTCOME_FIELDS

    def __init__(
        self,
        allowed: bool,
        reason: Reason,
        status: int,  # HTTP status: 200, or the denial's 401/403/429
        tenant: str = "",
        policy: str = "",
        rule: int = -1,
        principal: str = "",
        request_principal: str = "",
        detail: str = "",  # for logs only, never sent to the client
        headers_to_add: tuple[tuple[str, str], ...] = (),
        headers_to_remove: tuple[str, ...] = (),
        audits: tuple[str, ...] = (),
        shadow: ShadowResult | None = None,
        jwt_cache_hit: bool | None = None,
        version: str = "",
        ratelimit: str = "",  # the RateLimit that decided (``<name>/<index>``), "" when none
        client_headers: tuple[tuple[str, str], ...] = (),  # for the client's response
    ) -> None:
        self.allowed: Final = allowed
        self.reason: Final = reason
        self.status: Final = status
        self.tenant: Final = tenant
        self.policy: Final = policy
        self.rule: Final = rule
        self.principal: Final = principal
        self.request_principal: Final = request_principal
        self.detail: Final = detail
        self.headers_to_add: Final = headers_to_add
        self.headers_to_remove: Final = headers_to_remove
        self.audits: Final = audits
        self.shadow: Final = shadow
        self.jwt_cache_hit: Final = jwt_cache_hit
        self.version: Final = version
        self.ratelimit: Final = ratelimit
        self.client_headers: Final = client_headers

    def replace(self, **changes: Any) -> Outcome:
        """A copy with ``changes`` (field names) applied."""
        unknown = changes.keys() - _FIELD_NAMES
        if unknown:
            raise TypeError(f"Outcome has no field {sorted(unknown)[0]!r}")
        values = {name: getattr(self, name) for name in OUTCOME_FIELDS}
        values.update(changes)
        return Outcome(**values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Outcome):
            return NotImplemented
        return same_fields(self, other, OUTCOME_FIELDS)

    def __hash__(self) -> int:
        return fields_hash(self, OUTCOME_FIELDS)

    def __repr__(self) -> str:
        return described(self, OUTCOME_FIELDS)


def deny(
    reason: Reason, detail: str, *, status: int = 403, tenant: str = "", **kw: object
) -> Outcome:
    return Outcome(False, reason, status, tenant=tenant, detail=detail, **kw)  # type: ignore[arg-type]


RecordValue = str | int | list[str]
# Every field a decision record can hold, in order, with its type. The first nine are always
# there; the others only when they say something.
RECORD_FIELDS: Final[dict[str, type]] = {
    "decision_id": str,  # x-request-id, else random: joins access logs and decision logs
    "decision": str,  # allow | deny
    "reason": str,  # the stable reason code (errors.Reason)
    "status": int,  # HTTP status: 200, 401, 403
    "tenant": str,
    "principal": str,  # peer SPIFFE ID
    "request_principal": str,  # iss/sub of the verified token
    "policy": str,  # the deciding policy ("" for none)
    "rule": int,  # its rule index (-1 for none)
    "policy_version": str,  # the version of the tenant's documents
    "detail": str,  # why a deny, for operators (never in the response to the client)
    "audit": list,  # AUDIT policy[rule] that matched
    "authn_cache": str,  # hit | miss: the verified-token cache, when a token was checked
    "shadow_decision": str,  # the dry-run decision (never enforced)
    "shadow_reason": str,
    "shadow_policy": str,
    "shadow_rule": int,
    "ratelimit": str,  # the RateLimit (name/index) whose quota applied
}
# What goes into Envoy's dynamic metadata (for access logs): the decision and who decided.
# Empty principals are left out there.
METADATA_FIELDS: Final = (
    "decision",
    "reason",
    "tenant",
    "policy",
    "rule",
    "decision_id",
    "principal",
    "request_principal",
    "audit",
    "shadow_decision",
    "shadow_policy",
    "policy_version",
    "ratelimit",
)
_DECISION: Final = {True: "allow", False: "deny"}
_CACHE: Final = {True: "hit", False: "miss"}


def decision_record(outcome: Outcome, decision_id: str) -> dict[str, RecordValue]:
    """The decision as named fields (see ``RECORD_FIELDS``); header values are never in it."""
    record: dict[str, RecordValue] = {
        "decision_id": decision_id,
        "decision": _DECISION[outcome.allowed],
        "reason": str(outcome.reason),
        "status": outcome.status,
        "tenant": outcome.tenant,
        "principal": outcome.principal,
        "request_principal": outcome.request_principal,
        "policy": outcome.policy,
        "rule": outcome.rule,
    }
    if outcome.version:
        record["policy_version"] = outcome.version
    if not outcome.allowed and outcome.detail:
        record["detail"] = outcome.detail
    if outcome.audits:
        record["audit"] = list(outcome.audits)
    if outcome.jwt_cache_hit is not None:
        record["authn_cache"] = _CACHE[outcome.jwt_cache_hit]
    shadow = outcome.shadow
    if shadow is not None:
        record["shadow_decision"] = _DECISION[shadow.allowed]
        record["shadow_reason"] = str(shadow.reason)
        record["shadow_policy"] = shadow.policy
        record["shadow_rule"] = shadow.rule
    if outcome.ratelimit:
        record["ratelimit"] = outcome.ratelimit
    return record
