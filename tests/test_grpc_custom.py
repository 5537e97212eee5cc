"""Custom logic through the served gRPC API and the CLI: CEL, time windows, data sets."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format
from google.rpc import code_pb2

from tests.helpers import (
    REPO,
    Issuer,
    ServerProcess,
    check_request,
    free_port,
    policy_yaml,
    serving,
    tenant_yaml,
    wait_for,
)

ISSUER = Issuer(iss="https://issuer.test", kid="k1")
HOST = "acme.example.com"


def hhmm(when: datetime.datetime) -> str:
    return when.strftime("%H:%M")


def window(start: datetime.datetime, end: datetime.datetime) -> str:
    """A window from ``start`` to ``end`` (less than a day) on the day ``start`` falls on."""
    return f"{start.strftime('%a')} {hhmm(start)}-{hhmm(end)}"


def documents(now: datetime.datetime) -> str:
    """A tenant in UTC with windows around ``now`` and far from it, CEL rules and a data set."""
    hour = datetime.timedelta(hours=1)
    inside = window(now - hour, now + hour)
    outside = window(now + 3 * hour, now + 4 * hour)
    deny = """  action: DENY
  rules:
  - when:
    - key: extauthz.io/cel
      values: ['"x-env" in request.headers && request.headers["x-env"] == "prod"
                && auth.claims.tier == "trial"']
  - when:
    - key: extauthz.io/cel
      values: ['has(auth.claims.jti) && data.contains("revoked-jti", auth.claims.jti)']
  - to: [{operation: {paths: ["/banned"]}}]
    when:
    - key: extauthz.io/cel
      values: ['auth.claims.tier == "banned"']"""
    allow = f"""  action: ALLOW
  rules:
  - to: [{{operation: {{paths: ["/inside", "/banned"]}}}}]
    when: [{{key: extauthz.io/time-window, values: ["{inside}"]}}]
  - to: [{{operation: {{paths: ["/outside"]}}}}]
    when: [{{key: extauthz.io/time-window, values: ["{outside}"]}}]
  - to: [{{operation: {{paths: ["/cel"]}}}}]"""
    dataset = (
        "apiVersion: extauthz.io/v1\nkind: DataSet\n"
        "metadata: {name: revoked-jti, namespace: acme}\nspec: {values: [a1b2, c3d4]}\n"
    )
    return "---\n".join(
        [
            tenant_yaml("acme", match=f"{{hosts: [{HOST}]}}", issuer=ISSUER),
            dataset,
            policy_yaml("deny", "acme", deny),
            policy_yaml("allow", "acme", allow),
        ]
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("custom")
    (root / "acme.yaml").write_text(documents(datetime.datetime.now(datetime.UTC)))
    with serving(["--policies", str(root)]) as srv:
        yield srv


def check(
    server: ServerProcess, path: str, token: str = "", headers: dict[str, str] | None = None
) -> int:
    all_headers = dict(headers or {})
    if token:
        all_headers["authorization"] = f"Bearer {token}"
    response = server.check(check_request(host=HOST, path=path, headers=all_headers))
    return int(response.status.code)


def test_business_hours_allow_inside_deny_outside(server: ServerProcess) -> None:
    """A time-window ALLOW admits inside the window (around now) and denies outside it."""
    assert check(server, "/inside") == code_pb2.OK
    assert check(server, "/outside") == code_pb2.PERMISSION_DENIED


def test_cel_deny_on_claim_and_header(server: ServerProcess) -> None:
    """A CEL DENY on a header and a claim denies only when both hold."""
    trial = ISSUER.token(tier="trial", jti="j1")
    gold = ISSUER.token(tier="gold", jti="j2")
    assert check(server, "/cel", trial, {"x-env": "prod"}) == code_pb2.PERMISSION_DENIED
    assert check(server, "/cel", trial, {"x-env": "dev"}) == code_pb2.OK
    assert check(server, "/cel", gold, {"x-env": "prod"}) == code_pb2.OK


def test_cel_error_in_deny_denies(server: ServerProcess) -> None:
    """A DENY expression that fails (no token, so no tier claim) denies the request."""
    assert check(server, "/banned") == code_pb2.PERMISSION_DENIED
    assert check(server, "/banned", ISSUER.token(tier="gold", jti="j3")) == code_pb2.OK


def test_revoked_jti_denied(server: ServerProcess) -> None:
    """A token whose jti is in the revoked-jti DataSet is denied; another one is not."""
    assert check(server, "/cel", ISSUER.token(jti="c3d4")) == code_pb2.PERMISSION_DENIED
    assert check(server, "/cel", ISSUER.token(jti="ffff")) == code_pb2.OK


# -- extauthz check --at ------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extauthz", *args],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ),
    )


BERLIN = """apiVersion: extauthz.io/v1
kind: Tenant
metadata: {name: acme}
spec: {match: {}, timeZone: Europe/Berlin}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: early, namespace: acme}
spec:
  rules:
  - when: [{key: extauthz.io/time-window, values: ["Sun 03:00-04:00"]}]
