"""Decision logs of a real ``extauthz serve``: one JSON line per decision, secrets masked."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from tests.helpers import Issuer, ServerProcess, check_request, serving, wait_for
from tests.telemetry_support import HOST, shop_policies

FRONTEND = "spiffe://cluster.local/ns/web/sa/frontend"


def decisions(server: ServerProcess) -> list[dict[str, Any]]:
    """The decision lines written so far (a line still being written is left for later)."""
    text = server.logs()
    lines = []
    for line in text[: text.rfind("\n") + 1].splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "extauthz.decision":
                lines.append(record)
    return lines


def decision(server: ServerProcess, decision_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((d for d in decisions(server) if d["decision_id"] == decision_id), None)

    found: dict[str, Any] = wait_for(find, 10, what=f"decision {decision_id} in the log")
    return found


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def deny_only(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[ServerProcess]:
    """A server that logs denials only."""
    policies = shop_policies(tmp_path_factory.mktemp("deny") / "policies", issuer)
    with serving(["--policies", str(policies), "--decision-log", "deny"]) as server:
        yield server


def test_no_token_or_cookie_value_anywhere_in_the_logs(tmp_path: Path) -> None:
    """A token (header and query), a cookie and a --mask-header value never reach the output."""
    issuer = Issuer()
    policies = shop_policies(tmp_path / "policies", issuer)
    token = issuer.token()
    secrets = {
        "token": token,
        "signature": token.rsplit(".", 1)[1],
        "cookie": "sess-9f8e7d6c5b4a",
        "custom": "acct-31337-private",
        "proxy": "Basic dXNlcjpodW50ZXIy",
    }
    headers = {
        "authorization": f"Bearer {token}",
        "cookie": f"session={secrets['cookie']}; theme=dark",
        "proxy-authorization": secrets["proxy"],
        "x-account-number": secrets["custom"],
        "x-forwarded-access-token": token,
    }
    args = [
        "--policies",
        str(policies),
        "--log-level",
        "debug",
        "--mask-header",
        "X-Account-Number",
    ]
    with serving(args) as server:
        for n, path in enumerate(("/", f"/items?access_token={token}", "/shadowed")):
            server.check(check_request(host=HOST, path=path, headers=headers, request_id=f"r{n}"))
        server.check(check_request(host=HOST, method="POST", headers=headers, request_id="post"))
        line = decision(server, "post")
    output = server.log_path.read_text()  # the whole output, after the process exited
    assert line["headers"]["cookie"] == "[redacted]"
    assert line["headers"]["x-account-number"] == "[redacted]"
    for what, value in secrets.items():
        assert value not in output, f"{what} leaked into the logs"


def test_decision_line_names_who_what_and_why(deny_only: ServerProcess, issuer: Issuer) -> None:
    """A line has tenant, principals, method, host, path, decision, policy, rule and latency."""
    headers = {"authorization": f"Bearer {issuer.token(sub='bob')}"}
    request = check_request(
        host=HOST, path="/audited?page=2", principal=FRONTEND, headers=headers, request_id="r1"
    )
    deny_only.check(request)
    line = decision(deny_only, "r1")
    assert line["event"] == "decision"
    assert line["tenant"] == "shop"
    assert line["principal"] == FRONTEND
    assert line["request_principal"] == f"{issuer.iss}/bob"
    assert (line["method"], line["host"], line["path"]) == ("GET", HOST, "/audited?page=2")
    assert (line["decision"], line["reason"]) == ("allow", "allowed")
    assert (line["policy"], line["rule"]) == ("shop/allow-get", 0)
    assert line["latency_ms"] >= 0
    assert line["authn_cache"] == "miss"


def test_deny_mode_leaves_out_allows(deny_only: ServerProcess) -> None:
    """--decision-log deny: a plain allow gets no line; the denial after it does."""
    deny_only.check(check_request(host=HOST, request_id="allowed-1"))
    deny_only.check(check_request(host=HOST, method="POST", request_id="denied-1"))
    assert decision(deny_only, "denied-1")["reason"] == "no_allow_match"
    assert "allowed-1" not in {d["decision_id"] for d in decisions(deny_only)}


def test_audit_match_is_always_logged(deny_only: ServerProcess) -> None:
    """An allow with an AUDIT match is logged even when only denials are."""
    deny_only.check(check_request(host=HOST, path="/audited", request_id="audited-1"))
    line = decision(deny_only, "audited-1")
    assert line["decision"] == "allow"
    assert line["audit"] == ["shop/audit[0]"]


def test_dry_run_deny_is_logged_as_shadow(deny_only: ServerProcess) -> None:
    """A dry-run DENY match is logged with the shadow decision; the enforced one stays allow."""
    deny_only.check(check_request(host=HOST, path="/shadowed", request_id="shadow-1"))
    line = decision(deny_only, "shadow-1")
    assert line["decision"] == "allow"
    assert line["shadow_decision"] == "deny"
    assert line["shadow_policy"] == "shop/dry-deny"


def test_sampling_zero_logs_no_plain_decision(tmp_path: Path) -> None:
    """--decision-log-sample 0 drops ordinary decisions but still logs AUDIT matches."""
    policies = shop_policies(tmp_path / "policies", Issuer())
    with serving(["--policies", str(policies), "--decision-log-sample", "0"]) as server:
        server.check(check_request(host=HOST, method="POST", request_id="sampled-out"))
        server.check(check_request(host=HOST, path="/audited", request_id="audit-2"))
        decision(server, "audit-2")
        assert "sampled-out" not in {d["decision_id"] for d in decisions(server)}


def test_check_command_shows_the_shadow_decision(tmp_path: Path) -> None:
    """`extauthz check` prints the enforced decision and, on its own line, the dry-run one."""
    policies = shop_policies(tmp_path / "policies", Issuer())
    request = tmp_path / "request.json"
    request.write_text(
        json_format.MessageToJson(check_request(host=HOST, path="/shadowed", request_id="c1"))
    )
    argv = [sys.executable, "-m", "extauthz", "check", "--policies", str(policies)]
    text = subprocess.run([*argv, "--request", str(request)], capture_output=True, text=True)
    out = subprocess.run(
        [*argv, "--request", str(request), "--output", "json"], capture_output=True, text=True
    )
    lines = text.stdout.splitlines()
    assert lines[0].startswith("ALLOW")
    assert "SHADOW DENY  reason=policy_denied  policy=shop/dry-deny[0]" in lines[1]
    data = json.loads(out.stdout)
    assert (data["decision"], data["shadow_decision"]) == ("allow", "deny")
    assert (data["shadow_policy"], data["shadow_rule"]) == ("shop/dry-deny", 0)
