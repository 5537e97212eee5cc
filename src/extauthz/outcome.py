"""The one result type of a Check, and how a denial is made.

``Outcome`` is what the pipeline returns and what every output reads: the response for Envoy,
the decision log, the span and ``extauthz check``. It lives below the pipeline so those
outputs can name it without importing the pipeline (and, through it, the registry).
"""

from __future__ import annotations

from typing import NamedTuple

from extauthz.errors import Reason
from extauthz.policy import ShadowResult

__all__ = ["Outcome", "deny"]


class Outcome(NamedTuple):
    """The one result type of a Check; ``response.build`` maps it to a CheckResponse."""

    allowed: bool
    reason: Reason
    status: int  # HTTP status: 200, or the denial's 401/403
    tenant: str = ""
    policy: str = ""
    rule: int = -1
    principal: str = ""
    request_principal: str = ""
    detail: str = ""  # for logs only, never sent to the client
    headers_to_add: tuple[tuple[str, str], ...] = ()
    headers_to_remove: tuple[str, ...] = ()
    audits: tuple[str, ...] = ()
    shadow: ShadowResult | None = None
    jwt_cache_hit: bool | None = None
    version: str = ""


def deny(
    reason: Reason, detail: str, *, status: int = 403, tenant: str = "", **kw: object
) -> Outcome:
    return Outcome(False, reason, status, tenant=tenant, detail=detail, **kw)  # type: ignore[arg-type]
