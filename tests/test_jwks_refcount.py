"""A jwksUri is fetched while some tenant uses it: counted per tenant, not found by a scan.

The registry acquires the URIs of each tenant it serves and releases them when the tenant is
replaced or removed; the last release stops the fetching. The cache is not started here, so
nothing is fetched: ``tracked`` tells what would be.
"""

from __future__ import annotations

from extauthz.authn import JwksCache
from extauthz.documents import load_documents
from extauthz.registry import Registry
from extauthz.sources import TenantSource

A, B, C = (f"https://keys.example.com/{n}.json" for n in "abc")


def tenant(name: str, host: str, *uris: str, version: str = "1") -> TenantSource:
    rules = "".join(f"\n  - {{issuer: 'iss-{i}', jwksUri: '{u}'}}" for i, u in enumerate(uris))
    text = (
        f"apiVersion: extauthz.io/v1\nkind: Tenant\nmetadata: {{name: {name}}}\n"
        f"spec:\n  match: {{hosts: [{host}]}}\n" + (f"  jwtRules:{rules}\n" if uris else "")
    )
    return TenantSource(name, version, tuple(load_documents(text, f"{name}.yaml")))


def test_counts_per_user() -> None:
    """Two users of one URI: it stays tracked until both have released it."""
    cache = JwksCache()
    cache.acquire({A: 5.0})
    cache.acquire({A: 2.0, B: 5.0})
    assert cache.tracked == {A, B}
    cache.release([A, B])
    assert cache.tracked == {A}
    cache.release([A])
    assert cache.tracked == frozenset()
    cache.release([A])  # one release too many is harmless
    assert cache.tracked == frozenset()


def test_tenants_coming_and_going() -> None:
    """Tracked while any tenant uses a URI: through adds, changes, deletes, a refused
    update and a full load."""
    cache = JwksCache()
    registry = Registry(cache)
    registry.replace_all({"a": tenant("a", "a.test", A), "b": tenant("b", "b.test", A, B)})
    assert cache.tracked == {A, B}
    registry.update("a", None)
    assert cache.tracked == {A, B}  # b still uses A
    registry.update("b", tenant("b", "b.test", C, version="2"))
    assert cache.tracked == {C}
    # An update refused for a routing conflict (c claims b's host) tracks nothing of its own.
    registry.update("c", tenant("c", "b.test", A))
    assert registry.stats.rejected == 1
    assert cache.tracked == {C}
    registry.update("c", tenant("c", "c.test", C))
    registry.update("b", None)
    assert cache.tracked == {C}  # c uses it now
    registry.replace_all({"d": tenant("d", "d.test", B)})
    assert cache.tracked == {B}
    registry.replace_all({})
    assert cache.tracked == frozenset()


def test_failed_update_keeps_the_uris_of_the_version_served() -> None:
    """A version that fails to compile changes nothing: the served version's URI stays."""
    cache = JwksCache()
    registry = Registry(cache)
    registry.replace_all({"a": tenant("a", "a.test", A)})
    broken = tenant("a", "a.test", B, version="2")
    policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
    policy += "metadata: {name: p, namespace: a}\nspec: {action: PERMIT}\n"
    bad = TenantSource("a", "2", (*broken.documents, *load_documents(policy, "p.yaml")))
    registry.update("a", bad)
    assert registry.stats.rejected == 1
    assert cache.tracked == {A}


def test_tenants_without_jwt_rules_share_one_authenticator() -> None:
    """A tenant without jwtRules gets the one rule-less authenticator of its JWKS cache (it
    holds nothing of a tenant); a tenant with rules has its own (and its own token cache)."""
    cache = JwksCache()
    registry = Registry(cache)
    registry.replace_all(
        {
            "a": tenant("a", "a.test"),
            "b": tenant("b", "b.test"),
            "c": tenant("c", "c.test", A),
            "d": tenant("d", "d.test", A),
        }
    )
    t = registry.snapshot.tenants
    assert t["a"].authenticator is t["b"].authenticator
    assert t["a"].authenticator.rules == ()
    assert t["c"].authenticator is not t["d"].authenticator
    other = Registry(JwksCache())
    other.replace_all({"a": tenant("a", "a.test")})
    assert other.snapshot.tenants["a"].authenticator is not t["a"].authenticator
