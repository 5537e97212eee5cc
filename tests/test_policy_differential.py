"""Differential test: our engine against Envoy's RBAC semantics on Istio's golden data.

For each ``X-in.yaml`` in Istio's builder testdata, ``tests/rbac_reference.py`` interprets the
Envoy RBAC config Istio generated for it (``X-out*.yaml``, in filter-chain order); hypothesis
generates requests biased toward the values the policy names, their near misses and missing
attributes, and our ``evaluate`` must agree on the decision, the deciding policy and rule, the
audits and the shadow (dry-run) engines. ``selector`` policies run as whole-tenant policies.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extauthz.documents import load_documents
from extauthz.model import Subject
from extauthz.policy import CompiledPolicies, compile_policies, evaluate
from tests import rbac_reference as ref

ref.require_golden()
GOLDEN, TRUST_DOMAINS = ref.GOLDEN, ref.TRUST_DOMAINS
CASES = sorted(p.name.removesuffix("-in.yaml") for p in GOLDEN.glob("*-in.yaml"))
# Envoy's RBAC always knows the SNI; we know it only when the Check carries the TLS session (an
# unknown SNI is decided on the safe side, tests/test_policy_fields.py): compare known SNIs.
KNOWN_SNI = "sni.test"
TDS = [
    "td1",
    "cluster.local",
    "some-td",
    "foobar",
    "new-td",
    "old-td",
    "some-trustdomain",
    "another.local",
    "untrusted",
    "bad",
    "bad-td",
    "xbar",
    "td",
]


def _atoms(values: list[str]) -> list[str]:
    """The policy's strings, with wildcards filled in and near misses around them."""
    out = {"", "x", "a/b", "GET"}
    for v in values:
        core = v.replace("{**}", "a/b").replace("{*}", "seg").replace("*", "")
        for w in (
            v,
            core,
            v.replace("*", "zz"),
            core + "-x",
            "x-" + core,
            core[:-1],
            core[1:],
            core.upper(),
            "/" + core,
            core + "/",
        ):
            out.add(w)
        out.update(core.split("/"))
    return sorted(out)


def _ips(values: list[str]) -> list[Any]:
    ips: set[Any] = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    for v in values:
        try:
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            continue
        ips.update(
            {
                net.network_address,
                net.broadcast_address,
                net.network_address - 1,
                net.broadcast_address + 1
                if net.broadcast_address != ipaddress.ip_address("255.255.255.255")
                else net.network_address,
            }
        )
    return sorted(ips, key=lambda a: (a.version, a))


def _subjects(case: str) -> st.SearchStrategy[Subject]:
    raw = yaml.safe_load_all((GOLDEN / f"{case}-in.yaml").read_text())
    values = sorted({s for doc in raw if doc for s in ref.strings_in(doc.get("spec", {}))})
    atoms = _atoms(values)
    text = st.sampled_from(atoms) | st.text(alphabet="ab-/.*", max_size=6)
    ips = st.none() | st.sampled_from(_ips(values))
    ports = [int(v) for v in values if re.fullmatch(r"[0-9]{1,5}", v)]
    principal = (
        st.none()
        | st.builds(
            lambda td, ns, sa: f"spiffe://{td}/ns/{ns}/sa/{sa}",
            st.sampled_from(TDS) | text,
            text,
            text,
        )
        | st.builds(lambda t: "spiffe://" + t, text)
        | text
    )
    header_names = sorted(
        {m.lower() for v in values for m in re.findall(r"request\.headers\[(.+?)\]", v)}
    )
    # A repeated header reaches us joined with ",": values with commas exercise the two readings.
    header_value = text | st.builds(lambda a, b: f"{a},{b}", text, text)
    headers = st.dictionaries(
        st.sampled_from(header_names or ["x-header"]), header_value, max_size=2
    )
    claim = text | st.lists(text, max_size=3) | st.integers(0, 3) | st.booleans()
    claims = st.none() | st.fixed_dictionaries(
        {},
        optional={
            "iss": text,
            "sub": text,
            "aud": claim,
            "azp": claim,
            "scope": text,
            "nested1": st.fixed_dictionaries({}, optional={"nested2": claim}) | claim,
            **{k: claim for v in values for k in re.findall(r"claims\[(\w+)\]", v)},
        },
    )
    paths = (
        text
        | st.builds(lambda a, b: f"/{a}/{b}".replace("//", "/"), text, text)
        | st.sampled_from(
            [
                "/path/template/x",
                "/path/template/x/y",
                "/a/b/path/template",
                "//path/template",
                "/not-path/template/q",
                "/q/not-path/template",
                "/allow",
                "/deny",
                "/another",
            ]
        )
    )
    return st.builds(
        Subject,
        principal=principal,
        source_ip=ips,
        remote_ip=ips,
        claims=claims,
        host=text,
        method=text,
        path=paths,
        headers=headers,
        destination_ip=ips,
        destination_port=st.none() | st.sampled_from([*ports, 1, 8080]),
        sni=text.map(lambda t: t or KNOWN_SNI),
    )


