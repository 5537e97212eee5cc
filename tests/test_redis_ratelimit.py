"""Rate limits shared by ``extauthz serve --redis-url`` replicas through a real Redis."""

from __future__ import annotations

import contextlib
import io
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.rpc import code_pb2

from extauthz.cli import main
from extauthz.model import RequestView
from extauthz.store.ratelimit_sync import REGISTER_EVERY
from tests.helpers import (
    Issuer,
    RedisClusterServers,
    RedisServer,
    ServerProcess,
    check_request,
    free_port,
    policy_yaml,
    redis_cli,
    tenant_yaml,
    wait_for,
)
from tests.test_telemetry_prometheus import scrape

pytestmark = pytest.mark.redis

OK = code_pb2.OK
LIMITED = code_pb2.RESOURCE_EXHAUSTED
EVENTS = "extauthz_ratelimit_events_total"
ALLOW_ALL = policy_yaml("all", "t1", "  action: ALLOW\n  rules: [{}]")


def ratelimit_yaml(limits: str, name: str = "quota") -> str:
    return (
        f"apiVersion: extauthz.io/v1\nkind: RateLimit\n"
        f"metadata: {{name: {name}, namespace: t1}}\nspec:\n  limits:\n{limits}"
    )


def apply(url: str, tmp_path: Path, *docs: str) -> None:
    path = tmp_path / "t1.yaml"
    path.write_text("---\n".join(docs))
    assert main(["policy", "apply", "-f", str(path), "--redis-url", url]) == 0


def status(url: str, *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["ratelimit", "status", "--redis-url", url, "--tenant", "t1", *args]) == 0
    return out.getvalue()


def code(server: ServerProcess, path: str = "/", headers: dict[str, str] | None = None) -> int:
    reply = server.check(check_request(host="a.test", path=path, headers=headers))
    return int(reply.status.code)


def retry_after(server: ServerProcess) -> int:
    """The retry-after of a refused request, 0 when it was admitted."""
    reply = server.check(check_request(host="a.test", path="/"))
    if reply.status.code == OK:
        return 0
    headers = {h.header.key: h.header.value for h in reply.denied_response.headers}
    return int(headers["retry-after"])


def wait_into_window(seconds: int, need: float) -> None:
    """Sleep until ``need`` seconds of the current fixed window are surely left."""
    left = seconds - time.time() % seconds
    if left < need:
        time.sleep(left + 0.05)


