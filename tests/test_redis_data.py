"""``extauthz data`` against a real Redis: DataSets as versioned tenant documents that every
serving replica picks up without a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from google.rpc import code_pb2

from extauthz.cli import main
from tests.helpers import (
    Issuer,
    RedisServer,
    check_request,
    policy_yaml,
    redis_cli,
    serving,
    tenant_yaml,
    wait_for,
)

pytestmark = pytest.mark.redis

ISSUER = Issuer(iss="https://issuer.test", kid="k1")
HOST = "acme.example.com"
DENY = """  action: DENY
  rules:
  - when:
    - key: extauthz.io/cel
      values: ['has(auth.claims.jti) && data.contains("revoked-jti", auth.claims.jti)']"""
DATASET = """apiVersion: extauthz.io/v1
kind: DataSet
metadata: {name: revoked-jti, namespace: acme}
spec: {values: [a1]}
"""


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def url(redis: RedisServer, tmp_path: Path) -> str:
    redis_cli(redis.port, "flushall")
    docs = "---\n".join(
        [
            tenant_yaml("acme", match=f"{{hosts: [{HOST}]}}", issuer=ISSUER),
            DATASET,
            policy_yaml("deny-revoked", "acme", DENY),
        ]
    )
    (tmp_path / "acme.yaml").write_text(docs)
    assert main(["policy", "apply", "--redis-url", redis.url, "-f", str(tmp_path)]) == 0
    return redis.url


def data(url: str, *args: str) -> int:
    return main(["data", args[0], "--redis-url", url, "--tenant", "acme", *args[1:]])


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