def _fill(draw: Any, value: str) -> str:
    """A string the Istio value form matches (or, sometimes, a near miss)."""
    filler = st.sampled_from(["x", "abc", "a.b", "", "-"])
    out = value.replace("{**}", draw(st.sampled_from(["a/b", "q", ""]))).replace("{*}", "seg")
    if out == "*":
        out = draw(st.sampled_from(["y", "", "a b"]))
    elif out.startswith("*"):
        out = draw(filler) + out[1:]
    elif out.endswith("*"):
        out = out[:-1] + draw(filler)
    return draw(st.sampled_from([out, out, out, out.upper(), out + "x", out[1:]]))


def _iss_sub(draw: Any, value: str) -> dict[str, str]:
    if "/" in value:
        iss, _, sub = value.rpartition("/")
        return {"iss": iss, "sub": sub}
    other = draw(st.sampled_from(["", "s", "https://i"]))
    return draw(st.sampled_from([{"iss": value, "sub": other}, {"iss": other, "sub": value}]))


def _satisfying(draw: Any, rule: dict[str, Any]) -> dict[str, Any]:
    """Subject fields chosen to satisfy one golden rule's values, some dropped or bent."""
    f: dict[str, Any] = {"headers": {}, "claims": {}, "sni": KNOWN_SNI}
    td = draw(st.sampled_from(TDS))

    def pick(values: list[str]) -> str:
        return _fill(draw, draw(st.sampled_from(values)))

    def ip(values: list[str]) -> Any:
        v = draw(st.sampled_from(values))
        try:
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            return None
        return draw(
            st.sampled_from(
                [
                    net.network_address,
                    net.broadcast_address,
                    net.network_address + 1 if net.num_addresses > 1 else net.network_address,
                ]
            )
        )

    source = (draw(st.sampled_from(rule["from"])).get("source") or {}) if rule.get("from") else {}
    for key, values in source.items():
        if key.startswith("not") or draw(st.integers(0, 5)) == 0:
            continue
        if key == "principals":
            f["principal"] = "spiffe://" + pick(values)
        elif key == "namespaces":
            f["principal"] = (
                f"spiffe://{td}/ns/{pick(values)}/sa/{draw(st.sampled_from(['a', 'b/c']))}"
            )
        elif key == "serviceAccounts":
            v = draw(st.sampled_from(values))
            ns, _, sa = v.rpartition("/")
            tail = draw(st.sampled_from(["", "/", "/x", "x"]))
            f["principal"] = f"spiffe://{td}/ns/{ns or 'foo'}/sa/{sa}{tail}"
        elif key == "trustDomains":
            f["principal"] = f"spiffe://{pick(values)}/ns/a/sa/b"
        elif key == "requestPrincipals":
            f["claims"].update(_iss_sub(draw, pick(values)))
        elif key == "ipBlocks":
            f["source_ip"] = ip(values)
        elif key == "remoteIpBlocks":
            f["remote_ip"] = ip(values)
    operation = (draw(st.sampled_from(rule["to"])).get("operation") or {}) if rule.get("to") else {}
    for key, values in operation.items():
        if key.startswith("not") or draw(st.integers(0, 5)) == 0:
            continue
        if key == "ports":
            f["destination_port"] = int(draw(st.sampled_from(values)))
        else:
            f[{"hosts": "host", "methods": "method", "paths": "path"}[key]] = pick(values)
    for cond in rule.get("when") or []:
        key, values = cond["key"], cond.get("values") or []
        if not values or draw(st.integers(0, 5)) == 0:
            continue
        if key.startswith("request.headers["):
            f["headers"][key[16:-1].lower()] = pick(values)
        elif key in ("source.ip", "remote.ip", "destination.ip"):
            f[{"source.ip": "source_ip", "remote.ip": "remote_ip"}.get(key, "destination_ip")] = ip(
                values
            )
        elif key == "destination.port":
            f["destination_port"] = int(draw(st.sampled_from(values)))
        elif key == "connection.sni":
            f["sni"] = pick(values) or KNOWN_SNI
        elif key == "source.namespace":
            f["principal"] = f"spiffe://{td}/ns/{pick(values)}/sa/a"
        elif key == "source.principal":
            f["principal"] = "spiffe://" + pick(values)
        elif key == "request.auth.principal":
            f["claims"].update(_iss_sub(draw, pick(values)))
        elif key in ("request.auth.audiences", "request.auth.presenter"):
            v = pick(values)
            f["claims"]["aud" if key.endswith("audiences") else "azp"] = draw(
                st.sampled_from([v, [v, "other"], [1]])
            )
        elif key.startswith("request.auth.claims["):
            path = key[len("request.auth.claims[") : -1].split("][")
            target = f["claims"]
            for part in path[:-1]:
                target = target.setdefault(part, {})
            v = pick(values)
            target[path[-1]] = draw(st.sampled_from([v, [v], ["z", v], f"{v} z"]))
    if not f["claims"]:
        f["claims"] = None
    return f


