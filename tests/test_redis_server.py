"""``extauthz serve --redis-url`` processes against real redis-server processes."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2

from extauthz.cli import main
from tests.helpers import (
    RedisServer,
    ServerProcess,
    check_request,
    serving,
    tenant_documents,
    wait_for,
)

pytestmark = pytest.mark.redis

OK = code_pb2.OK
DENIED = code_pb2.PERMISSION_DENIED


def apply(url: str, tmp_path: Path, text: str) -> None:
    path = tmp_path / "tenant.yaml"
    path.write_text(text)
    assert main(["policy", "apply", "-f", str(path), "--redis-url", url]) == 0


def decide(server: ServerProcess, path: str, host: str = "a.test") -> int:
    return int(server.check(check_request(host=host, path=path)).status.code)


def test_two_replicas_both_see_an_update(redis: RedisServer, tmp_path: Path) -> None:
    """One apply changes the answers of both replicas, without a restart."""
    apply(redis.url, tmp_path, tenant_documents("t1", "a.test", ["/old"]))
    with (
        serving(["--redis-url", redis.url]) as one,
        serving(["--redis-url", redis.url]) as two,
    ):
        assert [decide(one, "/new"), decide(two, "/new")] == [DENIED, DENIED]
        apply(redis.url, tmp_path, tenant_documents("t1", "a.test", ["/new"]))
        wait_for(lambda: decide(one, "/new") == OK, what="replica one allows /new")
        wait_for(lambda: decide(two, "/new") == OK, what="replica two allows /new")
        assert [decide(one, "/old"), decide(two, "/old")] == [DENIED, DENIED]


def test_not_serving_until_the_first_load(tmp_path: Path) -> None:
    """Health is NOT_SERVING while Redis has never been reached, SERVING after the load."""
    redis = RedisServer("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    apply(redis.url, tmp_path, tenant_documents("t1", "a.test"))
    redis.stop()
    server = ServerProcess(["--redis-url", redis.url])
    try:
        wait_for(lambda: "redis unreachable" in server.logs(), what="unreachable logged")
        assert not server.serving()
        redis.start()
        server.wait_serving()
        assert decide(server, "/open/x") == OK
    finally:
        server.stop()
        redis.stop()


class CheckStream:
    """Checks sent back to back from a thread; every answer (or error) is kept."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.answers: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(decide(self.server, "/open/x"))
            except grpc.RpcError as exc:
                self.answers.append(str(exc.code()))

    def stop(self) -> list[int | str]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.answers


def test_checks_survive_a_redis_outage_and_catch_up(tmp_path: Path) -> None:
    """Redis killed during a stream of Checks: none fails or changes its answer; after the
    restart, an update written while the replica could not listen is served."""
    persist = ("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    redis = RedisServer(*persist)
    try:
        apply(redis.url, tmp_path, tenant_documents("t1", "a.test"))
        with serving(["--redis-url", redis.url]) as server:
            stream = CheckStream(server)
            try:
                wait_for(lambda: len(stream.answers) > 20, what="checks flowing")
                redis.proc.kill()  # type: ignore[union-attr]
                redis.proc.wait()  # type: ignore[union-attr]
                redis.proc = None
                wait_for(lambda: "redis unreachable" in server.logs(), what="outage noticed")
                during = len(stream.answers)
                wait_for(lambda: len(stream.answers) > during + 20, what="checks in outage")
                side = RedisServer(*persist)  # same data, another port: the replica misses it
                try:
                    apply(side.url, tmp_path, tenant_documents("t1", "a.test", ["/open/*", "/new"]))
                finally:
                    side.stop()
                redis.start()
                wait_for(lambda: decide(server, "/new") == OK, what="update made meanwhile")
            finally:
                answers = stream.stop()
        assert set(answers) == {OK}
    finally:
        redis.stop()


def _redis_busy(port: int) -> bool:
    """True when Redis accepts a connection but does not answer PING (it is asleep)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3) as s:
            s.sendall(b"PING\r\n")
            s.recv(16)
    except TimeoutError:
        return True
    except OSError:
        return False
    return False


def test_slow_redis_does_not_hold_checks(tmp_path: Path) -> None:
    """While Redis sleeps in DEBUG SLEEP, Checks keep completing with the same answers."""
    redis = RedisServer("--enable-debug-command", "yes")
    try:
        _slow_redis(redis, tmp_path)
    finally:
        redis.stop()


def _slow_redis(redis: RedisServer, tmp_path: Path) -> None:
    apply(redis.url, tmp_path, tenant_documents("t1", "a.test"))
    with serving(["--redis-url", redis.url]) as server:
        sleeper = subprocess.Popen(
            ["redis-cli", "-p", str(redis.port), "debug", "sleep", "6"],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: _redis_busy(redis.port), what="redis asleep")
            answers = [(decide(server, "/open/x"), decide(server, "/closed")) for _ in range(50)]
            still_sleeping = sleeper.poll() is None
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                sleeper.wait(timeout=15)
            if sleeper.poll() is None:
                sleeper.kill()
                sleeper.wait()
        assert set(answers) == {(OK, DENIED)}
        assert still_sleeping