@contextlib.contextmanager
def replicas(url: str, n: int, *extra: str) -> Iterator[list[ServerProcess]]:
    servers = [ServerProcess(["--redis-url", url, "--log-level", "info", *extra]) for _ in range(n)]
    try:
        for server in servers:
            server.wait_serving()
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_three_replicas_share_a_per_principal_limit(redis: RedisServer, tmp_path: Path) -> None:
    """100/minute per request principal across three replicas admits 100 to the stated bound."""
    issuer = Issuer()
    limit = ratelimit_yaml(
        "  - key: [request.auth.principal]\n    requests: 100\n    per: minute\n"
    )
    apply(redis.url, tmp_path, tenant_yaml("t1", issuer=issuer), ALLOW_ALL, limit)
    alice = {"authorization": f"Bearer {issuer.token(sub='alice')}"}
    bob = {"authorization": f"Bearer {issuer.token(sub='bob')}"}
    with replicas(redis.url, 3) as servers:
        wait_for(lambda: " replicas 3" in status(redis.url), what="three live replicas")
        # The bound holds for replicas that all know N = 3: each reads N when it registers
        # again (every REGISTER_EVERY); until then the first one started still shares by 1.
        time.sleep(REGISTER_EVERY * 2.5)
        wait_into_window(60, 20)
        answers: list[int] = []

        def drive(server: ServerProcess, count: int) -> None:
            got = [code(server, headers=alice) for _ in range(count)]
            answers.extend(got)  # list.extend is atomic under the GIL

        for count in (80, 30):  # a second round after a sync frees any unused shares
            threads = [threading.Thread(target=drive, args=(s, count)) for s in servers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            time.sleep(0.5)
        admitted = answers.count(OK)
        bound = 100 + (3 - 1) * math.ceil(100 / 3)  # requests + (N - 1) * ceil(requests / N)
        assert set(answers) <= {OK, LIMITED}
        assert 100 <= admitted <= bound, admitted
        print(f"admitted {admitted} of {len(answers)} (bound {bound})")
        assert code(servers[0], headers=bob) == OK  # another principal has its own counter
        shown = status(redis.url, "--key", f"{issuer.iss}/alice")
        counted = int(shown.splitlines()[-1].split()[1].split("/")[0])
        assert counted == admitted, shown


def test_per_second_window_rolls_over(redis: RedisServer, tmp_path: Path) -> None:
    """A per-second limit refuses past its count, then admits again in the next second."""
    apply(
        redis.url,
        tmp_path,
        tenant_yaml("t1"),
        ALLOW_ALL,
        ratelimit_yaml("  - {requests: 3, per: second}\n"),
    )
    with replicas(redis.url, 1) as (server,):
        time.sleep(1 - time.time() % 1 + 0.02)  # just after a boundary: a whole second ahead
        first = [code(server) for _ in range(5)]
        time.sleep(1 - time.time() % 1 + 0.02)
        second = [code(server) for _ in range(4)]
    assert first == [OK, OK, OK, LIMITED, LIMITED]
    assert second == [OK, OK, OK, LIMITED]


def test_redis_outage_follows_each_limits_mode(tmp_path: Path) -> None:
    """Redis stopped mid-window: a `local` limit keeps counting locally, a `deny` limit denies."""
    redis = RedisServer("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    limits = (
        '  - requests: 4\n    per: hour\n    rules: [{to: [{operation: {paths: ["/local"]}}]}]\n'
        "  - requests: 4\n    per: hour\n    onStoreOutage: deny\n"
        '    rules: [{to: [{operation: {paths: ["/deny"]}}]}]\n'
    )
    try:
        apply(redis.url, tmp_path, tenant_yaml("t1"), ALLOW_ALL, ratelimit_yaml(limits))
        port = free_port()
        with replicas(redis.url, 1, "--metrics-listen", f"127.0.0.1:{port}") as (server,):
            wait_into_window(3600, 60)
            assert [code(server, "/local"), code(server, "/local")] == [OK, OK]
            assert code(server, "/deny") == OK
            wait_for(lambda: " 2/4" in status(redis.url), what="the counts synced to Redis")
            redis.stop()
            wait_for(lambda: "rate limit store unreachable" in server.logs(), what="outage log")
            # the share left to this one replica: 4 - 2 synced = 2 more, then 429
            assert [code(server, "/local") for _ in range(3)] == [OK, OK, LIMITED]
            reply = server.check(check_request(host="a.test", path="/deny"))
            assert (reply.status.code, reply.status.message) == (LIMITED, "ratelimit_unavailable")
            events = {labels["event"]: v for labels, v in scrape(port)[EVENTS]}
            assert events["outage_deny"] == 1
            assert events["outage_local"] == 3
            assert events["sync_error"] >= 1
            redis.start()
            wait_for(lambda: code(server, "/deny") == OK, what="the deny limit to admit again")
            assert "rate limit store reachable again" in server.logs()
    finally:
        redis.stop()


def test_policy_update_changes_the_limit_on_every_replica(
    redis: RedisServer, tmp_path: Path
) -> None:
    """A RateLimit applied to Redis changes the limit of every replica, without a restart."""
    apply(
        redis.url,
        tmp_path,
        tenant_yaml("t1"),
        ALLOW_ALL,
        ratelimit_yaml("  - {requests: 100, per: hour}\n"),
    )
    with replicas(redis.url, 2) as servers:
        assert [code(s) for s in servers for _ in range(2)] == [OK] * 4
        apply(
            redis.url,
            tmp_path,
            tenant_yaml("t1"),
            ALLOW_ALL,
            ratelimit_yaml("  - {requests: 3, per: hour}\n"),
        )
        for server in servers:
            wait_for(lambda s=server: code(s) == LIMITED, what="the lower limit on a replica")
        apply(redis.url, tmp_path, tenant_yaml("t1"), ALLOW_ALL)
        for server in servers:
            wait_for(lambda s=server: code(s) == OK, what="the limit removed on a replica")


def test_counts_are_shared_on_a_redis_cluster(tmp_path: Path) -> None:
    """On a Redis Cluster two replicas count into one tenant-slot hash and both enforce it."""
    cluster = RedisClusterServers(tmp_path / "cluster")
    try:
        url = cluster.url
        apply(
            url,
            tmp_path,
            tenant_yaml("t1"),
            ALLOW_ALL,
            ratelimit_yaml("  - {requests: 4, per: hour}\n"),
        )
        with replicas(url, 2) as (one, two):
            wait_into_window(3600, 60)
            assert [code(one), code(one)] == [OK, OK]
            wait_for(lambda: " 2/4" in status(url), what="replica one's counts in Redis")
            assert [code(two), code(two)] == [OK, OK]
            wait_for(lambda: " 4/4" in status(url), what="both replicas' counts in Redis")
            assert code(two) == LIMITED
            wait_for(lambda: code(one) == LIMITED, what="replica one to see the shared total")
        window = int(time.time() // 3600 * 3600)
        slots = {
            redis_cli(cluster.nodes[0].port, "cluster", "keyslot", key)
            for key in (
                "extauthz:{t1}:current",
                f"extauthz:{{t1}}:ratelimit:quota/0:3600:{window}",
            )
        }
        assert len(slots) == 1
    finally:
        cluster.stop()


async def test_sync_bound_with_two_replicas(redis: RedisServer) -> None:
    """Two replicas syncing through Redis, the worst order: at most L + (N-1)*ceil(L/N) pass."""
    from extauthz.authn import JwksCache
    from extauthz.catalog import compile_documents
    from extauthz.documents import load_documents
    from extauthz.pipeline import CheckPipeline
    from extauthz.ratelimit import Limiter
    from extauthz.registry import Snapshot
    from extauthz.store.ratelimit_sync import RedisSync
    from extauthz.store.redis_client import connect, parse_url

    text = tenant_yaml("t1") + "---\n" + ALLOW_ALL + "---\n"
    text += ratelimit_yaml("  - {requests: 10, per: hour}\n")
    tenant = compile_documents("t1", load_documents(text, "t1.yaml"), JwksCache())
    snapshot = Snapshot.build({"t1": tenant})
    now = [3600.0 * int(time.time() // 3600) + 1]  # instants inside this hour

    def clock() -> float:
        return now[0]

    target = parse_url(redis.url)
    syncs, pipelines = [], []
    for _ in range(2):
        limiter = Limiter(clock=clock)
        syncs.append(RedisSync(limiter, connect(target), target.prefix, clock=clock))
        pipelines.append(CheckPipeline(limiter=limiter))
    try:
        for sync in syncs:
            await sync.sync_once()
        now[0] += 1.5  # the replica set is refreshed once a second
        await syncs[0].sync_once()  # both see two live replicas
        assert [s.limiter.replicas for s in syncs] == [2, 2]
        one, two = pipelines

        def admitted(p: CheckPipeline, n: int) -> int:
            view = RequestView(method="GET", host="a.test", path="/")
            return sum(p(snapshot, view).allowed for _ in range(n))

        assert admitted(one, 10) == 5  # its share: ceil(10 / 2)
        await syncs[0].sync_once()  # Redis: 5; share ceil(5 / 2) = 3
        assert admitted(two, 10) == 5  # it has not synced this counter yet: share 5
        await syncs[1].sync_once()  # Redis: 10
        assert admitted(one, 10) == 3  # from its stale view (5 known): over by 3
        await syncs[0].sync_once()  # Redis: 13
        assert admitted(one, 10) + admitted(two, 10) == 0
        key = f"extauthz:{{t1}}:ratelimit:quota/0:3600:{int(now[0] // 3600 * 3600)}"
        assert list((await syncs[0].client.hgetall(key)).values()) == [b"13"]
        assert 10 + (2 - 1) * math.ceil(10 / 2) >= 13  # the stated bound
    finally:
        for sync in syncs:
            await sync.close()


def test_counts_are_shared_through_sentinel(tmp_path: Path) -> None:
    """Through a Sentinel URL the replicas' counts reach the master and a limit is enforced."""
    from tests.test_redis_sentinel import SentinelServer, sentinel_url

    master = RedisServer()
    sentinel = SentinelServer(tmp_path, master.port)
    try:
        wait_for(lambda: sentinel.master_port() == master.port, what="sentinel to know its master")
        url = sentinel_url(sentinel)
        limit = ratelimit_yaml("  - {requests: 2, per: hour}\n")
        apply(url, tmp_path, tenant_yaml("t1"), ALLOW_ALL, limit)
        with replicas(url, 2) as (one, two):
            wait_into_window(3600, 60)
            assert code(one) == OK
            wait_for(lambda: " 1/2" in status(url), what="replica one's count in Redis")
            assert code(two) == OK
            wait_for(lambda: " 2/2" in status(url), what="both counts in Redis")
            time.sleep(0.5)  # a few sync intervals: replica two reads the total back
            # refused for the shared count (retry at the window's end) after admitting one
            # itself: not for its own count, nor for a spent share (retry-after 1)
            assert retry_after(two) > 60
    finally:
        sentinel.stop()
        master.stop()
