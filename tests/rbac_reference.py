"""A small, independent interpreter of Envoy's HTTP RBAC filter config (envoy.filters.http.rbac),
as Istio's golden ``X-out*.yaml`` files hold it. Written from Envoy's documented semantics, it
shares no code with ``extauthz.policy``; the differential tests compare the two.

What a request looks like to Envoy is taken from a ``Subject``: ``:authority``, ``:method`` and
``:path`` are present when non-empty; the peer certificate URI SAN is ``principal``; the
``envoy.filters.http.jwt_authn`` metadata holds ``{"payload": claims}`` with the space-delimited
claims (``scope``, ``permission`` and any extra) turned into lists, as jwt_authn's
``normalize_payload_in_metadata`` does.

Repeated headers: Envoy's RBAC matches a header when any one of its values does, but a
``Subject`` (like the Check) holds them joined with ``,``. The reference reads such a value
both ways, whole and split at ``,``, and takes the reading on the safe side for the engine's
action (SEMANTICS.md, "Repeated headers"): under an even number of negations either reading
matching is a match; under an odd number (a ``notValues``) an ALLOW needs both readings to
miss, a DENY or LOG either one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import yaml

from extauthz.model import Subject
from tests.helpers import require

_ABSENT = object()
# Envoy uri_template: the characters a literal may hold ("*" excluded).
_URI_LITERAL = r"a-zA-Z0-9\-._~%!$&'()+,;:@="

# Istio's golden data lives in the shared folder beside the checkout (../shared).
GOLDEN: Final = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "istio-authz" / "http"
GOLDEN_HINT: Final = (
    f"Istio's golden RBAC data is not in {GOLDEN}: copy pilot/pkg/security/authz/builder/"
    "testdata/http/ of github.com/istio/istio (commit 86c9f01fd735fb01d8192f5bcaf0d424afb7f14c)"
    " to ../shared/testdata/istio-authz/http beside the checkout"
)


def require_golden() -> None:
    """Skip the calling test module without the golden data (fail it with CI=true)."""
    require(any(GOLDEN.glob("*-in.yaml")), GOLDEN_HINT, module=True)


# The trust-domain bundles of Istio's builder_test.go (TestGenerator_GenerateHTTP).
TRUST_DOMAINS: Final[dict[str, tuple[str, ...]]] = {
    "simple-policy-td-aliases": ("td1", "cluster.local"),
    "simple-policy-multiple-td-aliases": ("td1", "cluster.local", "some-td"),
    "simple-policy-principal-with-wildcard": ("td1", "foobar"),
    "td-aliases-source-principal": ("new-td", "old-td", "some-trustdomain"),
}


@dataclass(frozen=True)
class Request:
    subject: Subject
    space_delimited: frozenset[str] = frozenset({"scope", "permission"})
    action: str = "ALLOW"  # of the engine evaluating it: picks the safe reading of a header

    def header(self, name: str) -> str | None:
        s = self.subject
        lowered = name.lower()
        if lowered == ":authority":
            return s.host or None
        if lowered == ":method":
            return s.method or None
        if lowered == ":path":
            return s.path or None
        return s.headers.get(lowered)

    def metadata(self, filter_name: str) -> Any:
        if filter_name != "envoy.filters.http.jwt_authn" or self.subject.claims is None:
            return _ABSENT
        payload = dict(self.subject.claims)
        for name in self.space_delimited:
            if isinstance(payload.get(name), str):
                payload[name] = [p for p in payload[name].split(" ") if p]
        return {"payload": payload}


# -- string and value matchers -------------------------------------------------------------------


def string_match(m: Mapping[str, Any], value: str) -> bool:
    ignore = bool(m.get("ignoreCase"))

    def fold(s: str) -> str:
        return s.lower() if ignore else s

    if "exact" in m:
        return fold(value) == fold(m["exact"])
    if "prefix" in m:
        return fold(value).startswith(fold(m["prefix"]))
    if "suffix" in m:
        return fold(value).endswith(fold(m["suffix"]))
    if "contains" in m:
        return fold(m["contains"]) in fold(value)
    if "safeRegex" in m:
        return re.fullmatch(m["safeRegex"]["regex"], value) is not None
    raise ValueError(f"unsupported string matcher {m}")


def value_match(m: Mapping[str, Any], value: Any) -> bool:
    if "orMatch" in m:
        return any(value_match(v, value) for v in m["orMatch"]["valueMatchers"])
    if "listMatch" in m:
        return isinstance(value, list) and any(
            value_match(m["listMatch"]["oneOf"], v) for v in value
        )
    if "stringMatch" in m:
        return isinstance(value, str) and string_match(m["stringMatch"], value)
    if "presentMatch" in m:
        return value is not _ABSENT
    raise ValueError(f"unsupported value matcher {m}")


def header_match(m: Mapping[str, Any], req: Request, negated: bool = False) -> bool:
    value = req.header(m["name"])
    if "presentMatch" in m:
        return (value is not None) == bool(m["presentMatch"])
    if value is None:
        return False
    whole = one_header_value_match(m, value)
    if "," not in value:
        return whole
    split = any(one_header_value_match(m, part) for part in value.split(","))
    if negated and req.action != "ALLOW":
        return whole and split
    return whole or split


def one_header_value_match(m: Mapping[str, Any], value: str) -> bool:
    if "stringMatch" in m:
        return string_match(m["stringMatch"], value)
    for key, kind in (
        ("exactMatch", "exact"),
        ("prefixMatch", "prefix"),
        ("suffixMatch", "suffix"),
    ):
        if key in m:
            return string_match({kind: m[key]}, value)
    raise ValueError(f"unsupported header matcher {m}")


def metadata_match(m: Mapping[str, Any], req: Request) -> bool:
    value = req.metadata(m["filter"])
    for step in m["path"]:
        if not isinstance(value, Mapping) or step["key"] not in value:
            return False
        value = value[step["key"]]
    return value_match(m["value"], value)


def cidr_match(m: Mapping[str, Any], ip: Any) -> bool:
    if ip is None:
        return False
    net = ipaddress.ip_network(f"{m['addressPrefix']}/{m.get('prefixLen', 0)}", strict=False)
    return ip.version == net.version and ip in net


def uri_template_regex(template: str) -> str:
    parts = []
    for seg in template.split("/")[1:]:
        if seg == "*":
            parts.append(f"[{_URI_LITERAL}]+")
        elif seg == "**":
            parts.append(f"[{_URI_LITERAL}/]*")
        else:
            parts.append(re.escape(seg))
    return "/" + "/".join(parts)


# -- permissions and principals -------------------------------------------------------------------


def permission(p: Mapping[str, Any], req: Request, neg: bool = False) -> bool:
    s = req.subject
    if "andRules" in p:
        return all(permission(r, req, neg) for r in p["andRules"]["rules"])
    if "orRules" in p:
        return any(permission(r, req, neg) for r in p["orRules"]["rules"])
    if "notRule" in p:
        return not permission(p["notRule"], req, not neg)
    if "any" in p:
        return bool(p["any"])
    if "header" in p:
        return header_match(p["header"], req, neg)
    if "urlPath" in p:
        path = req.header(":path")
        return path is not None and string_match(p["urlPath"]["path"], path.split("?")[0])
    if "uriTemplate" in p:
        path = req.header(":path")
        template = p["uriTemplate"]["typedConfig"]["pathTemplate"]
        return path is not None and re.fullmatch(uri_template_regex(template), path) is not None
    if "destinationPort" in p:
        return s.destination_port == p["destinationPort"]
    if "destinationIp" in p:
        return cidr_match(p["destinationIp"], s.destination_ip)
    if "requestedServerName" in p:
        return string_match(p["requestedServerName"], s.sni or "")
    if "metadata" in p:
        return metadata_match(p["metadata"], req)
    raise ValueError(f"unsupported permission {p}")


def principal(p: Mapping[str, Any], req: Request, neg: bool = False) -> bool:
    s = req.subject
    if "andIds" in p:
        return all(principal(r, req, neg) for r in p["andIds"]["ids"])
    if "orIds" in p:
        return any(principal(r, req, neg) for r in p["orIds"]["ids"])
    if "notId" in p:
        return not principal(p["notId"], req, not neg)
    if "any" in p:
        return bool(p["any"])
    if "authenticated" in p:
        if s.principal is None:
            return False
        name = p["authenticated"].get("principalName")
        return name is None or string_match(name, s.principal)
    if "directRemoteIp" in p:
        return cidr_match(p["directRemoteIp"], s.source_ip)
    if "remoteIp" in p:
        return cidr_match(p["remoteIp"], s.remote_ip)
    if "sourceIp" in p:
        return cidr_match(p["sourceIp"], s.source_ip)
    if "header" in p:
        return header_match(p["header"], req, neg)
    if "metadata" in p:
        return metadata_match(p["metadata"], req)
    raise ValueError(f"unsupported principal {p}")


# -- engines and filters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    action: str  # ALLOW, DENY, LOG
    policies: Mapping[str, Any]

    def first_match(self, req: Request) -> str | None:
        """Envoy keeps policies in a sorted map and reports the first that matches."""
        req = replace(req, action=self.action)
        for name in sorted(self.policies):
            pol = self.policies[name]
            if any(permission(x, req) for x in pol["permissions"]) and any(
                principal(x, req) for x in pol["principals"]
            ):
                return name
        return None

    def allows(self, req: Request) -> tuple[bool, str | None]:
        hit = self.first_match(req)
        if self.action == "ALLOW":
            return hit is not None, hit
        if self.action == "DENY":
            return hit is None, hit
        return True, hit  # LOG


@dataclass(frozen=True)
class Filter:
    rules: Engine | None
    shadow: Engine | None


def load_filter(path: Path) -> Filter:
    doc = yaml.safe_load(path.read_text())
    config = doc["typedConfig"]

    def engine(key: str) -> Engine | None:
        if key not in config:
            return None
        raw = config[key] or {}
        return Engine(raw.get("action", "ALLOW"), raw.get("policies", {}))

    return Filter(engine("rules"), engine("shadowRules"))


@dataclass(frozen=True)
class Outcome:
    allowed: bool
    deciding: str | None  # the effective policy of the filter that decided
    audits: tuple[str, ...]
    shadow: Mapping[str, str | None]  # shadow engine action -> effective policy (evaluated only)


def run(filters: Sequence[Filter], req: Request) -> Outcome:
    """The filters in chain order: each evaluates its shadow engine, then enforces; a denial
    stops the chain."""
    shadow: dict[str, str | None] = {}
    audits: list[str] = []
    deciding: str | None = None
    for f in filters:
        if f.shadow is not None:
            shadow[f.shadow.action] = f.shadow.first_match(req)
        if f.rules is None:
            continue
        if f.rules.action == "LOG":
            audits.extend(n for n in sorted(f.rules.policies) if _matches(f.rules, n, req))
            continue
        ok, hit = f.rules.allows(req)
        if not ok:
            return Outcome(False, hit, tuple(audits), shadow)
        if f.rules.action == "ALLOW":
            deciding = hit
    return Outcome(True, deciding, tuple(audits), shadow)


def _matches(engine: Engine, name: str, req: Request) -> bool:
    pol = engine.policies[name]
    return any(permission(x, req) for x in pol["permissions"]) and any(
        principal(x, req) for x in pol["principals"]
    )


def parse_policy_id(policy_id: str) -> tuple[str, int]:
    """``ns[foo]-policy[name]-rule[3]`` -> ("foo/name", 3)."""
    m = re.fullmatch(r"ns\[(.*)\]-policy\[(.*)\]-rule\[(\d+)\]", policy_id)
    assert m, policy_id
    return f"{m[1]}/{m[2]}", int(m[3])


def out_files(directory: Path, name: str) -> list[Path]:
    single = directory / f"{name}-out.yaml"
    if single.exists():
        return [single]
    return sorted(directory.glob(f"{name}-out[0-9].yaml"))


def golden_policies(name: str) -> str:
    """``X-in.yaml`` without ``selector``: extauthz refuses it on ALLOW (whole-tenant policies)."""
    docs = [d for d in yaml.safe_load_all((GOLDEN / f"{name}-in.yaml").read_text()) if d]
    for doc in docs:
        (doc.get("spec") or {}).pop("selector", None)
    return yaml.safe_dump_all(docs, sort_keys=False)


def strings_in(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)
