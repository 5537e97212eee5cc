"""End to end: a RateLimit's headers and its 429 reach the client through a real Envoy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.envoy_support import EnvoyProcess, echo_upstream, running_envoy, send
from tests.helpers import ServerProcess, serving

pytestmark = pytest.mark.envoy

DOCS = """\
apiVersion: extauthz.io/v1
kind: Tenant
metadata: {name: shop}
spec: {match: {}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: all, namespace: shop}
spec: {action: ALLOW, rules: [{to: [{operation: {methods: [GET]}}]}]}
---
apiVersion: extauthz.io/v1
kind: RateLimit
metadata: {name: per-client, namespace: shop}
spec:
  limits:
  - key: ["request.headers[x-client]"]
    requests: 2
    per: hour
"""


@pytest.fixture(scope="module")
def envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyProcess]:
    directory = tmp_path_factory.mktemp("e2e-ratelimit")
    policies = directory / "policies"
    policies.mkdir()
    (policies / "shop.yaml").write_text(DOCS)
    server: ServerProcess
    with (
        echo_upstream() as upstream,
        serving(["--policies", str(policies), "--log-level", "warning"]) as server,
        running_envoy(Path(directory), server.address, upstream) as proxy,
    ):
        yield proxy


def test_client_sees_ratelimit_headers_then_429(envoy: EnvoyProcess) -> None:
    """Under the limit the client gets RateLimit headers; over it, 429 with retry-after."""
    if 3600 - time.time() % 3600 < 30:  # keep the three requests in one hourly window
        time.sleep(3600 - time.time() % 3600 + 0.1)
    client = {"x-client": "c1"}
    first, second, third = (send(envoy, "/item", headers=client) for _ in range(3))
    assert [first.status, second.status, third.status] == [200, 200, 429]
    assert first.upstream["path"] == "/item"  # allowed requests reach the upstream
    assert first.headers["ratelimit-policy"] == '"per-client/0";q=2;w=3600'
    assert first.headers["ratelimit"].startswith('"per-client/0";r=1;t=')
    assert second.headers["ratelimit"].startswith('"per-client/0";r=0;t=')
    assert "ratelimit" not in second.upstream_headers  # for the client, not the upstream
    assert "x-echo" not in third.headers  # refused before the upstream
    assert third.body == b"too many requests\n"
    assert third.headers["ratelimit-policy"] == '"per-client/0";q=2;w=3600'
    retry = int(third.headers["retry-after"])
    assert 0 < retry <= 3600
    assert third.headers["ratelimit"] == f'"per-client/0";r=0;t={retry}'
    assert send(envoy, "/item", headers={"x-client": "c2"}).status == 200
