"""``rediss://`` against a real TLS redis-server, and an ACL user with a password.

The TLS server's certificate comes from ``tests.pki.TestCA`` (IP SAN 127.0.0.1); the
client is given the CA with ``?ssl_ca_certs=`` as docs/redis.md says. Each server also
keeps a plain port, used only by ``redis-cli`` to look at what was written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from google.rpc import code_pb2

from extauthz.cli import main
from tests.helpers import (
    RedisServer,
    ServerProcess,
    check_request,
    free_port,
    redis_cli,
    serving,
    tenant_documents,
    wait_for,
)
from tests.pki import Issued, TestCA

pytestmark = pytest.mark.redis

OK = code_pb2.OK
DENIED = code_pb2.PERMISSION_DENIED


@dataclass
class TlsRedis:
    """A redis-server with a TLS port (``tls_port``) next to its plain one."""

    server: RedisServer
    tls_port: int
    ca: TestCA

    def url(self, query: str = "") -> str:
        base = f"rediss://127.0.0.1:{self.tls_port}/0"
        return f"{base}?{query}" if query else base

    @property
    def ca_query(self) -> str:
        return f"ssl_ca_certs={self.ca.cert}"


def start_tls_redis(ca: TestCA, *, auth_clients: str = "no") -> TlsRedis:
    cert: Issued = ca.server("redis")
    tls_port = free_port()
    server = RedisServer(
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(cert.cert),
        "--tls-key-file",
        str(cert.key),
        "--tls-ca-cert-file",
        str(ca.cert),
        "--tls-auth-clients",
        auth_clients,
    )
    return TlsRedis(server, tls_port, ca)


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


@pytest.fixture
def tls_redis(ca: TestCA) -> Iterator[TlsRedis]:
    redis = start_tls_redis(ca)
    try:
        yield redis
    finally:
        redis.server.stop()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tenant.yaml"
    path.write_text(text)
    return path


def apply(url: str, tmp_path: Path, text: str) -> int:
    return main(["policy", "apply", "-f", str(write(tmp_path, text)), "--redis-url", url])


def decide(server: ServerProcess, path: str) -> int:
    return int(server.check(check_request(host="a.test", path=path)).status.code)


# -- TLS -------------------------------------------------------------------------------------


def test_apply_and_get_over_tls(
    tls_redis: TlsRedis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """apply and get over rediss:// with the CA from ?ssl_ca_certs=; the keys are written."""
    url = tls_redis.url(tls_redis.ca_query)
    assert apply(url, tmp_path, tenant_documents("t1", "a.test")) == 0
    assert capsys.readouterr().out == "applied: tenant t1 version 1\n"
    assert main(["policy", "get", "t1", "--redis-url", url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# tenant t1 version 1\n")
    assert "/open/*" in out
    version = redis_cli(tls_redis.server.port, "hget", "extauthz:{t1}:current", "version")
    assert version.strip() == "1"


def test_server_certificate_not_signed_by_the_given_ca_is_refused(
    tls_redis: TlsRedis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no CA, or another CA, the server's certificate fails verification: exit 2."""
    other = TestCA(tmp_path / "other", name="other-ca")
    for url in (tls_redis.url(), tls_redis.url(f"ssl_ca_certs={other.cert}")):
        assert main(["policy", "list", "--redis-url", url]) == 2
        assert "certificate verify failed" in capsys.readouterr().err
    assert redis_cli(tls_redis.server.port, "dbsize").strip() == "0"


def test_serve_over_tls_loads_and_follows_updates(tls_redis: TlsRedis, tmp_path: Path) -> None:
    """serve reads the tenants over TLS, decides, and applies an update made over TLS."""
    url = tls_redis.url(tls_redis.ca_query)
    assert apply(url, tmp_path, tenant_documents("t1", "a.test", ["/old"])) == 0
    with serving(["--redis-url", url]) as server:
        assert decide(server, "/old") == OK
        assert decide(server, "/new") == DENIED
        assert apply(url, tmp_path, tenant_documents("t1", "a.test", ["/new"])) == 0
        wait_for(lambda: decide(server, "/new") == OK, what="the update over TLS")
        assert decide(server, "/old") == DENIED


def test_client_certificate_when_redis_requires_one(
    ca: TestCA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--tls-auth-clients yes: a client certificate from ?ssl_certfile=&ssl_keyfile= is
    accepted; without one the connection is refused (exit 2)."""
    redis = start_tls_redis(ca, auth_clients="yes")
    try:
        client = ca.workload("extauthz", "policy-admin")
        plain = redis.url(redis.ca_query)
        assert main(["policy", "list", "--redis-url", plain]) == 2
        capsys.readouterr()
        mutual = redis.url(f"{redis.ca_query}&ssl_certfile={client.cert}&ssl_keyfile={client.key}")
        assert apply(mutual, tmp_path, tenant_documents("t1", "a.test")) == 0
        assert capsys.readouterr().out == "applied: tenant t1 version 1\n"
    finally:
        redis.server.stop()


# -- ACL user and password -------------------------------------------------------------------

USER = "extauthz-app"
PASSWORD = "p@ss/w:rd-7f3a9c"  # characters that must be percent-encoded in a URL
QUOTED = quote(PASSWORD, safe="")


@pytest.fixture
def acl_redis() -> Iterator[RedisServer]:
    """A Redis whose default user is off; only USER (keys and channel under extauthz:)."""
    redis = RedisServer()
    try:
        redis_cli(
            redis.port,
            "acl",
            "setuser",
            USER,
            "on",
            f">{PASSWORD}",
            "~extauthz:*",
            "&extauthz:changes",
            "+@all",
            "-@dangerous",
        )
        redis_cli(redis.port, "acl", "setuser", "default", "off")
        yield redis
    finally:
        redis.stop()


def acl_url(redis: RedisServer, password: str = QUOTED) -> str:
    return f"redis://{USER}:{password}@127.0.0.1:{redis.port}/0"


def assert_no_password(text: str) -> None:
    assert PASSWORD not in text
    assert QUOTED not in text
    assert "7f3a9c" not in text


def test_acl_user_and_password_apply_get_and_serve(
    acl_redis: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ACL user restricted to extauthz:* writes, reads and serves; the password never
    appears in the CLI's output nor in the server's log (which names the masked URL)."""
    url = acl_url(acl_redis)
    assert apply(url, tmp_path, tenant_documents("t1", "a.test", ["/old"])) == 0
    assert main(["policy", "get", "t1", "--redis-url", url]) == 0
    assert main(["policy", "list", "--redis-url", url]) == 0
    captured = capsys.readouterr()
    assert "# tenant t1 version 1" in captured.out
    assert_no_password(captured.out + captured.err)
    with serving(["--redis-url", url, "--log-level", "debug"]) as server:
        assert decide(server, "/old") == OK
        assert apply(url, tmp_path, tenant_documents("t1", "a.test", ["/new"])) == 0
        wait_for(lambda: decide(server, "/new") == OK, what="the update as the ACL user")
        logs = server.logs()
    assert f"{USER}:***@127.0.0.1:{acl_redis.port}" in logs
    assert_no_password(logs)
    assert_no_password(capsys.readouterr().out)


def test_wrong_password_is_refused_and_not_echoed(
    acl_redis: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong password: the CLI exits 2 and the server logs the failure, neither
    showing the password it was given."""
    wrong = "wr0ng-secret-5d1e"
    url = acl_url(acl_redis, wrong)
    assert main(["policy", "list", "--redis-url", url]) == 2
    err = capsys.readouterr().err
    assert f"{USER}:***@127.0.0.1" in err
    assert wrong not in err
    server = ServerProcess(["--redis-url", url])
    try:
        wait_for(lambda: "redis unreachable" in server.logs(), what="the refused login logged")
        logs = server.logs()
    finally:
        server.stop()
    assert "invalid username-password pair" in logs
    assert wrong not in logs
