"""``redis+sentinel://`` against real Sentinels: the CLI, ``serve``, and a failover."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

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
    stop_process,
    tenant_documents,
    wait_for,
)
from tests.pki import TestCA

pytestmark = pytest.mark.redis

OK = code_pb2.OK
DENIED = code_pb2.PERMISSION_DENIED
SERVICE = "mymaster"


def _answers(port: int) -> bool:
    """True once the server replies to PING (with PONG, or asking for a password)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class SentinelServer:
    """``redis-server <conf> --sentinel`` on a free port, monitoring one master as SERVICE.

    Sentinel rewrites its configuration file, so each one gets its own file in ``workdir``.
    Short down-after and failover timeouts make a failover take seconds, not minutes.
    """

    def __init__(self, workdir: Path, master_port: int, extra: str = "") -> None:
        self.port = free_port()
        conf = workdir / f"sentinel-{self.port}.conf"
        conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            "protected-mode no\n"
            f"dir {workdir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n" + extra
        )
        self.log = (workdir / f"sentinel-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(
            ["redis-server", str(conf), "--sentinel"], stdout=self.log, stderr=subprocess.STDOUT
        )
        try:
            wait_for(lambda: _answers(self.port), 10, what=f"sentinel on {self.port}")
        except BaseException:
            self.stop()
            raise

    def master_port(self) -> int | None:
        """The port of SERVICE's master once Sentinel reports it healthy (flags exactly
        ``master``: not down, no failover in progress), the state clients accept."""
        lines = redis_cli(self.port, "sentinel", "master", SERVICE).splitlines()
        state = dict(zip(lines[::2], lines[1::2], strict=False))
        return int(state["port"]) if state.get("flags") == "master" else None

    def replicas(self) -> str:
        return redis_cli(self.port, "sentinel", "replicas", SERVICE)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


@pytest.fixture
def master() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sentinel(master: RedisServer, tmp_path: Path) -> Iterator[SentinelServer]:
    server = SentinelServer(tmp_path, master.port)
    try:
        yield server
    finally:
        server.stop()


def sentinel_url(*sentinels: SentinelServer) -> str:
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
    return f"redis+sentinel://{hosts}/{SERVICE}"


def apply(url: str, tmp_path: Path, text: str) -> None:
    path = tmp_path / "tenant.yaml"
    path.write_text(text)
    assert main(["policy", "apply", "-f", str(path), "--redis-url", url]) == 0


def decide(server: ServerProcess, path: str) -> int:
    return int(server.check(check_request(host="a.test", path=path)).status.code)


