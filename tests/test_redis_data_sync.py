"""DataSets on serving replicas: every change reaches every replica, a replica that missed
changes converges, and what cannot be served (an older version, garbage, a set that never
loaded, half of a replacement) never decides a request. Real redis-server, replicas served
over gRPC."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py
from google.rpc import code_pb2

from tests.helpers import (
    DATA_HOST,
    DATA_ISSUER,
    RedisServer,
    ServerProcess,
    apply_revoked_jti_tenant,
    check_request,
    data_command,
    policy_yaml,
    redis_cli,
    serving,
    wait_for,
)

pytestmark = pytest.mark.redis

ISSUER = DATA_ISSUER
HOST = DATA_HOST
SETS = "extauthz:{acme}:sets"
SET = "extauthz:{acme}:set:revoked-jti"
CHANNEL = "extauthz:changes"
# Denies unless exactly one of the two headers is in the set "big": a set seen half old,
# half new (neither value, or both) is denied.
WHOLE = """  action: DENY
  rules:
  - to: [{operation: {paths: ["/whole"]}}]
    when:
    - key: extauthz.io/cel
      values: ['data.contains("big", request.headers["x-a"])
                == data.contains("big", request.headers["x-b"])']"""


@pytest.fixture
def url(redis: RedisServer, tmp_path: Path) -> str:
    apply_revoked_jti_tenant(
        redis.url,
        tmp_path,
        "apiVersion: extauthz.io/v1\nkind: DataSet\n"
        "metadata: {name: revoked-jti, namespace: acme}\nspec: {values: [j-1]}\n",
        "apiVersion: extauthz.io/v1\nkind: DataSet\n"
        "metadata: {name: big, namespace: acme}\nspec: {}\n",
        policy_yaml("whole", "acme", WHOLE),
    )
    return redis.url


@pytest.fixture
def raw(redis: RedisServer) -> Iterator[redis_py.Redis]:
    """A plain client, to write what extauthz never would."""
    client = redis_py.Redis(port=redis.port)
    try:
        yield client
    finally:
        client.close()


data = data_command


def jti(value: str) -> object:
    return check_request(host=HOST, headers={"authorization": f"Bearer {ISSUER.token(jti=value)}"})


def code(replica: ServerProcess, request: object) -> int:
    return int(replica.check(request).status.code)  # type: ignore[arg-type]


def denied(replica: ServerProcess, value: str) -> bool:
    return code(replica, jti(value)) == code_pb2.PERMISSION_DENIED


def wait_denied(replica: ServerProcess, value: str, expected: bool = True) -> None:
    wait_for(
        lambda: denied(replica, value) == expected,
        what=f"{value} {'denied' if expected else 'allowed'} on {replica.address}",
    )


def bump(raw: redis_py.Redis, name: str = "revoked-jti") -> None:
    """Announce a new version of the set without logging a change: replicas read it whole."""
    version = raw.hincrby(SETS, name, 1)
    raw.publish(CHANNEL, f"acme/{name} {version}")


def test_add_then_remove_on_every_replica(url: str) -> None:
    """A jti added with data add is denied by both replicas; removing it allows it again."""
    with serving(["--redis-url", url]) as first, serving(["--redis-url", url]) as second:
        replicas = (first, second)
        assert [denied(r, "j-7") for r in replicas] == [False, False]
        assert data(url, "add", "--set", "revoked-jti", "j-7") == 0
        for replica in replicas:
            wait_denied(replica, "j-7")
        assert [denied(r, "j-1") for r in replicas] == [True, True]
        assert data(url, "remove", "--set", "revoked-jti", "j-7", "j-1") == 0
        for replica in replicas:
            wait_denied(replica, "j-1", expected=False)
            assert not denied(replica, "j-7")


def test_replica_that_missed_changes_converges(
    url: str, redis: RedisServer, tmp_path: Path
) -> None:
    """Changes made while a replica's subscription is gone (a small change and a whole
    replacement) reach it when it reconnects: the resync compares versions."""
    values = tmp_path / "values.txt"
    values.write_text("".join(f"v-{i}\n" for i in range(5000)))
    with serving(["--redis-url", url]) as replica:
        assert not denied(replica, "j-9")
        replica.proc.send_signal(signal.SIGSTOP)
        try:
            redis_cli(redis.port, "client", "kill", "type", "pubsub")
            assert data(url, "add", "--set", "revoked-jti", "j-9") == 0
            assert data(url, "import", "--set", "big", "--file", str(values)) == 0
        finally:
            replica.proc.send_signal(signal.SIGCONT)
        wait_denied(replica, "j-9")
        whole = check_request(host=HOST, path="/whole", headers={"x-a": "v-4999", "x-b": "no"})
        wait_for(lambda: code(replica, whole) == code_pb2.OK, what="the imported set")


def test_older_version_is_refused(url: str, raw: redis_py.Redis) -> None:
    """A set that goes back to a lower version (a restored backup) is refused, on a
    notification and on the resync after a reconnect: the held set keeps deciding."""
    assert data(url, "add", "--set", "revoked-jti", "j-2") == 0  # version 2
    with serving(["--redis-url", url]) as replica:
        assert denied(replica, "j-2")
        raw.delete(SET)
        raw.sadd(SET, "j-old")
        raw.hset(SETS, "revoked-jti", 1)
        raw.publish(CHANNEL, "acme/revoked-jti 3")
        wait_for(lambda: "is older than version 2" in replica.logs(), what="the refusal")
        raw.client_kill_filter(_type="pubsub")
        wait_for(lambda: "resynchronizing with redis" in replica.logs(), what="a resync")
        assert denied(replica, "j-2")
        assert not denied(replica, "j-old")
        assert replica.logs().count("is older than version 2") == 1  # reported once


@pytest.mark.parametrize(
    "garbage",
    ["wrong key type", "value too long", "not UTF-8"],
)
def test_garbage_keeps_the_last_good_set(
    url: str, raw: redis_py.Redis, garbage: str, tmp_path: Path
) -> None:
    """A set that does not read is logged with tenant and set, and the last good one keeps
    deciding; a good import replaces it."""
    with serving(["--redis-url", url]) as replica:
        assert denied(replica, "j-1")
        if garbage == "wrong key type":
            raw.delete(SET)
            raw.set(SET, "j-x")
        elif garbage == "value too long":
            raw.sadd(SET, "j-x", "x" * 5000)
        else:
            raw.sadd(SET, "j-x", b"\xff\xfe")
        bump(raw)
        wait_for(lambda: "DataSet 'revoked-jti'" in replica.logs(), what="the rejection")
        (line,) = [x for x in replica.logs().splitlines() if "DataSet 'revoked-jti'" in x]
        assert "acme" in line
        assert "keeping version 1" in line
        assert denied(replica, "j-1")
        assert not denied(replica, "j-x")
        good = tmp_path / "good.txt"
        good.write_text("j-2\n")
        assert data(url, "import", "--set", "revoked-jti", "--file", str(good)) == 0
        wait_denied(replica, "j-2")
        assert not denied(replica, "j-1")


def test_set_that_never_loaded_fails_closed(url: str, raw: redis_py.Redis, tmp_path: Path) -> None:
    """A replica that starts while a set its tenant reads is garbage denies what the set
    decides, even for values that are not in it, until a good version arrives."""
    raw.delete(SET)
    raw.set(SET, "garbage")
    with serving(["--redis-url", url]) as replica:
        assert denied(replica, "j-unrelated")
        assert "not loaded" in replica.logs()
        good = tmp_path / "good.txt"
        good.write_text("j-1\n")
        assert data(url, "import", "--set", "revoked-jti", "--file", str(good)) == 0
        wait_denied(replica, "j-unrelated", expected=False)
        assert denied(replica, "j-1")


def test_replacement_is_seen_whole(url: str, tmp_path: Path) -> None:
    """While a replica reads a replaced set of 100,000 values, every Check sees the old set or
    the new one, never a mix; an import that fails validation changes nothing."""
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text("".join(f"o-{i}\n" for i in range(100_000)))
    new.write_text("".join(f"n-{i}\n" for i in range(100_000)))
    assert data(url, "import", "--set", "big", "--file", str(old)) == 0

    def whole(a: str, b: str) -> object:
        return check_request(host=HOST, path="/whole", headers={"x-a": a, "x-b": b})

    probe, done = whole("o-5", "n-99999"), whole("n-99999", "absent")
    with serving(["--redis-url", url]) as replica:
        assert code(replica, probe) == code_pb2.OK
        assert code(replica, done) == code_pb2.PERMISSION_DENIED
        importer = subprocess.Popen(
            [sys.executable, "-m", "extauthz", "data", "import", "--redis-url", url,
             "--tenant", "acme", "--set", "big", "--file", str(new)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            seen = []
            while code(replica, done) != code_pb2.OK:
                seen.append(code(replica, probe))
                assert importer.poll() in (None, 0)
            assert set(seen) <= {code_pb2.OK}
            assert code(replica, probe) == code_pb2.OK
        finally:
            assert importer.wait(timeout=60) == 0
        bad = tmp_path / "bad.txt"
        bad.write_text("".join(f"b-{i}\n" for i in range(1000)) + "x" * 5000 + "\n")
        assert data(url, "import", "--set", "big", "--file", str(bad)) == 1
        assert code(replica, done) == code_pb2.OK


async def test_set_grown_by_changes_is_read_into_more_shards(url: str) -> None:
    """A set that grows fourfold through small changes is read again into more shards (no
    shard grows without bound), and still holds every value."""
    import asyncio

    from extauthz.authn import JwksCache
    from extauthz.datasets import SHARD_SIZE, ShardedSet
    from extauthz.registry import Registry
    from extauthz.store.redis import RedisStore
    from extauthz.store.redis_client import connect, parse_url
    from extauthz.store.redis_sets import SetRepo
    from tests.helpers import until

    store, registry = RedisStore.from_url(url), Registry(JwksCache())
    client = connect(parse_url(url))
    repo = SetRepo(client, "extauthz")
    task = asyncio.create_task(store.run(registry))
    try:
        await until(lambda: registry.ready, "first load")
        total = (4 * SHARD_SIZE // 1000 + 2) * 1000
        for start in range(0, total, 1000):
            await repo.add("acme", "grown", [f"g{i}" for i in range(start, start + 1000)])

        def shards() -> int:
            values = store.sets.of("acme").get("grown")
            held = isinstance(values, ShardedSet) and len(values) == total
            return len(values.shards) if held and isinstance(values, ShardedSet) else 0

        await until(lambda: shards() > 1, "the set read again into more shards", within=60)
        values = store.sets.of("acme").get("grown")
        assert values is not None
        assert all(f"g{i}" in values for i in range(0, total, 101))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
        await client.aclose()