"""


@pytest.mark.parametrize(
    ("at", "decision"),
    [
        ("2026-03-29T00:59:59Z", "deny"),  # 01:59:59 CET
        ("2026-03-29T01:30:00Z", "allow"),  # 03:30 CEST: the clock skipped 02:00-03:00
        ("2026-03-29T03:30:00+02:00", "allow"),
        ("2026-03-29T02:00:00Z", "deny"),  # 04:00 CEST
    ],
)
def test_check_at_decides_as_at_that_instant(tmp_path: Path, at: str, decision: str) -> None:
    """`extauthz check --at` decides as at the given instant, across a daylight-saving change."""
    (tmp_path / "acme.yaml").write_text(BERLIN)
    req = tmp_path / "req.json"
    req.write_text(json_format.MessageToJson(check_request(host=HOST)))
    out = run(
        "check", "--policies", str(tmp_path), "--request", str(req), "--at", at, "--output", "json"
    )
    assert json.loads(out.stdout)["decision"] == decision, out.stderr


def test_check_at_needs_an_offset(tmp_path: Path) -> None:
    """An instant without an offset is refused rather than read in some local zone."""
    out = run(
        "check",
        "--policies",
        str(REPO / "policies"),
        "--request",
        "x.json",
        "--at",
        "2026-03-29T01:30:00",
    )
    assert out.returncode == 2
    assert "needs an offset" in out.stderr


def test_validate_names_cel_error(tmp_path: Path) -> None:
    """`extauthz policy validate` names file, line and field of a bad CEL expression."""
    spec = (
        "  action: DENY\n  rules:\n  - when:\n    - key: extauthz.io/cel\n"
        "      values: ['request.hedaers.x == 1']"
    )
    (tmp_path / "p.yaml").write_text(policy_yaml("p", "acme", spec))
    out = run("policy", "validate", str(tmp_path))
    assert out.returncode != 0
    assert "p.yaml:9" in out.stderr
    assert "spec.rules[0].when[0].values[0]" in out.stderr
    assert (
        "undeclared reference to 'request.hedaers.x' (expression line 1, column 16)" in out.stderr
    )


def test_cel_errors_are_counted_on_metrics(tmp_path: Path) -> None:
    """Each fail-closed evaluation error shows on /metrics as extauthz_cel_errors_total."""
    from tests.test_telemetry_prometheus import scrape

    (tmp_path / "acme.yaml").write_text(documents(datetime.datetime.now(datetime.UTC)))
    port = free_port()
    args = ["--policies", str(tmp_path), "--metrics-listen", f"127.0.0.1:{port}"]
    with serving(args) as srv:
        assert check(srv, "/banned") == code_pb2.PERMISSION_DENIED
        assert check(srv, "/banned") == code_pb2.PERMISSION_DENIED
        samples = scrape(port)
    (labels, value), *_ = samples["extauthz_cel_errors_total"]
    assert (labels["tenant"], value) == ("acme", 2.0)


def test_bad_cel_on_reload_keeps_last_good(tmp_path: Path) -> None:
    """A file whose CEL no longer type-checks is rejected with its place; the old rules serve."""
    good = documents(datetime.datetime.now(datetime.UTC))
    policy = tmp_path / "acme.yaml"
    policy.write_text(good)
    with serving(["--policies", str(tmp_path)]) as srv:
        trial = ISSUER.token(tier="trial", jti="j9")
        assert check(srv, "/cel", trial, {"x-env": "prod"}) == code_pb2.PERMISSION_DENIED
        policy.write_text(good.replace('auth.claims.tier == "trial"', "auth.claims.tier + 1"))
        wait_for(lambda: "invalid CEL expression" in srv.logs(), 10, what="rejection in the logs")
        assert f"{policy}:" in srv.logs()
        assert check(srv, "/cel", trial, {"x-env": "prod"}) == code_pb2.PERMISSION_DENIED
        assert check(srv, "/cel", trial, {"x-env": "dev"}) == code_pb2.OK
