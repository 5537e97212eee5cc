"""``extauthz ratelimit status``: a tenant's limits and the counts of their current windows.

Reads Redis only (what every replica has synced; admissions of the last sync interval may be
missing). ``--key`` (repeat it for a key of several attributes, in the key's order) shows
the counter of those values alone; without it, every key counted in the window, by hash.

Exit codes as ``extauthz policy``: 0 done, 1 unknown tenant, 2 usage or Redis.
"""

from __future__ import annotations

import argparse
import datetime
import time
from typing import TYPE_CHECKING, Any

from extauthz.cli import _env
from extauthz.cli.policy import _runner

if TYPE_CHECKING:
    from extauthz.store.redis_admin import PolicyAdmin

__all__ = ["register"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("ratelimit", help="inspect a tenant's rate limits")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    status: argparse.ArgumentParser = actions.add_parser(
        "status", help="current counts of a tenant's limits (from Redis)"
    )
    _env.add(status, "--redis-url", help="as for extauthz policy (see docs/redis.md)")
    status.add_argument("--tenant", required=True, help="the tenant")
    status.add_argument(
        "--key",
        action="append",
        help="a key value (repeat for each attribute of a composite key, in order)",
    )
    status.set_defaults(func=_runner(_status))


async def _status(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    from extauthz.catalog import compile_documents
    from extauthz.ratelimit.schema import key_hash
    from extauthz.store.ratelimit_sync import hash_key, replicas_key

    revision = await admin.get(args.tenant)
    compiled = compile_documents(args.tenant, revision.documents, admin.jwks)
    client = admin.repo.client
    prefix = admin.repo.keys.prefix
    now = time.time()
    live = await client.zcount(replicas_key(prefix), now - 5, "+inf")
    print(f"tenant {args.tenant} version {revision.version} replicas {live}")
    limits = compiled.ratelimits.limits if compiled.ratelimits is not None else ()
    if not limits:
        print("no rate limits")
        return 0
    wanted = key_hash(args.key) if args.key else None
    for limit in limits:
        window = int(now // limit.seconds) * limit.seconds
        start = datetime.datetime.fromtimestamp(window, datetime.UTC).isoformat()
        resets = int(window + limit.seconds - now) + 1
        print(
            f"limit {limit.id} {limit.requests}/{limit.seconds}s key "
            f"[{', '.join(limit.key)}] window {start} resets in {resets}s"
        )
        key = hash_key(prefix, args.tenant, limit.id, limit.seconds, window)
        if wanted is not None:
            if len(args.key) != len(limit.key):
                print("  (the key has another number of attributes)")
                continue
            count = int(await client.hget(key, wanted) or 0)
            print(f"  {wanted} {count}/{limit.requests}")
            continue
        counts = await client.hgetall(key)
        for field, value in sorted(counts.items(), key=lambda kv: -int(kv[1])):
            name = field.decode() if isinstance(field, bytes) else str(field)
            print(f"  {name} {int(value)}/{limit.requests}")
    return 0
