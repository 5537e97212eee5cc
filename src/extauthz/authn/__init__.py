"""Per-tenant JWT authentication with Istio RequestAuthentication ``jwtRules`` semantics.

``parse_jwt_rules`` validates a Tenant's rules once; ``JwksCache`` keeps remote key sets
fresh in the background; ``Authenticator.authenticate`` is the synchronous, memory-only
check a request goes through.
"""

from extauthz.authn.authenticator import Authenticator, AuthnResult
from extauthz.authn.jwks import JwksCache
from extauthz.authn.keys import Key
from extauthz.authn.rules import ClaimToHeader, JwtRule, TokenLocation, parse_jwt_rules

__all__ = [
    "Authenticator",
    "AuthnResult",
    "ClaimToHeader",
    "JwksCache",
    "JwtRule",
    "Key",
    "TokenLocation",
    "parse_jwt_rules",
]
