"""Peer-identity values (principals, namespaces, service accounts, trust domains) as Istio
turns them into Envoy matchers on the peer SPIFFE URI, and trust-domain alias expansion.

Each function returns a ``StringSet`` that is applied to the full peer URI
(``spiffe://td/ns/a/sa/b``); the forms are those of Istio's generated RBAC config:

=====================  =====================================================
``principals``         ``a`` exact ``spiffe://a``; ``a*`` prefix ``spiffe://a``;
                       ``*a`` regex ``spiffe://.*a``; ``*`` regex ``.+``
``namespaces``         regex ``.*/ns/<v>/.*`` with each ``*`` of v as ``.*``
``serviceAccounts``    regex ``spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`` (bare ``sa``:
                       the policy's namespace)
``trustDomains``       ``td`` prefix ``spiffe://td/``; ``td*`` regex
                       ``spiffe://td[^/]*/.*``; ``*td`` regex ``spiffe://[^/]*td/.*``
=====================  =====================================================
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

from extauthz.policy.matchers import StringSet, ValueForms

__all__ = [
    "expand_trust_domains",
    "namespace_set",
    "principal_set",
    "service_account_set",
    "trust_domain_set",
]

SPIFFE: Final = "spiffe://"
CLUSTER_LOCAL: Final = "cluster.local"


def principal_set(values: Iterable[str]) -> StringSet:
    forms = ValueForms.split(values)
    return StringSet(
        exact=[SPIFFE + v for v in forms.exact],
        prefixes=[SPIFFE + v for v in forms.prefixes],
        regexes=["spiffe://.*" + re.escape(v) for v in forms.suffixes],
        nonempty=forms.star,
    )


def namespace_set(values: Iterable[str]) -> StringSet:
    return StringSet(regexes=[f".*/ns/{_glob(v)}/.*" for v in values])


def service_account_set(values: Iterable[str], policy_namespace: str) -> StringSet:
    regexes = []
    for v in values:
        ns, slash, sa = v.partition("/")
        if not slash:
            ns, sa = policy_namespace, v
        regexes.append(f"spiffe://.+/ns/{re.escape(ns)}/(.+/|)sa/{re.escape(sa)}(/.+)?")
    return StringSet(regexes=regexes)


def trust_domain_set(values: Iterable[str]) -> StringSet:
    prefixes: list[str] = []
    regexes: list[str] = []
    for v in values:
        if v == "*":
            regexes.append("spiffe://[^/]+/.*")
        elif v.startswith("*"):
            regexes.append("spiffe://[^/]*" + re.escape(v[1:]) + "/.*")
        elif v.endswith("*"):
            regexes.append("spiffe://" + re.escape(v[:-1]) + "[^/]*/.*")
        else:
            prefixes.append(f"{SPIFFE}{v}/")
    return StringSet(prefixes=prefixes, regexes=regexes)


def _glob(value: str) -> str:
    return re.escape(value).replace(r"\*", ".*")


def expand_trust_domains(principals: Sequence[str], trust_domains: Sequence[str]) -> list[str]:
    """Istio's ``ReplaceTrustDomainAliases``: a principal written for the local trust domain,
    one of its aliases or ``cluster.local`` stands for the same workload in all of them.

    Without trust domains nothing is replaced.
    """
    if not trust_domains:
        return list(principals)
    out: list[str] = []
    for principal in principals:
        parts = principal.split("/")
        if len(parts) != 5 or parts[0] == "*":  # not a SPIFFE form, or any trust domain
            out.append(principal)
            continue
        td = parts[0]
        if not (_td_list_match(td, trust_domains) or td == CLUSTER_LOCAL):
            out.append(principal)
            continue
        rest = "/".join(parts[1:])
        expanded: list[str] = []
        for alias in trust_domains:
            new = principal if _suffix_match(alias, td) else f"{alias}/{rest}"
            if new not in expanded:
                expanded.append(new)
        out.extend(expanded)
    return out


def _prefix_match(value: str, pattern: str) -> bool:
    return pattern.endswith("*") and value.startswith(pattern[:-1])


def _suffix_match(value: str, pattern: str) -> bool:
    return pattern.startswith("*") and value.endswith(pattern[1:])


def _td_list_match(td: str, trust_domains: Sequence[str]) -> bool:
    return any(
        td == s
        or s == "*"
        or _prefix_match(td, s)
        or _prefix_match(s, td)
        or _suffix_match(td, s)
        or _suffix_match(s, td)
        for s in trust_domains
    )