def test_policy_commands_round_trip_through_sentinel(
    master: RedisServer,
    sentinel: SentinelServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """apply, get and list reach the master that Sentinel names; the keys land there."""
    url = sentinel_url(sentinel)
    apply(url, tmp_path, tenant_documents("t1", "a.test"))
    assert capsys.readouterr().out == "applied: tenant t1 version 1\n"
    assert redis_cli(master.port, "hget", "extauthz:{t1}:current", "version").strip() == "1"
    assert main(["policy", "get", "t1", "--redis-url", url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# tenant t1 version 1\n")
    again = tmp_path / "again.yaml"
    again.write_text(out)
    assert main(["policy", "apply", "-f", str(again), "--redis-url", url]) == 0
    assert capsys.readouterr().out == "unchanged: tenant t1 version 1\n"
    assert main(["policy", "list", "--output", "json", "--redis-url", url]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["tenant"], r["version"]) for r in rows] == [("t1", 1)]


def test_any_listed_sentinel_that_answers_is_enough(
    master: RedisServer, sentinel: SentinelServer, tmp_path: Path
) -> None:
    """A URL whose first Sentinel is down still finds the master through the next one."""
    dead = free_port()
    url = f"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{sentinel.port}/{SERVICE}"
    apply(url, tmp_path, tenant_documents("t1", "a.test"))
    assert redis_cli(master.port, "exists", "extauthz:{t1}:current").strip() == "1"


def test_unknown_service_is_a_usage_error(
    sentinel: SentinelServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A master name the Sentinels do not monitor: exit 2, naming the service."""
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/othermaster"
    assert main(["policy", "list", "--redis-url", url]) == 2
    assert "No master found for 'othermaster'" in capsys.readouterr().err


def test_sentinel_password_is_masked_in_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """?sentinel_password= never appears in the CLI's error message."""
    port = free_port()
    url = f"redis+sentinel://user:secret1@127.0.0.1:{port}/{SERVICE}?sentinel_password=secret2"
    assert main(["policy", "list", "--redis-url", url]) == 2
    captured = capsys.readouterr()
    assert "redis+sentinel://user:***@127.0.0.1" in captured.err
    assert "secret" not in captured.out + captured.err


def test_sentinel_password_authenticates_to_the_sentinels(
    master: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sentinels with requirepass: ?sentinel_password= lets the CLI in; without it, exit 2."""
    guarded = SentinelServer(tmp_path, master.port, "requirepass sentinel-secret\n")
    try:
        url = f"redis+sentinel://127.0.0.1:{guarded.port}/{SERVICE}"
        assert main(["policy", "list", "--redis-url", url]) == 2
        assert "No master found" in capsys.readouterr().err
        apply(
            f"{url}?sentinel_password=sentinel-secret", tmp_path, tenant_documents("t1", "a.test")
        )
        assert redis_cli(master.port, "exists", "extauthz:{t1}:current").strip() == "1"
    finally:
        guarded.stop()


def test_serve_loads_through_sentinel_and_follows_updates(
    sentinel: SentinelServer, tmp_path: Path
) -> None:
    """serve finds the master through Sentinel, decides, and applies a later update."""
    url = sentinel_url(sentinel)
    apply(url, tmp_path, tenant_documents("t1", "a.test", ["/old"]))
    with serving(["--redis-url", url]) as server:
        assert decide(server, "/old") == OK
        assert decide(server, "/new") == DENIED
        apply(url, tmp_path, tenant_documents("t1", "a.test", ["/new"]))
        wait_for(lambda: decide(server, "/new") == OK, what="the update through sentinel")
        assert decide(server, "/old") == DENIED
        assert f"sentinel:127.0.0.1:{sentinel.port}/{SERVICE}" in server.logs()


def test_serve_follows_a_failover(tmp_path: Path) -> None:
    """The master is killed; Sentinel promotes the replica; serve reconnects to it and an
    update applied through Sentinel afterwards is served."""
    master = RedisServer("--dir", str(tmp_path))
    replica: RedisServer | None = None
    sentinel: SentinelServer | None = None
    try:
        replica_dir = tmp_path / "replica"  # a replica stores the RDB of its full sync
        replica_dir.mkdir()
        replica = RedisServer(
            "--replicaof", "127.0.0.1", str(master.port), "--dir", str(replica_dir)
        )
        wait_for(
            lambda: "master_link_status:up" in redis_cli(replica.port, "info", "replication"),
            15,
            what="the replica in sync with the master",
        )
        sentinel = SentinelServer(tmp_path, master.port)
        wait_for(
            lambda: str(replica.port) in sentinel.replicas(),  # type: ignore[union-attr]
            15,
            what="sentinel to discover the replica",
        )
        url = sentinel_url(sentinel)
        apply(url, tmp_path, tenant_documents("t1", "a.test", ["/old"]))
        with serving(["--redis-url", url]) as server:
            assert decide(server, "/new") == DENIED
            master.stop()
            wait_for(
                lambda: sentinel.master_port() == replica.port,  # type: ignore[union-attr]
                20,
                what="sentinel to promote the replica",
            )
            apply(url, tmp_path, tenant_documents("t1", "a.test", ["/new"]))
            assert redis_cli(replica.port, "hget", "extauthz:{t1}:current", "version") == "2\n"
            wait_for(lambda: decide(server, "/new") == OK, 20, what="the update after failover")
            assert decide(server, "/old") == DENIED
    finally:
        if sentinel is not None:
            sentinel.stop()
        if replica is not None:
            replica.stop()
        master.stop()


def test_tls_sentinel_and_master_with_a_private_ca(tmp_path: Path) -> None:
    """rediss+sentinel:// with ?ssl_ca_certs=: the Sentinel and the master it names both
    speak only TLS under a private CA; apply and get go through, and without the CA the
    Sentinel's certificate is refused (exit 2)."""
    ca = TestCA(tmp_path / "pki")
    cert = ca.server("redis")
    tls_files: tuple[str, ...] = ("--tls-cert-file", str(cert.cert))
    tls_files += ("--tls-key-file", str(cert.key))
    tls_files += ("--tls-ca-cert-file", str(ca.cert), "--tls-auth-clients", "no")
    master_tls = free_port()
    master = RedisServer("--tls-port", str(master_tls), *tls_files)
    sentinel: SentinelServer | None = None
    try:
        sentinel_tls = free_port()
        conf = [f"tls-port {sentinel_tls}", "tls-replication yes"]
        conf += [f"{tls_files[i][2:]} {tls_files[i + 1]}" for i in range(0, len(tls_files), 2)]
        sentinel = SentinelServer(tmp_path, master_tls, "\n".join(conf) + "\n")
        wait_for(
            lambda: sentinel.master_port() == master_tls,  # type: ignore[union-attr]
            15,
            what="sentinel to reach the master over TLS",
        )
        base = f"rediss+sentinel://127.0.0.1:{sentinel_tls}/{SERVICE}"
        url = f"{base}?ssl_ca_certs={ca.cert}"
        apply(url, tmp_path, tenant_documents("t1", "a.test"))
        assert redis_cli(master.port, "hget", "extauthz:{t1}:current", "version") == "1\n"
        assert main(["policy", "get", "t1", "--redis-url", url]) == 0
        assert main(["policy", "list", "--redis-url", base]) == 2
    finally:
        if sentinel is not None:
            sentinel.stop()
        master.stop()


def test_tls_options_without_tls_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """ssl_* parameters on redis+sentinel:// (no TLS) are a usage error, not ignored."""
    url = f"redis+sentinel://127.0.0.1:{free_port()}/{SERVICE}?ssl_ca_certs=/ca.pem"
    assert main(["policy", "list", "--redis-url", url]) == 2
    assert "ssl_ca_certs: only with rediss+sentinel" in capsys.readouterr().err
