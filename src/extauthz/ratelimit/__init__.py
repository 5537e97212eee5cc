"""Rate limits (``kind: RateLimit``) counted per replica and shared through Redis.

``schema`` compiles the documents, ``limiter`` decides from local counters on the Check
path, ``sync`` reconciles them with Redis in the background.
"""

from extauthz.ratelimit.limiter import LimitDecision, Limiter, LimiterStats
from extauthz.ratelimit.schema import KIND_RATELIMIT, CompiledLimit, RateLimits, parse_ratelimits

__all__ = [
    "KIND_RATELIMIT",
    "CompiledLimit",
    "LimitDecision",
    "Limiter",
    "LimiterStats",
    "RateLimits",
    "parse_ratelimits",
]
