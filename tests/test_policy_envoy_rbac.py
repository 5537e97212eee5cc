"""Our engine against a real Envoy running the RBAC filters Istio generates.

For each golden case below, one listener of one Envoy runs exactly the
``envoy.filters.http.rbac`` filter(s) of ``X-out*.yaml`` (in file order: DENY before ALLOW,
as Istio emits them), behind a ``jwt_authn`` filter that verifies tokens of a test key and puts
their payload in metadata (as Istio's does), then a route that answers 200 itself. The listener
is mTLS and verifies client certificates from a test CA, so ``principals``/``namespaces`` read
the URI SAN of the certificate each request presents, and ``normalize_path`` is on.

Requests vary what the policy reads (method, path, ``Host``, the headers named in ``when``,
the client's SPIFFE ID, the JWT ``iss``/``sub``), drawn from the policy's own values and their
near misses with a fixed seed; each goes through Envoy (200 allowed, 403 denied) and through
``evaluate`` on the ``Subject`` built from the same attributes, and the two must agree.

Not reproduced by a front proxy, so never varied: the peer and remote address (always
127.0.0.1), the destination address and port (the listener's), SNI (none: the client connects
to an IP address) and the absence of a peer certificate (the listener requires one).
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import json
import random
import re
import ssl
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from extauthz.documents import load_documents
from extauthz.model import Subject
from extauthz.policy import CompiledPolicies, compile_policies, evaluate
from tests.envoy_support import EnvoyProcess, started
from tests.helpers import Issuer, free_port
from tests.pki import Issued, TestCA
from tests.rbac_reference import (
    GOLDEN,
    TRUST_DOMAINS,
    golden_policies,
    out_files,
    require_golden,
    strings_in,
)

pytestmark = pytest.mark.envoy
require_golden()


CASES = [
    "allow-empty-rule",
    "allow-nil-rule",
    "allow-path",
    "deny-and-allow",
    "deny-empty-rule",
    "dry-run-allow",
    "dry-run-allow-and-deny",
    "dry-run-mix",
    "multiple-policies",
    "simple-policy-multiple-td-aliases",
    "simple-policy-principal-with-wildcard",
    "simple-policy-td-aliases",
    "single-policy",
    "td-aliases-source-principal",
    "trust-domains",
]
REQUESTS_PER_CASE = 150
TDS = ["cluster.local", "td1", "some-td", "foobar", "xbar", "new-td", "old-td", "another.local"]
TDS += ["some-trustdomain", "untrusted", "bad", "bad-td", "td"]
LOCAL = "127.0.0.1"
_BASE_IDS = {f"spiffe://{td}/ns/{ns}/sa/sa" for td in TDS[:3] for ns in ("default", "foo")}
LOCAL_IP = ipaddress.ip_address(LOCAL)

# What an HTTP/1.1 request line and headers can carry unchanged through Envoy.
_PATH = re.compile(r"/[A-Za-z0-9/_~!$&'()*+,;=:@.-]*")
_HOST = re.compile(r"[A-Za-z0-9.-]+")
_VALUE = re.compile(r"[!-~]([ -~]*[!-~])?")
_DOT_SEGMENT = re.compile(r"(^|/)\.\.?(/|$)")


# ---------------------------------------------------------------------------------------------
# the cases


@dataclass
class Case:
    name: str
    filters: list[dict[str, Any]]
    compiled: CompiledPolicies
    values: list[str]
    keyed: dict[str, list[str]]  # field or condition key -> the values the policy gives it
    port: int = field(default_factory=free_port)


def _case(name: str) -> Case:
    text = golden_policies(name)
    docs = load_documents(text, f"{name}-in.yaml")
    compiled = compile_policies(docs, trust_domains=TRUST_DOMAINS.get(name, ()))
    filters = [yaml.safe_load(p.read_text()) for p in out_files(GOLDEN, name)]
    assert filters, name
    for f in filters:
        assert f["name"] == "envoy.filters.http.rbac", (name, f)
    raw = [d for d in yaml.safe_load_all(text) if d]
    specs = [{k: v for k, v in (d.get("spec") or {}).items() if k != "selector"} for d in raw]
    values = sorted({s for spec in specs for s in strings_in(spec)})
    keyed: dict[str, list[str]] = {}
    for spec in specs:
        for rule in spec.get("rules") or []:
            for part in [*(rule.get("from") or []), *(rule.get("to") or [])]:
                for body in part.values():
                    for key, vals in (body or {}).items():
                        keyed.setdefault(key.removeprefix("not").lower(), []).extend(vals)
            for cond in rule.get("when") or []:
                vals = [*(cond.get("values") or []), *(cond.get("notValues") or [])]
                keyed.setdefault(cond["key"].lower(), []).extend(vals)
    return Case(name, filters, compiled, values, keyed)


def _fills(value: str) -> list[str]:
    """Strings an Istio value form matches, and near misses of them."""
    core = value.replace("{**}", "a/b").replace("{*}", "seg")
    out = {core.replace("*", "zz"), core.replace("*", ""), core.replace("*", "a/b")}
    bare = core.replace("*", "")
    out |= {bare + "x", "x" + bare, bare[:-1], bare[1:], bare.upper(), bare + "/", "/" + bare}
    return sorted(s for s in out if s)


def _pool(values: list[str], base: list[str], valid: re.Pattern[str]) -> list[str]:
    out = set(base)
    for v in values:
        out.update(_fills(v))
    return sorted(s for s in out if valid.fullmatch(s) and not _DOT_SEGMENT.search(s))


def _identities(case: Case) -> tuple[list[str], list[str]]:
    """SPIFFE IDs for the client certificates: each principal, namespace and trust domain the
    policy names, filled in and in every trust domain; and some of their near misses."""
    exact = {"spiffe://cluster.local/ns/default/sa/default"}
    near: set[str] = set()
    for v in case.values:
        if v.startswith(("/", "request.", "source.", "destination.", "remote.")):
            continue
        filled = v.replace("*", "zz").strip("/")
        if not filled:
            continue
        exact.add("spiffe://" + filled)
        if "/" not in filled:
            exact.add(f"spiffe://cluster.local/ns/{filled}/sa/sa")
            exact.add(f"spiffe://{filled}/ns/foo/sa/x")
        if "/ns/" in v:
            tail = v[v.index("/ns/") :]
            exact.update(f"spiffe://{td}{tail}" for td in TDS)
        for fill in _fills(v):
            fill = fill.strip("/")
            if fill:
                near.add("spiffe://" + fill)
                if "/" not in fill:
                    near.add(f"spiffe://cluster.local/ns/{fill}/sa/sa")
                    near.add(f"spiffe://{fill}/ns/foo/sa/x")
    rng = random.Random(zlib.crc32(case.name.encode()))
    exact = {s for s in exact if _VALUE.fullmatch(s) and " " not in s}
    misses = sorted(s for s in near - exact | _BASE_IDS if _VALUE.fullmatch(s) and " " not in s)
    hits = sorted(exact)
    return rng.sample(hits, min(len(hits), 40)), rng.sample(misses, min(len(misses), 30))


@dataclass(frozen=True)
class Request:
    identity: str
    method: str
    path: str
    host: str
    headers: tuple[tuple[str, str], ...]
    jwt: tuple[str, str] | None  # (iss, sub)


def _requests(case: Case) -> list[Request]:
    rng = random.Random(zlib.crc32(case.name.encode()) + 1)
    values = case.values
    # Envoy's HTTP/1 codec answers 400 to a method it does not know, so only known ones vary.
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
    paths = _pool(values, ["/", "/x", "/a/b", "//path/template", "/allow", "/deny"], _PATH)
    hosts = _pool(values, ["shop.test", "google.com", "GOOGLE.COM", "httpbin.org."], _HOST)
    named = {k[16:-1]: _pool(v, ["x"], _VALUE) for k, v in case.keyed.items() if "headers[" in k}
    issuers: list[tuple[str, str]] = [("https://issuer.test", "alice")]
    for v in case.keyed.get("requestprincipals", []) + case.keyed.get("request.auth.principal", []):
        iss, _, sub = v.rpartition("/") if "/" in v else (v, "", "")
        issuers += [(iss, sub), (iss, sub + "x"), (iss + "x", sub), (iss.upper(), sub)]
    hits, misses = _identities(case)
    out = []
    for _ in range(REQUESTS_PER_CASE):
        headers = tuple(
            (name, rng.choice(pool)) for name, pool in named.items() if rng.random() < 0.7
        )
        out.append(
            Request(
                identity=rng.choice(hits if hits and rng.random() < 0.6 else misses),
                method=rng.choice(methods),
                path=rng.choice(paths),
                host=rng.choice(hosts),
                headers=headers,
                jwt=rng.choice(issuers) if rng.random() < 0.5 else None,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Envoy


def _listener(case: Case, pki: Pki) -> dict[str, Any]:
    jwt_authn = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3."
            "JwtAuthentication",
            "providers": {
                "test": {
                    "local_jwks": {"inline_string": pki.issuer.jwks},
                    "payload_in_metadata": "payload",
                    "forward": True,
                }
            },
            "rules": [
                {
                    "match": {"prefix": "/"},
                    "requires": {
                        "requires_any": {
                            "requirements": [
                                {"provider_name": "test"},
                                {"allow_missing_or_failed": {}},
                            ]
                        }
                    },
                }
            ],
        },
    }
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager."
        "v3.HttpConnectionManager",
        "stat_prefix": case.name,
        "normalize_path": True,
        "use_remote_address": True,
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
                }
            ]
        },
        "http_filters": [jwt_authn, *case.filters, router],
    }
    tls = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
        "DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": str(pki.server.cert)},
                    "private_key": {"filename": str(pki.server.key)},
                }
            ],
            "validation_context": {"trusted_ca": {"filename": str(pki.ca.cert)}},
        },
    }
    return {
        "name": case.name,
        "address": {"socket_address": {"address": LOCAL, "port_value": case.port}},
        "filter_chains": [
            {
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ],
            }
        ],
    }


@dataclass
class Pki:
    ca: TestCA
    server: Issued
    issuer: Issuer
    contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)

    def context(self, uri: str) -> ssl.SSLContext:
        if uri not in self.contexts:
            issued = self.ca.client(uri, f"client-{len(self.contexts)}")
            self.contexts[uri] = self.ca.client_context(issued)
        return self.contexts[uri]


def _envoy(directory: Path, cases: list[Case], pki: Pki, attempt: int) -> EnvoyProcess:
    """An attempt (``started``) at an Envoy with a listener per case; after the first, every
    case on a new port."""
    if attempt:
        for case in cases:
            case.port = free_port()
    admin = free_port()
    bootstrap = {
        "admin": {"address": {"socket_address": {"address": LOCAL, "port_value": admin}}},
        "static_resources": {"listeners": [_listener(c, pki) for c in cases]},
    }
    config = directory / f"envoy-rbac-{attempt}.json"
    config.write_text(json.dumps(bootstrap))
    return EnvoyProcess(config, admin)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = TestCA(tmp_path_factory.mktemp("rbac-pki"))
    return Pki(ca, ca.server(), Issuer())


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    return {name: _case(name) for name in CASES}


@pytest.fixture(scope="module")
def envoy(
    tmp_path_factory: pytest.TempPathFactory, cases: dict[str, Case], pki: Pki
) -> Iterator[None]:
    launch = functools.partial(
        _envoy, tmp_path_factory.mktemp("rbac-envoy"), list(cases.values()), pki
    )
    with started(launch, "envoy with the RBAC listeners", timeout=30):
        yield


def _send(case: Case, pki: Pki, request: Request) -> tuple[int, dict[str, Any] | None]:
    """Envoy's status for ``request`` and the JWT payload it carried (None without a token)."""
    headers = {"Host": request.host, **dict(request.headers)}
    claims = None
    if request.jwt is not None:
        iss, sub = request.jwt
        token = pki.issuer.token(iss=iss, sub=sub)
        claims = jwt.decode(token, options={"verify_signature": False})
        headers["authorization"] = "Bearer " + token
    context = pki.context(request.identity)
    conn = http.client.HTTPSConnection(LOCAL, case.port, timeout=10, context=context)
    try:
        conn.request(request.method, request.path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, claims
    finally:
        conn.close()


def _subject(case: Case, request: Request, claims: dict[str, Any] | None) -> Subject:
    return Subject(
        principal=request.identity,
        source_ip=LOCAL_IP,
        remote_ip=LOCAL_IP,
        claims=claims,
        host=request.host,
        method=request.method,
        path=request.path,
        headers={name.lower(): value for name, value in request.headers},
        destination_ip=LOCAL_IP,
        destination_port=case.port,
        sni=None,
    )


def _decide(case: Case, pki: Pki, request: Request) -> tuple[bool, bool]:
    """(Envoy allowed, engine allowed) for one request."""
    status, claims = _send(case, pki, request)
    assert status in (200, 403), (case.name, request, status)
    ours = evaluate(case.compiled, _subject(case, request, claims)).allowed
    return status == 200, ours


# ---------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("name", CASES)
def test_engine_agrees_with_envoy_rbac(
    name: str, cases: dict[str, Case], pki: Pki, envoy: None
) -> None:
    """Every generated request gets the same decision from Envoy's RBAC and from evaluate."""
    case = cases[name]
    disagreements = []
    for request in _requests(case):
        envoy_allowed, ours = _decide(case, pki, request)
        if envoy_allowed != ours:
            disagreements.append(f"{request}: envoy allowed={envoy_allowed}, engine={ours}")
    assert not disagreements, f"{name}: {len(disagreements)} disagreements\n" + "\n".join(
        disagreements
    )


_NOBODY = "spiffe://cluster.local/ns/a/sa/b"


@pytest.mark.parametrize(
    ("name", "request_", "allowed"),
    [
        pytest.param(
            "multiple-policies",
            Request(_NOBODY, "PUT", "/x", "h", (), ("requestPrincipals1", "")),
            True,
            id="jwt-iss-allows",
        ),
        pytest.param(
            "multiple-policies",
            Request(_NOBODY, "PUT", "/x", "h", (), ("requestPrincipals1", "s")),
            False,
            id="jwt-sub-denies",
        ),
        pytest.param(
            "deny-and-allow",
            Request("spiffe://allow", "GET", "/", "h", (), None),
            True,
            id="principal-allows",
        ),
        pytest.param(
            "deny-and-allow",
            Request("spiffe://deny", "GET", "/", "h", (), None),
            False,
            id="principal-denies",
        ),
        pytest.param(
            "multiple-policies",
            Request("spiffe://td/ns/namespaces2/sa/x", "PUT", "/x", "h", (), None),
            True,
            id="namespace-allows",
        ),
        pytest.param(
            "multiple-policies",
            Request(_NOBODY, "PUT", "/x", "h", (("X-abc", "abc2"),), None),
            True,
            id="header-allows",
        ),
        pytest.param(
            "multiple-policies",
            Request(_NOBODY, "PUT", "/x", "HTTPBIN.org", (), None),
            True,
            id="host-allows",
        ),
        pytest.param(
            "multiple-policies",
            Request(_NOBODY, "PUT", "/v2", "h", (), None),
            True,
            id="path-allows",
        ),
        pytest.param(
            "multiple-policies",
            Request(_NOBODY, "PUT", "/v2/", "h", (), None),
            False,
            id="path-denies",
        ),
        pytest.param(
            "multiple-policies",
            Request(_NOBODY, "POST", "/x", "h", (), None),
            True,
            id="method-allows",
        ),
    ],
)
def test_each_attribute_reaches_envoy(
    name: str, request_: Request, allowed: bool, cases: dict[str, Case], pki: Pki, envoy: None
) -> None:
    """Known answers: the front proxy really hands Envoy's RBAC each attribute we vary."""
    assert _decide(cases[name], pki, request_) == (allowed, allowed)
