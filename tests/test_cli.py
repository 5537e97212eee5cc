"""The command line: validate, check, settings from flags and environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format

from tests.helpers import REPO, check_request, policy_yaml, tenant_yaml

EXAMPLE = REPO / "examples" / "requests" / "acme-frontend-list-orders.json"


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extauthz", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_version_names_the_build() -> None:
    """The package under test is the pure one (tests/test_compiled.py checks the other)."""
    out = run("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "extauthz 0.1.0 (pure Python)"


def test_validate_examples() -> None:
    """The shipped example policies validate."""
    out = run("policy", "validate", str(REPO / "policies"))
    assert out.returncode == 0, out.stderr
    assert "ok: tenant acme: 5 policies" in out.stdout
    assert "ok: tenant globex: 3 policies" in out.stdout


@pytest.mark.parametrize(
    ("spec", "line", "field"),
    [
        (
            "  rules:\n  - to:\n    - operation: {ports: 80}",
            7,
            "spec.rules[0].to[0].operation.ports",
        ),
        ("  action: CUSTOM\n  rules: [{}]", 5, "spec.action"),
        (
            "  rules:\n  - from:\n    - source:\n        principalz: [a]",
            8,
            "spec.rules[0].from[0].source.principalz",
        ),
        ("  selector: {matchLabels: {app: web}}\n  rules:\n  - {}", 5, "spec.selector"),
        ("  targetRefs: []\n  action: ALLOW", 5, "spec.targetRefs"),
        (
            "  action: DENY\n  rules:\n  - when:\n"
            "    - key: experimental.envoy.filters.a.b[c]\n      values: [x]",
            8,
            "spec.rules[0].when[0].key",
        ),
    ],
)
def test_validate_names_file_line_and_field(
    tmp_path: Path, spec: str, line: int, field: str
) -> None:
    """An invalid policy is reported as file:line: field: message, exit status 1."""
    path = tmp_path / "bad.yaml"
    path.write_text(policy_yaml("bad", "shop", spec))
    out = run("policy", "validate", str(tmp_path))
    assert out.returncode == 1
    assert f"{path}:{line}: {field}:" in out.stderr


def test_validate_reports_tenant_conflicts(tmp_path: Path) -> None:
    """Two tenants that claim the same host can't both be loaded."""
    (tmp_path / "a.yaml").write_text(tenant_yaml("a", match="{hosts: [x.test]}"))
    (tmp_path / "b.yaml").write_text(tenant_yaml("b", match="{hosts: [x.test]}"))
    out = run("policy", "validate", str(tmp_path))
    assert out.returncode == 1
    assert "both match host='x.test'" in out.stderr


def test_validate_warns_on_selector(tmp_path: Path) -> None:
    """A DENY's workload selector can't be honoured by ext_authz: said out loud, not dropped."""
    spec = "  selector: {matchLabels: {app: web}}\n  action: DENY\n  rules:\n  - {}"
    (tmp_path / "p.yaml").write_text(policy_yaml("p", "shop", spec))
    out = run("policy", "validate", str(tmp_path))
    assert out.returncode == 0
    assert "warning:" in out.stderr
    assert "selector" in out.stderr