@functools.cache
def _golden_rules(case: str) -> list[dict[str, Any]]:
    raw = [d for d in yaml.safe_load_all((GOLDEN / f"{case}-in.yaml").read_text()) if d]
    return [r for d in raw for r in (d.get("spec") or {}).get("rules") or []]


@st.composite
def _targeted(draw: Any, case: str) -> Subject:
    rules = _golden_rules(case)
    fields = _satisfying(draw, draw(st.sampled_from(rules))) if rules else {"sni": KNOWN_SNI}
    return Subject(**fields)


# allow-full-rule's rule[1] can never match as a whole (``*`` in every notX field, and an
# experimental condition we never satisfy); split into one policy per field part, in the order
# Istio emits the and-entries (model.go: from fields, then when keys; to fields, then when keys).
_FULL = "allow-full-rule"
_PRINCIPAL_SIDE = [
    ("from", "principals"),
    ("from", "requestPrincipals"),
    ("from", "namespaces"),
    ("from", "remoteIpBlocks"),
    ("from", "ipBlocks"),
]
_PERMISSION_SIDE = [("to", "hosts"), ("to", "methods"), ("to", "paths"), ("to", "ports")]
_PERMISSION_KEYS = ("destination.ip", "destination.port", "connection.sni", "experimental.")


def _full_rule_variants() -> list[tuple[str, dict[str, Any], ref.Filter]]:
    doc = yaml.safe_load((GOLDEN / f"{_FULL}-in.yaml").read_text())
    rule = doc["spec"]["rules"][1]
    src = rule["from"][0]["source"]
    op = rule["to"][0]["operation"]
    out = yaml.safe_load((GOLDEN / f"{_FULL}-out.yaml").read_text())
    pol = out["typedConfig"]["rules"]["policies"]["ns[foo]-policy[httpbin-1]-rule[1]"]
    p_entries = pol["principals"][0]["andIds"]["ids"]
    q_entries = pol["permissions"][0]["andRules"]["rules"]
    parts: list[tuple[str, dict[str, Any]]] = []  # (side, rule) in Istio's entry order
    for side, fields, body in (("p", _PRINCIPAL_SIDE, src), ("q", _PERMISSION_SIDE, op)):
        for where, name in fields:
            neg = "not" + name[0].upper() + name[1:]
            kind = "source" if where == "from" else "operation"
            parts.append((side, {where: [{kind: {name: body[name]}}]}))
            parts.append((side, {where: [{kind: {neg: body[neg]}}]}))
        for cond in rule["when"]:
            if (side == "q") == cond["key"].startswith(_PERMISSION_KEYS):
                parts.append((side, {"when": [{"key": cond["key"], "values": cond["values"]}]}))
                parts.append(
                    (side, {"when": [{"key": cond["key"], "notValues": cond["notValues"]}]})
                )
    p_parts = [r for side, r in parts if side == "p"]
    q_parts = [r for side, r in parts if side == "q"]
    assert len(p_parts) == len(p_entries)
    assert len(q_parts) == len(q_entries)
    variants = []
    for side_parts, entries, side in ((p_parts, p_entries, "p"), (q_parts, q_entries, "q")):
        for i, (part, entry) in enumerate(zip(side_parts, entries, strict=True)):
            name = f"v{side}{i}"
            policy = {
                "permissions": [{"andRules": {"rules": [entry if side == "q" else {"any": True}]}}],
                "principals": [{"andIds": {"ids": [entry if side == "p" else {"any": True}]}}],
            }
            engine = ref.Engine("ALLOW", {f"ns[foo]-policy[{name}]-rule[0]": policy})
            variants.append((name, part, ref.Filter(engine, None)))
    return variants


