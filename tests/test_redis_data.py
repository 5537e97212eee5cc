"""``extauthz data`` and DataSet documents against a real Redis: sets kept apart from the
tenant's record, changed in place, picked up by every serving replica without a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.rpc import code_pb2

from extauthz.cli import main
from tests.helpers import (
    DATA_HOST,
    DATA_ISSUER,
    DENY_REVOKED_JTI,
    RedisServer,
    apply_revoked_jti_tenant,
    check_request,
    data_command,
    policy_yaml,
    redis_cli,
    redis_fixture,
    serving,
    tenant_yaml,
    wait_for,
)

pytestmark = pytest.mark.redis

ISSUER = DATA_ISSUER
HOST = DATA_HOST
DATASET = """apiVersion: extauthz.io/v1
kind: DataSet
metadata: {name: revoked-jti, namespace: acme}
spec: {values: [a1]}
"""

redis = redis_fixture("module")


@pytest.fixture
def url(redis: RedisServer, tmp_path: Path) -> str:
    redis_cli(redis.port, "flushall")
    apply_revoked_jti_tenant(redis.url, tmp_path, DATASET)
    return redis.url


data = data_command


def test_add_remove_get_list(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """add and remove change the set as a new tenant version; get and list show it."""
    capsys.readouterr()
    assert data(url, "add", "--set", "revoked-jti", "b2", "c3") == 0
    assert "version 2 set revoked-jti (3)" in capsys.readouterr().out
    assert data(url, "remove", "--set", "revoked-jti", "a1") == 0
    assert data(url, "add", "--set", "revoked-jti", "b2") == 0  # already there
    assert "unchanged" in capsys.readouterr().out.splitlines()[-1]
    assert data(url, "get", "--set", "revoked-jti") == 0
    assert capsys.readouterr().out == "b2\nc3\n"
    assert data(url, "add", "--set", "blocked-ips", "10.0.0.1") == 0
    capsys.readouterr()
    assert data(url, "list") == 0
    assert capsys.readouterr().out == "blocked-ips\t1\nrevoked-jti\t2\n"


def test_import_replaces_the_set(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """import replaces a set's values with the lines of a file."""
    values = tmp_path / "values.txt"
    values.write_text("x1\n\nx2\n")
    assert data(url, "import", "--set", "revoked-jti", "--file", str(values)) == 0
    capsys.readouterr()
    assert data(url, "get", "--set", "revoked-jti") == 0
    assert capsys.readouterr().out == "x1\nx2\n"


def test_unknown_tenant_or_set(redis: RedisServer, url: str) -> None:
    """An unknown tenant or set is an error (exit 1), and nothing is created."""
    assert main(["data", "add", "--redis-url", url, "--tenant", "nope", "--set", "s", "v"]) == 1
    assert data(url, "get", "--set", "nope") == 1
    assert data(url, "remove", "--set", "nope", "v") == 1
    assert "nope" not in redis_cli(redis.port, "keys", "*")


def test_value_too_long_is_refused(url: str) -> None:
    """A value over the size limit is refused by validation before anything is written."""
    assert data(url, "add", "--set", "revoked-jti", "x" * 5000) == 1


def test_served_decision_follows_the_set(url: str) -> None:
    """A serving replica denies a token as soon as its jti is added, without a restart."""
    token = ISSUER.token(jti="j-42")
    request = check_request(host=HOST, headers={"authorization": f"Bearer {token}"})
    with serving(["--redis-url", url]) as server:
        assert server.check(request).status.code == code_pb2.OK
        assert data(url, "add", "--set", "revoked-jti", "j-42") == 0
        wait_for(
            lambda: server.check(request).status.code == code_pb2.PERMISSION_DENIED,
            what="the revoked jti to be denied",
        )
        assert data(url, "remove", "--set", "revoked-jti", "j-42") == 0
        wait_for(lambda: server.check(request).status.code == code_pb2.OK, what="allowed again")