def test_validate_warns_on_sni_condition(tmp_path: Path) -> None:
    """A DENY on connection.sni validates, with a warning naming file:line:field and the fix."""
    spec = (
        "  action: DENY\n  rules:\n  - when:\n    - key: connection.sni\n      values: [evil.test]"
    )
    path = tmp_path / "p.yaml"
    path.write_text(policy_yaml("p", "shop", spec))
    out = run("policy", "validate", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert f"{path}:8: spec.rules[0].when[0].key: connection.sni" in out.stderr
    assert "include_tls_session" in out.stderr


def test_check_json_explains(tmp_path: Path) -> None:
    """`check --output json` gives the decision, the deciding policy and the rule trace."""
    out = run(
        "check", "--policies", str(REPO / "policies"), "--request", str(EXAMPLE), "--output", "json"
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["decision"], result["policy"], result["rule"]) == (
        "allow",
        "acme/frontend-to-orders",
        0,
    )
    assert "explanation" in result


def test_check_text_shows_failed_field_of_nearest_rule() -> None:
    """A deny says which field of the nearest rule failed."""
    example = REPO / "examples" / "requests" / "acme-user-write-without-scope.json"
    out = run("check", "--policies", str(REPO / "policies"), "--request", str(example))
    assert out.returncode == 1
    assert out.stdout.startswith("DENY (403)")
    assert "when[0].values" in out.stdout


def test_a_reader_that_stops_early_gets_no_traceback() -> None:
    """``extauthz check ... | head -1``: the reader closes the pipe before the explanation is
    written; the command ends quietly, with the status of a process ended by SIGPIPE."""
    example = REPO / "examples" / "requests" / "acme-user-write-without-scope.json"
    with subprocess.Popen(
        [sys.executable, "-m", "extauthz", "check", "--policies", str(REPO / "policies"),
         "--request", str(example)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()  # before the command has written anything
        try:
            stderr = proc.stderr.read()
            code = proc.wait(timeout=60)
        finally:
            proc.kill()
    assert code == 141, stderr
    assert stderr == ""


def test_policies_from_environment(tmp_path: Path) -> None:
    """EXTAUTHZ_POLICIES stands in for --policies."""
    (tmp_path / "t.yaml").write_text(tenant_yaml("shop"))
    req = tmp_path / "r.json"
    from google.protobuf import json_format

    req.write_text(json_format.MessageToJson(check_request(host="shop.test")))
    out = run(
        "check", "--request", str(req), "--output", "json", env={"EXTAUTHZ_POLICIES": str(tmp_path)}
    )
    assert json.loads(out.stdout)["tenant"] == "shop"
    assert out.returncode == 0


def test_check_rejects_unknown_request_fields(tmp_path: Path) -> None:
    """A request file with a typo is an error (exit 2), not a silently different request."""
    req = tmp_path / "r.json"
    req.write_text('{"attributes": {"request": {"http": {"methd": "GET"}}}}')
    out = run("check", "--policies", str(REPO / "policies"), "--request", str(req))
    assert out.returncode == 2
    assert "methd" in out.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--listen", "nope"], {}, "--listen (EXTAUTHZ_LISTEN): expected HOST:PORT"),
        (["--policies", "/does/not/exist"], {}, "does not exist"),
        ([], {"EXTAUTHZ_TRUSTED_PROXY_PRINCIPAL": "not-spiffe"}, "--trusted-proxy-principal"),
        (["--policies", "policies"], {"EXTAUTHZ_REDIS_URL": "redis://x"}, "choose one store"),
    ],
)
def test_serve_fails_before_listening_on_bad_settings(
    args: list[str], env: dict[str, str], message: str
) -> None:
    """Bad settings stop `serve` at once with exit 2 and a message naming the flag."""
    out = run("serve", *args, env=env, cwd=REPO)
    assert out.returncode == 2
    assert message in out.stderr


def test_check_fetches_jwks_uri_keys(tmp_path: Path) -> None:
    """Offline, a tenant's jwksUri is fetched once, so a token from it is verified."""
    import http.server
    import threading

    from tests.helpers import Issuer

    issuer = Issuer()
    body = issuer.jwks.encode()

    class Jwks(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json"
        tenant = tenant_yaml("users").replace(
            "  mtls:", f"  jwtRules:\n  - issuer: {issuer.iss}\n    jwksUri: {uri}\n  mtls:"
        )
        spec = "  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]"
        (tmp_path / "t.yaml").write_text(tenant + "---\n" + policy_yaml("p", "users", spec))
        from google.protobuf import json_format

        req = tmp_path / "r.json"
        token = issuer.token()
        req.write_text(
            json_format.MessageToJson(
                check_request(host="users.test", headers={"authorization": f"Bearer {token}"})
            )
        )
        args = ["--policies", str(tmp_path), "--request", str(req), "--output", "json"]
        out = run("check", *args, "--jwks-allow-private")
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["request_principal"] == f"{issuer.iss}/alice"
        refused = run("check", *args)  # 127.0.0.1 is refused by default: no keys, no principal
        assert "warning: no keys from" in refused.stderr
        assert json.loads(refused.stdout)["reason"] == "jwt_invalid"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_check_reads_xfcc_from_a_trusted_proxy_like_the_server(tmp_path: Path) -> None:
    """check takes the server's trusted-proxy flags (and variables): with them, the client
    named in a trusted proxy's x-forwarded-client-cert decides; without, the proxy does."""
    proxy = "spiffe://cluster.local/ns/istio-system/sa/gateway"
    client = "spiffe://cluster.local/ns/shop/sa/frontend"
    spec = (
        "  action: ALLOW\n  rules:\n  - from:\n"
        "    - source: {principals: [cluster.local/ns/shop/sa/frontend]}"
    )
    (tmp_path / "shop.yaml").write_text(
        tenant_yaml("shop", match="{hosts: [shop.test]}") + "---\n" + policy_yaml("p", "shop", spec)
    )
    request = check_request(
        host="shop.test",
        principal=proxy,
        headers={"x-forwarded-client-cert": f"By={proxy};URI={client}"},
    )
    req = tmp_path / "req.json"
    req.write_text(json_format.MessageToJson(request))
    base = ["check", "--policies", str(tmp_path), "--request", str(req), "--output", "json"]
    untrusted = run(*base)
    assert untrusted.returncode == 1, untrusted.stderr
    assert json.loads(untrusted.stdout)["principal"] == proxy
    trusted = run(*base, "--trusted-proxy-principal", proxy)
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["principal"] == client
    from_env = run(*base, env={"EXTAUTHZ_TRUSTED_PROXY_PRINCIPAL": proxy})
    assert from_env.returncode == 0, from_env.stderr


def test_check_reads_xfcc_in_the_servers_mode(tmp_path: Path) -> None:
    """check takes --trusted-proxy-xfcc: a two-element header from a trusted proxy is refused
    in SANITIZE_SET (the default) and decided by its last element in APPEND_FORWARD."""
    proxy = "spiffe://cluster.local/ns/istio-system/sa/gateway"
    client = "spiffe://cluster.local/ns/shop/sa/frontend"
    spec = (
        "  action: ALLOW\n  rules:\n  - from:\n"
        "    - source: {principals: [cluster.local/ns/shop/sa/frontend]}"
    )
    (tmp_path / "shop.yaml").write_text(
        tenant_yaml("shop", match="{hosts: [shop.test]}") + "---\n" + policy_yaml("p", "shop", spec)
    )
    xfcc = f"By={proxy};URI=spiffe://cluster.local/ns/other/sa/x,By={proxy};URI={client}"
    request = check_request(
        host="shop.test", principal=proxy, headers={"x-forwarded-client-cert": xfcc}
    )
    req = tmp_path / "req.json"
    req.write_text(json_format.MessageToJson(request))
    base = ["check", "--policies", str(tmp_path), "--request", str(req), "--output", "json"]
    base += ["--trusted-proxy-principal", proxy]
    sanitized = run(*base)
    assert sanitized.returncode == 1, sanitized.stderr
    assert json.loads(sanitized.stdout)["decision"] == "deny"
    forwarded = run(*base, "--trusted-proxy-xfcc", "APPEND_FORWARD")
    assert forwarded.returncode == 0, forwarded.stderr
    assert json.loads(forwarded.stdout)["principal"] == client


def test_the_command_line_does_not_load_the_envoy_message_library() -> None:
    """Every extauthz command (serve, data add, ...) starts without envoy-data-plane, which
    only envoy-config needs: loading it costs about a second of start-up."""
    probe = (
        "import sys, extauthz.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'envoy_data_plane', 'pydantic'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.strip() == "[]"
