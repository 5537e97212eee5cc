"""Stable reason codes and the errors that carry them.

A reason code names why a Check ended as it did. The same string is used in logs, metrics,
spans, dynamic metadata and the gRPC status message of a denial, so it never changes once
released. The client's HTTP response does not carry it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """Why a Check was allowed or denied."""

    ALLOWED = "allowed"
    POLICY_DENIED = "policy_denied"  # a DENY policy matched
    NO_ALLOW_MATCH = "no_allow_match"  # ALLOW policies exist, none matched
    TENANT_UNKNOWN = "tenant_unknown"
    TENANT_MISMATCH = "tenant_mismatch"  # the namespace's tenant does not match host/headers
    TENANT_UNAVAILABLE = "tenant_unavailable"  # the tenant never loaded (its documents fail)
    MTLS_REQUIRED = "mtls_required"  # STRICT tenant, no peer identity
    PEER_INVALID = "peer_invalid"  # source.principal is not a valid SPIFFE ID
    JWT_INVALID = "jwt_invalid"
    JWT_AMBIGUOUS = "jwt_ambiguous"  # several different tokens
    MALFORMED_REQUEST = "malformed_request"
    NOT_READY = "not_ready"  # no policies loaded yet
    DEADLINE = "deadline"
    RATE_LIMITED = "rate_limited"  # over a RateLimit (429)
    RATELIMIT_UNAVAILABLE = "ratelimit_unavailable"  # Redis unreachable, onStoreOutage: deny
    INTERNAL = "internal"


class ExtauthzError(Exception):
    """Base class of the errors extauthz raises on purpose."""


@dataclass(frozen=True, slots=True)
class Location:
    """Where a value came from: a file (or a Redis key) and a 1-based line."""

    source: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source


class DocumentError(ExtauthzError):
    """A document is invalid. Names the source, line and field at fault."""

    def __init__(self, message: str, *, location: Location | None = None, field: str = "") -> None:
        self.message = message
        self.location = location
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        what = f"{self.field}: " if self.field else ""
        return f"{where}{what}{self.message}"


class AuthnError(ExtauthzError):
    """A token was present but could not be accepted (maps to 401)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class StoreError(ExtauthzError):
    """The store could not be read or written."""


class ConflictError(StoreError):
    """A write carried an expected version that is no longer current."""
