"""The one list of names whose values never reach a log line.

Both the structured-log processor (``logs.redact``, by event key) and the decision log (by
request header name) ask ``is_secret``. A name is secret when it contains one of
``SECRET_WORDS``, or when one of its ``-``/``_`` separated parts is ``key`` (``api-key``,
``private_key``): a count such as ``keys`` is not.

The decision log's query-parameter masker reads ``SECRET_PARAM_WORDS``, built from the same
list: a parameter name is looser (``key``, ``auth`` and ``code``, an OAuth code, anywhere in
it), and cookies are not sent as parameters.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

__all__ = ["MASK", "SECRET_PARAM_WORDS", "SECRET_WORDS", "is_secret"]

MASK: Final = "[redacted]"
SECRET_WORDS: Final = (
    "token", "jwt", "secret", "password", "session", "apikey", "authorization", "cookie",
)  # fmt: skip
_PARAM_ONLY: Final = ("key", "code", "auth")  # anywhere in a name: covers apikey, authorization
SECRET_PARAM_WORDS: Final = (
    *(w for w in SECRET_WORDS if w != "cookie" and not any(p in w for p in _PARAM_ONLY)),
    *_PARAM_ONLY,
)
_PARTS: Final = re.compile(r"[-_.\s]+")


@lru_cache(maxsize=4096)
def is_secret(name: str) -> bool:
    """Whether values under this name (a log key or a header name) are masked."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS) or "key" in _PARTS.split(lowered)
