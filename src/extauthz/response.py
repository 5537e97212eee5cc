"""Outcome -> CheckResponse: the only place that builds a response for Envoy.

Allow: ``status OK`` and an ``ok_response`` with the headers for the upstream and the
headers to remove. Deny: a non-OK status and a ``denied_response`` (403 for policy, 401 with
``www-authenticate`` for a bad token) with a short body that says nothing of our policies.
Every response carries ``dynamic_metadata`` for Envoy's access logs.

A header for the upstream whose name is not an HTTP token, or whose value holds a control
character (HTAB allowed) or a lone surrogate (a JSON ``"\\ud800"`` claim), raises
``InvalidHeader``: the servicer turns that, like any failure here, into a logged deny.

The servicer sends ``encode_response``'s bytes as they are (its handler has no serializer):
the response for an outcome is serialized once and kept, and each Check appends only its
``decision_id``, as a second ``dynamic_metadata`` field that the receiving parser merges into
the first (protobuf's rule for a message field that occurs twice, on every conforming parser:
Envoy's reads one response with every field of the kept one and ``decision_id``).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any, Final

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2

from extauthz.outcome import OUTCOME_FIELDS, Outcome

__all__ = [
    "DENY_FALLBACK",
    "KEY_FIELDS",
    "InvalidHeader",
    "build_response",
    "encode_response",
    "metadata_of",
]

_OVERWRITE: Final = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_BODY: Final = {401: "unauthorized\n", 403: "access denied\n", 429: "too many requests\n"}
_GRPC_CODE: Final = {
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    429: code_pb2.RESOURCE_EXHAUSTED,
}
_HTTP_STATUS: Final = {401: "Unauthorized", 403: "Forbidden", 429: "TooManyRequests"}
WWW_AUTHENTICATE: Final = 'Bearer realm="extauthz", error="invalid_token"'
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")  # RFC 9110 token, lower case
_BAD_VALUE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")


class InvalidHeader(ValueError):
    """A header for the upstream that Envoy would refuse or could not encode."""


def metadata_of(outcome: Outcome, decision_id: str) -> dict[str, object]:
    """What goes into dynamic_metadata: the decision record's ``METADATA_FIELDS``, empty
    principals left out. Written out rather than projected from ``decision_record`` because
    it runs on every Check (a third of the cost); tests/test_decision_record.py holds the
    two in step."""
    meta: dict[str, object] = {
        "decision": "allow" if outcome.allowed else "deny",
        "reason": str(outcome.reason),
        "tenant": outcome.tenant,
        "policy": outcome.policy,
        "rule": outcome.rule,
        "decision_id": decision_id,
    }
    if outcome.principal:
        meta["principal"] = outcome.principal
    if outcome.request_principal:
        meta["request_principal"] = outcome.request_principal
    if outcome.audits:
        meta["audit"] = list(outcome.audits)
    if outcome.shadow is not None:
        meta["shadow_decision"] = "allow" if outcome.shadow.allowed else "deny"
        meta["shadow_policy"] = outcome.shadow.policy
    if outcome.version:
        meta["policy_version"] = outcome.version
    if outcome.ratelimit:
        meta["ratelimit"] = outcome.ratelimit
    return meta


def encode_response(outcome: Outcome, decision_id: str) -> bytes:
    """The serialized response for ``outcome``: the bytes kept for its key, then its
    ``decision_id`` (and RateLimit headers) as fields merged into them.

    Everything but ``decision_id`` is a function of the outcome without ``detail`` and
    ``jwt_cache_hit`` (which the response never carries), so the response built for that key
    is serialized once (``_Templates``); the bytes returned parse to the response
    ``_build(outcome, decision_id)`` makes (tests/test_response_templates.py).
    """
    key = _response_key(outcome)
    template = _templates.get(key)
    if template is None:
        template = _template(outcome.replace(client_headers=()))
        _templates.put(key, template)
    if outcome.client_headers:  # RateLimit headers: their counts change with every Check
        extra = external_auth_pb2.CheckResponse()
        _add_client_headers(extra, outcome)
        headers: bytes = extra.SerializeToString()
        return template + headers + _decision_id_field(decision_id)
    return template + _decision_id_field(decision_id)


def build_response(outcome: Outcome, decision_id: str = "") -> external_auth_pb2.CheckResponse:
    """``encode_response`` as a message (for callers that read the response)."""
    return external_auth_pb2.CheckResponse.FromString(encode_response(outcome, decision_id))


def _template(outcome: Outcome) -> bytes:
    """The response for ``outcome`` without ``decision_id``, serialized (map keys sorted)."""
    response = _build(outcome)
    del response.dynamic_metadata.fields["decision_id"]
    data: bytes = response.SerializeToString(deterministic=True)
    return data


# CheckResponse.dynamic_metadata (4) > Struct.fields (1) > map entry {key (1): "decision_id",
# value (2)} > Value.string_value (3): the tags, written out (tag = field << 3 | 2, a length
# follows), and the lengths as base-128 varints.
_METADATA_TAG: Final = b"\x22"
_FIELDS_TAG: Final = b"\x0a"
_DECISION_ID_ENTRY: Final = b"\x0a\x0bdecision_id\x12"
_STRING_VALUE_TAG: Final = b"\x1a"
_SHORT_LENGTHS: Final = tuple(bytes([n]) for n in range(0x80))


def _length(n: int) -> bytes:
    """``n`` as a protobuf varint."""
    if n < 0x80:
        return _SHORT_LENGTHS[n]
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _decision_id_field(decision_id: str) -> bytes:
    """``dynamic_metadata {fields {key: "decision_id" value {string_value: decision_id}}}``."""
    text = decision_id.encode("utf-8")  # a lone surrogate raises: the servicer denies
    n = len(text)
    return (_PREFIXES[n] if n < len(_PREFIXES) else _prefix(n)) + text


def _prefix(n: int) -> bytes:
    """What comes before an id of ``n`` bytes: each tag, and the length of what follows it."""
    value = len(_STRING_VALUE_TAG) + len(_length(n)) + n
    entry = len(_DECISION_ID_ENTRY) + len(_length(value)) + value
    struct = len(_FIELDS_TAG) + len(_length(entry)) + entry
    return b"".join(
        (
            _METADATA_TAG,
            _length(struct),
            _FIELDS_TAG,
            _length(entry),
            _DECISION_ID_ENTRY,
            _length(value),
            _STRING_VALUE_TAG,
            _length(n),
        )
    )


_PREFIXES: Final = tuple(_prefix(n) for n in range(256))  # ids are mostly 16-64 bytes


def _build(outcome: Outcome, decision_id: str = "") -> external_auth_pb2.CheckResponse:
    response = external_auth_pb2.CheckResponse()
    _set_metadata(response.dynamic_metadata, metadata_of(outcome, decision_id))
    if outcome.allowed:
        _check_headers(outcome.headers_to_add)
        response.status.code = code_pb2.OK
        ok = response.ok_response
        _add_headers(ok.headers, outcome.headers_to_add)
        ok.headers_to_remove.extend(outcome.headers_to_remove)
    else:
        status = outcome.status if outcome.status in _BODY else 403
        response.MergeFrom(_DENIED[status])
        response.status.message = str(outcome.reason)
    if outcome.client_headers:
        _add_client_headers(response, outcome)
    return response


def _add_client_headers(response: external_auth_pb2.CheckResponse, outcome: Outcome) -> None:
    """Headers for the client's response (RateLimit): added to the upstream's response on an
    allow, sent with the denial otherwise."""
    if outcome.allowed:
        _add_headers(response.ok_response.response_headers_to_add, outcome.client_headers)
    else:
        _add_headers(response.denied_response.headers, outcome.client_headers)


class _Templates:
    """The responses built, serialized, by outcome key: at most ``entries`` of them and
    ``max_bytes`` in all; when full, the oldest entries go first. A response larger than
    ``max_entry_bytes`` (a large claim forwarded in a header) is built each time instead.

    A plain dict, one C operation per step: safe to share between threads, where a race can
    at worst build a response twice or let the byte count drift by an entry.
    """

    __slots__ = ("_bytes", "_entries", "_max_bytes", "_max_entries", "_max_entry_bytes")

    def __init__(self, entries: int, max_bytes: int, max_entry_bytes: int) -> None:
        self._entries: dict[tuple[object, ...], bytes] = {}
        self._max_entries = entries
        self._max_bytes = max_bytes
        self._max_entry_bytes = max_entry_bytes
        self._bytes = 0

    def get(self, key: tuple[object, ...]) -> bytes | None:
        return self._entries.get(key)

    def put(self, key: tuple[object, ...], response: bytes) -> None:
        size = len(response)
        if size > self._max_entry_bytes:
            return
        entries = self._entries
        while entries and (
            len(entries) >= self._max_entries or self._bytes + size > self._max_bytes
        ):
            evicted = entries.pop(next(iter(entries)), None)
            if evicted is not None:
                self._bytes -= len(evicted)
        if entries.setdefault(key, response) is response:
            self._bytes += size

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def total_bytes(self) -> int:
        return self._bytes


# The template key: every Outcome field but the two a response never carries and the one
# added to each copy (RateLimit headers change with every Check). Taken from OUTCOME_FIELDS,
# so a field added to Outcome is in the key unless it is named here.
_NOT_IN_KEY: Final = frozenset({"detail", "jwt_cache_hit", "client_headers"})
if not _NOT_IN_KEY.issubset(OUTCOME_FIELDS):
    raise ImportError(f"Outcome has no field {sorted(_NOT_IN_KEY.difference(OUTCOME_FIELDS))}")
KEY_FIELDS: Final = tuple(name for name in OUTCOME_FIELDS if name not in _NOT_IN_KEY)
_response_key: Final[Callable[[Outcome], tuple[object, ...]]] = operator.attrgetter(*KEY_FIELDS)
_templates: Final = _Templates(entries=4096, max_bytes=8 * 1024 * 1024, max_entry_bytes=16 * 1024)


def _check_headers(headers: tuple[tuple[str, str], ...]) -> None:
    for name, _ in headers:
        if _HEADER_NAME.fullmatch(name) is None:
            raise InvalidHeader(f"header name {name!r} is not an HTTP token")
    if _BAD_VALUE.search("".join([value for _, value in headers])) is not None:
        raise InvalidHeader("a header value holds a control character or a lone surrogate")


def _add_headers(target: Any, headers: tuple[tuple[str, str], ...]) -> None:
    for name, value in headers:
        header = target.add(append_action=_OVERWRITE).header
        header.key = name
        header.value = value


def _set_metadata(struct: struct_pb2.Struct, meta: dict[str, object]) -> None:
    """``struct.update(meta)``, with the value types metadata_of produces set directly."""
    fields = struct.fields
    for key, value in meta.items():
        if type(value) is str:
            fields[key].string_value = value
        elif type(value) is int:
            fields[key].number_value = value
        elif type(value) is list and all(type(item) is str for item in value):
            values = fields[key].list_value.values
            for item in value:
                values.add().string_value = item
        else:
            struct.update({key: value})  # type: ignore[dict-item]


def _denied(status: int) -> external_auth_pb2.CheckResponse:
    """The parts of a deny that depend on its HTTP status only."""
    response = external_auth_pb2.CheckResponse()
    response.status.code = _GRPC_CODE[status]
    denied = response.denied_response
    denied.status.code = http_status_pb2.StatusCode.Value(_HTTP_STATUS[status])
    denied.body = _BODY[status]
    denied.headers.add(
        header=base_pb2.HeaderValue(key="content-type", value="text/plain"),
        append_action=_OVERWRITE,
    )
    if status == 401:
        denied.headers.add(
            header=base_pb2.HeaderValue(key="www-authenticate", value=WWW_AUTHENTICATE),
            append_action=_OVERWRITE,
        )
    return response


# Merged into every deny (MergeFrom copies; the templates are never handed out).
_DENIED: Final = {status: _denied(status) for status in _BODY}

# The deny sent when even a deny could not be built: 403, nothing else.
_fallback = external_auth_pb2.CheckResponse()
_fallback.status.code = code_pb2.PERMISSION_DENIED
_fallback.denied_response.status.code = http_status_pb2.StatusCode.Forbidden
DENY_FALLBACK: Final[bytes] = _fallback.SerializeToString()
del _fallback
