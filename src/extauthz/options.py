"""How the pipeline reads a request: the settings that change a decision.

``Settings.check_options`` builds one for the server and ``extauthz check`` builds the same
from the same flags, so an offline decision is the server's decision.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

from extauthz.identity import TrustedProxies
from extauthz.model import utc_now
from extauthz.pathnorm import PathNormalization

__all__ = ["CheckOptions", "utc_now"]


@dataclass(frozen=True, slots=True)
class CheckOptions:
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)
    xff_num_trusted_hops: int = 0
    path_normalization: PathNormalization = PathNormalization.BASE
    # the instant a Check is decided at (time windows, CEL request.time); `check --at` fixes it
    clock: Callable[[], datetime.datetime] = utc_now