def test_revoked_jti_denied_by_every_replica(url: str) -> None:
    """Two replicas on one Redis both deny a token once its jti is added, without a restart."""
    token = ISSUER.token(jti="j-7")
    request = check_request(host=HOST, headers={"authorization": f"Bearer {token}"})
    with serving(["--redis-url", url]) as first, serving(["--redis-url", url]) as second:
        replicas = (first, second)
        assert [r.check(request).status.code for r in replicas] == [code_pb2.OK, code_pb2.OK]
        assert data(url, "add", "--set", "revoked-jti", "j-7") == 0
        for replica in replicas:
            wait_for(
                lambda r=replica: r.check(request).status.code == code_pb2.PERMISSION_DENIED,
                what=f"the revoked jti to be denied on {replica.address}",
            )
        other = check_request(
            host=HOST, headers={"authorization": f"Bearer {ISSUER.token(jti='j-8')}"}
        )
        assert [r.check(other).status.code for r in replicas] == [code_pb2.OK, code_pb2.OK]


def test_concurrent_adds_all_land(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Writers racing on one set each retry on a version conflict; no value is lost."""
    import subprocess
    import sys

    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "extauthz", "data", "add", "--redis-url", url,
             "--tenant", "acme", "--set", "revoked-jti", f"r{i}"],
            stdout=subprocess.DEVNULL,
        )
        for i in range(4)
    ]  # fmt: skip
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    capsys.readouterr()
    assert data(url, "get", "--set", "revoked-jti") == 0
    assert capsys.readouterr().out == "a1\nr0\nr1\nr2\nr3\n"


# -- DataSets and policy apply ------------------------------------------------------------------


def test_example_policies_apply_and_serve(
    redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """policy apply of the example directory stores initech's DataSet as a set; a replica
    denies its revoked token by that set, and data remove lifts the revocation."""
    from envoy.service.auth.v3 import external_auth_pb2
    from google.protobuf import json_format

    from tests.helpers import REPO

    redis_cli(redis.port, "flushall")
    url = redis.url
    capsys.readouterr()
    assert main(["policy", "apply", "--redis-url", url, "-f", str(REPO / "policies")]) == 0
    assert "applied: tenant initech set revoked-jti version 1 (2)" in capsys.readouterr().out
    assert main(["policy", "get", "initech", "--redis-url", url]) == 0
    got = capsys.readouterr().out
    assert "# DataSet revoked-jti: 2 values, version 1" in got
    assert "kind: DataSet" not in got  # the values live in the set, not the record
    text = (REPO / "examples/requests/initech-revoked-token.json").read_text()
    request = json_format.Parse(text, external_auth_pb2.CheckRequest())

    def policy() -> str:
        response = first.check(request)
        return str(json_format.MessageToDict(response.dynamic_metadata).get("policy", ""))

    with serving(["--redis-url", url]) as first:
        assert policy() == "initech/deny-revoked-and-staging"
        args = ["--redis-url", url, "--tenant", "initech", "--set", "revoked-jti"]
        assert main(["data", "remove", *args, "deadbeef"]) == 0
        wait_for(
            lambda: policy() != "initech/deny-revoked-and-staging", what="the revocation lifted"
        )


def test_apply_replaces_or_declares_sets(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Applying the same files again changes nothing; a DataSet with values replaces the set
    (values added at run time included); one without values only declares it."""
    files = tmp_path
    assert data(url, "add", "--set", "revoked-jti", "b2") == 0
    capsys.readouterr()
    assert main(["policy", "apply", "--redis-url", url, "-f", str(files)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "unchanged: tenant acme version 1",
        "applied: tenant acme set revoked-jti version 3 (1)",
    ]
    assert main(["policy", "apply", "--redis-url", url, "-f", str(files)]) == 0
    assert "unchanged: tenant acme set revoked-jti version 3 (1)" in capsys.readouterr().out
    declared = (files / "acme.yaml").read_text().replace("spec: {values: [a1]}", "spec: {}")
    (files / "acme.yaml").write_text(declared)
    assert data(url, "add", "--set", "revoked-jti", "c3") == 0
    capsys.readouterr()
    assert main(["policy", "apply", "--redis-url", url, "-f", str(files)]) == 0
    assert "kept: tenant acme set revoked-jti version 4 (2)" in capsys.readouterr().out


def test_policy_naming_an_unknown_set_is_refused(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A policy that reads a set neither the files nor Redis hold is refused (exit 1);
    a set created with data add can be named."""
    deny = DENY_REVOKED_JTI.replace("revoked-jti", "blocked")
    path = tmp_path / "more.yaml"
    path.write_text(policy_yaml("deny-blocked", "acme", deny))
    # the tenant's other documents are re-applied with it
    docs = (tmp_path / "acme.yaml").read_text() + "---\n" + path.read_text()
    path.unlink()
    (tmp_path / "acme.yaml").write_text(docs)
    capsys.readouterr()
    assert main(["policy", "apply", "--redis-url", url, "-f", str(tmp_path)]) == 1
    assert "no DataSet 'blocked'" in capsys.readouterr().err
    assert data(url, "add", "--set", "blocked", "x") == 0
    assert main(["policy", "apply", "--redis-url", url, "-f", str(tmp_path)]) == 0


def test_diff_compares_set_values(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """policy diff shows the values a set holds beyond (or short of) its document's."""
    capsys.readouterr()
    assert main(["policy", "diff", "--redis-url", url, "-f", str(tmp_path)]) == 0
    assert data(url, "add", "--set", "revoked-jti", "z9") == 0
    capsys.readouterr()
    assert main(["policy", "diff", "--redis-url", url, "-f", str(tmp_path)]) == 1
    assert "-z9" in capsys.readouterr().out.splitlines()


def test_import_is_whole_and_leaves_no_staging_key(
    redis: RedisServer, url: str, tmp_path: Path
) -> None:
    """An import with one bad line writes nothing; a good one leaves the set without an
    expiry and no staging key behind."""
    values = tmp_path / "values.txt"
    values.write_text("".join(f"v{i}\n" for i in range(25_000)) + "\xff" * 5000 + "\n")
    assert data(url, "import", "--set", "revoked-jti", "--file", str(values)) == 1
    assert redis_cli(redis.port, "scard", "extauthz:{acme}:set:revoked-jti").strip() == "1"
    values.write_text("".join(f"v{i}\n" for i in range(25_000)))
    assert data(url, "import", "--set", "revoked-jti", "--file", str(values)) == 0
    assert redis_cli(redis.port, "scard", "extauthz:{acme}:set:revoked-jti").strip() == "25000"
    assert redis_cli(redis.port, "ttl", "extauthz:{acme}:set:revoked-jti").strip() == "-1"
    assert "staging" not in redis_cli(redis.port, "keys", "*")


def test_record_holding_a_dataset_is_refused(redis: RedisServer, url: str) -> None:
    """A record that holds a DataSet document (as an earlier release stored them) is not
    served: the tenant is unavailable and the log says to apply it again."""
    import asyncio

    from google.protobuf import json_format

    from extauthz.documents import load_documents
    from extauthz.store.redis_client import connect, parse_url
    from extauthz.store.redis_model import TenantRepo
    from extauthz.tenancy import parse_tenant

    docs = load_documents(
        tenant_yaml("legacy", match="{hosts: [legacy.example.com]}")
        + "---\n"
        + DATASET.replace("namespace: acme", "namespace: legacy"),
        "legacy.yaml",
    )

    async def write() -> None:
        client = connect(parse_url(url))
        try:
            await TenantRepo(client, "extauthz").write("legacy", docs, spec=parse_tenant(docs[0]))
        finally:
            await client.aclose()

    asyncio.run(write())
    with serving(["--redis-url", url]) as server:
        response = server.check(check_request(host="legacy.example.com"))
        meta = json_format.MessageToDict(response.dynamic_metadata)
        assert response.status.code != code_pb2.OK
        assert (meta["reason"], meta["tenant"]) == ("tenant_unavailable", "legacy")
        assert "apply it again with extauthz policy apply" in server.logs()