VARIANTS = _full_rule_variants()


@pytest.mark.parametrize(("name", "rule", "reference"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_full_rule_field_by_field(name: str, rule: dict[str, Any], reference: ref.Filter) -> None:
    """Each field part of allow-full-rule's rule[1], alone, agrees with its golden and-entry."""
    text = yaml.safe_dump(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "foo"},
            "spec": {"rules": [rule]},
        }
    )
    compiled = compile_policies(load_documents(text, f"{name}.yaml"))

    @st.composite
    def subjects(draw: Any) -> Subject:
        return Subject(**_satisfying(draw, rule))

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(subjects() | _subjects(_FULL))
    def agree(subject: Subject) -> None:
        _check(name, compiled, [reference], subject)

    agree()


def _compiled(case: str) -> CompiledPolicies:
    docs = load_documents(ref.golden_policies(case), f"{case}-in.yaml")
    return compile_policies(docs, trust_domains=TRUST_DOMAINS.get(case, ()))


def _filters(case: str) -> list[ref.Filter]:
    return [ref.load_filter(p) for p in ref.out_files(GOLDEN, case)]


def _check(
    case: str, compiled: CompiledPolicies, filters: list[ref.Filter], subject: Subject
) -> None:
    want = ref.run(filters, ref.Request(subject))
    got = evaluate(compiled, subject)
    assert got.allowed == want.allowed, (case, subject, want)
    deciding = ref.parse_policy_id(want.deciding) if want.deciding else ("", -1)
    assert (got.policy, got.rule) == deciding, (case, subject, want)
    assert [(a.policy, a.rule) for a in got.audits] == [ref.parse_policy_id(a) for a in want.audits]
    if want.shadow:
        assert got.shadow is not None
        for action, hit in want.shadow.items():
            mine = got.shadow.deny_match if action == "DENY" else got.shadow.allow_match
            expect = ref.parse_policy_id(hit) if hit else None
            assert ((mine.policy, mine.rule) if mine else None) == expect, (case, subject, action)
    else:
        assert got.shadow is None


def test_every_golden_case_is_covered() -> None:
    """Each golden input has output files and compiles (the differential test has work)."""
    assert len(CASES) >= 15
    for case in CASES:
        assert ref.out_files(GOLDEN, case), case
        assert len(_compiled(case)) >= 1


@pytest.mark.parametrize("case", CASES)
def test_agrees_with_envoy_rbac(case: str) -> None:
    """Our decision, deciding rule, audits and shadow match Envoy's for generated requests."""
    compiled = _compiled(case)
    filters = _filters(case)

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(_subjects(case))
    def agree(subject: Subject) -> None:
        _check(case, compiled, filters, subject)

    agree()


@pytest.mark.parametrize("case", CASES)
def test_agrees_on_requests_aimed_at_each_rule(case: str) -> None:
    """Requests built to satisfy one rule's values (then bent or cut) agree with Envoy."""
    compiled = _compiled(case)
    filters = _filters(case)

    @settings(
        max_examples=100,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(_targeted(case))
    def agree(subject: Subject) -> None:
        _check(case, compiled, filters, subject)

    agree()


@pytest.mark.parametrize("case", CASES)
def test_agrees_on_crafted_matches(case: str) -> None:
    """Requests built to satisfy each source principal/path value agree too (not only misses)."""
    compiled = _compiled(case)
    filters = _filters(case)
    raw = [d for d in yaml.safe_load_all((GOLDEN / f"{case}-in.yaml").read_text()) if d]
    values = sorted({s for doc in raw for s in ref.strings_in(doc.get("spec", {}))})
    for v in _atoms(values):
        for td in TDS[:7]:
            subject = Subject(
                principal=f"spiffe://{td}/ns/{v}/sa/{v}",
                path=v if v.startswith("/") else "/" + v,
                method=v,
                host=v,
                sni=KNOWN_SNI,
            )
            _check(case, compiled, filters, subject)
            other = Subject(principal="spiffe://" + v, path=v, sni=v or KNOWN_SNI)
            _check(case, compiled, filters, other)
