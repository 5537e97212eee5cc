"""One tenant's change costs O(that tenant) and ends exactly where a full rebuild would.

Random sequences of tenant adds, changes and removes (many of them conflicting) go through
``TenantRouter.put``/``discard`` and through ``Registry.update``; after every step the
routes, and the conflicts refused, are those of a router built from scratch over the tenants
that stand. A full load with conflicts keeps the same tenants as the algorithm the registry
has always used (tenants unchanged since the last load first, then by name, each kept if it
clashes with none kept before it).
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extauthz.authn import JwksCache
from extauthz.documents import load_documents
from extauthz.loader import route_conflict
from extauthz.registry import Registry
from extauthz.sources import TenantSource
from extauthz.tenancy import TenantConflict, TenantMatch, TenantRouter, TenantSpec
from tests.helpers import tenant_yaml

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = ("a", "b", "c", "d", "e")
HOSTS = ("x.test", "*.x.test", "*.a.x.test", "y.test", "*.test")
NAMESPACES = ("n1", "n2")
HEADERS: tuple[tuple[tuple[str, str], ...], ...] = ((), (("h", "1"),), (("h", "2"),))

# Requests that tell the routes apart: hosts under each pattern, namespaces, headers.
PROBES = [
    (host, ns, headers)
    for host in ("x.test", "a.x.test", "b.a.x.test", "y.test", "q.y.test", "z.test", "")
    for ns in (None, "n1", "n2", "n3")
    for headers in ({}, {"h": "1"}, {"h": "2"})
]

matches = st.builds(
    TenantMatch,
    hosts=st.lists(st.sampled_from(HOSTS), max_size=2, unique=True).map(tuple),
    destination_namespaces=st.frozensets(st.sampled_from(NAMESPACES), max_size=2),
    headers=st.sampled_from(HEADERS),
)
# None removes the tenant; a match adds or changes it.
steps = st.lists(st.tuples(st.sampled_from(NAMES), st.none() | matches), max_size=14)


def routes(router: TenantRouter) -> list[tuple[str | None, bool]]:
    """Where every probe goes (tenant name, matched)."""
    out = []
    for host, ns, headers in PROBES:
        spec, matched = router.route(host, ns, headers)
        out.append((None if spec is None else spec.name, matched))
    return out


def rebuilt(specs: Mapping[str, TenantSpec]) -> TenantRouter | None:
    """A router built from scratch, or None when these tenants conflict."""
    try:
        return TenantRouter(specs.values())
    except TenantConflict:
        return None


@FAST
@given(steps)
def test_router_changed_in_place_equals_a_full_rebuild(
    ops: list[tuple[str, TenantMatch | None]],
) -> None:
    """put refuses exactly the specs a rebuild would find in conflict, changing nothing;
    after every step the router routes every probe as a router built from scratch."""
    router = TenantRouter()
    standing: dict[str, TenantSpec] = {}
    for name, match in ops:
        if match is None:
            router.discard(name)
            standing.pop(name, None)
        else:
            spec = TenantSpec(name=name, match=match)
            expected = rebuilt({**standing, name: spec})
            try:
                router.put(spec)
            except TenantConflict:
                assert expected is None
            else:
                assert expected is not None
                standing[name] = spec
        reference = rebuilt(standing)
        assert reference is not None
        assert routes(router) == routes(reference)
        assert len(router) == len(standing)


def match_yaml(match: TenantMatch) -> str:
    headers = ", ".join(f"{k}: '{v}'" for k, v in match.headers)
    return (
        f"{{hosts: {list(match.hosts)!r}, "
        f"destinationNamespaces: {sorted(match.destination_namespaces)!r}, "
        f"headers: {{{headers}}}}}"
    )


def source(name: str, match: TenantMatch, version: int) -> TenantSource:
    docs = load_documents(tenant_yaml(name, match=match_yaml(match)), f"{name}.yaml")
    return TenantSource(name, str(version), tuple(docs))


@FAST
@given(steps)
def test_registry_updates_equal_a_full_rebuild(ops: list[tuple[str, TenantMatch | None]]) -> None:
    """Registry.update, one tenant at a time: a conflicting update is refused (the tenant
    keeps what it had) and counted; the routes served are always those of a rebuild."""
    registry = Registry(JwksCache())
    registry.replace_all({})
    standing: dict[str, TenantSpec] = {}
    rejected = 0
    for version, (name, match) in enumerate(ops, start=1):
        if match is None:
            registry.update(name, None)
            standing.pop(name, None)
        else:
            spec = TenantSpec(name=name, match=match)
            if rebuilt({**standing, name: spec}) is None:
                rejected += 1
            else:
                standing[name] = spec
            registry.update(name, source(name, match, version))
        reference = rebuilt(standing)
        assert reference is not None
        assert routes(registry.snapshot.router) == routes(reference)
        assert set(registry.snapshot.tenants) == set(standing)
        assert {n: t.spec.match for n, t in registry.snapshot.tenants.items()} == {
            n: s.match for n, s in standing.items()
        }
        assert registry.stats.rejected == rejected


def reference_resolution(
    tenants: Mapping[str, tuple[int, TenantSpec]], old: Mapping[str, tuple[int, TenantSpec]]
) -> dict[str, tuple[int, TenantSpec]]:
    """The tenants a full load keeps, as the registry has always chosen them: all, if they
    route together; else unchanged ones first, then by name, each kept if it clashes with
    none kept before it, else its previous version if it had one (and that clashes with
    none kept before it)."""
    if route_conflict(s for _, s in tenants.values()) is None:
        return dict(tenants)
    accepted: dict[str, tuple[int, TenantSpec]] = {}
    order = sorted(tenants, key=lambda n: (old.get(n) != tenants[n], n))
    for name in order:
        trial = {**accepted, name: tenants[name]}
        if route_conflict(s for _, s in trial.values()) is None:
            accepted[name] = tenants[name]
        elif name in old and old[name] != tenants[name]:
            with_old = {**accepted, name: old[name]}
            if route_conflict(s for _, s in with_old.values()) is None:
                accepted[name] = old[name]
    return accepted


loads = st.dictionaries(st.sampled_from(NAMES), matches, max_size=5)


@FAST
@given(loads, loads, st.sets(st.sampled_from(NAMES)))
def test_full_load_resolves_conflicts_as_before(
    first: dict[str, TenantMatch], second: dict[str, TenantMatch], unchanged: set[str]
) -> None:
    """Two full loads in a row: each keeps the tenants the established algorithm keeps."""
    registry = Registry(JwksCache())
    old_load = {n: (1, TenantSpec(n, m)) for n, m in first.items()}
    registry.replace_all({n: source(n, m, 1) for n, m in first.items()})
    kept = reference_resolution(old_load, {})
    assert {n: t.spec.match for n, t in registry.snapshot.tenants.items()} == {
        n: s.match for n, (_, s) in kept.items()
    }
    # The second load: tenants named in ``unchanged`` come back at the version they had.
    new_load: dict[str, tuple[int, TenantSpec]] = {}
    sources: dict[str, TenantSource] = {}
    for name, match in second.items():
        if name in unchanged and name in kept:
            new_load[name] = kept[name]
            sources[name] = source(name, kept[name][1].match, 1)
        else:
            new_load[name] = (2, TenantSpec(name, match))
            sources[name] = source(name, match, 2)
    registry.replace_all(sources)
    expected = reference_resolution(new_load, kept)
    assert {n: (int(t.version), t.spec.match) for n, t in registry.snapshot.tenants.items()} == {
        n: (v, s.match) for n, (v, s) in expected.items()
    }
    reference = rebuilt({n: s for n, (_, s) in expected.items()})
    assert reference is not None
    assert routes(registry.snapshot.router) == routes(reference)
