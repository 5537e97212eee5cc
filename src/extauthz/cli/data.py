"""``extauthz data ...``: the DataSets of a tenant in Redis (list, get, add, remove, import).

A set is kept apart from the tenant's documents (``store/redis_sets.py``): ``add`` and
``remove`` change it in place and ``import`` replaces it whole, each as the set's next
version, announced to every replica, which applies just that change. The tenant must exist;
the values are checked as a DataSet document's are before anything is written. Sets are run-
time data: not in the tenant's history, not rolled back.

Exit codes as ``extauthz policy``: 0 done, 1 invalid or unknown, 2 usage or Redis.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from extauthz.cli import _env
from extauthz.cli.policy import _runner
from extauthz.datasets import check_set_name, value_error
from extauthz.errors import DocumentError, Location

if TYPE_CHECKING:
    from extauthz.store.redis_admin import PolicyAdmin
    from extauthz.store.redis_model import SetResult

__all__ = ["register"]

PROGRESS_EVERY: Final = 2.0  # seconds between progress lines of a long import


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("data", help="manage a tenant's DataSets in Redis")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str, func: Any, *, named: bool = True) -> Any:
        a: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        _env.add(a, "--redis-url", help="as for extauthz policy (see docs/redis.md)")
        a.add_argument("--tenant", required=True, help="the tenant the set belongs to")
        if named:
            a.add_argument("--set", dest="name", required=True, help="the DataSet's name")
        a.set_defaults(func=_runner(func))
        return a

    action("list", "list the tenant's DataSets and their sizes", _list, named=False)
    action("get", "print the values of a set, one per line", _get)
    add = action("add", "add values to a set (created if absent)", _add)
    add.add_argument("values", nargs="+")
    rm = action("remove", "remove values from a set", _remove)
    rm.add_argument("values", nargs="+")
    imp = action("import", "replace a set's values with a file's lines ('-': stdin)", _import)
    imp.add_argument("--file", required=True, type=Path)


def _checked(args: argparse.Namespace, values: list[str], where: str) -> list[str]:
    """``values`` (blank ones dropped, each once) if each can be a set value; raises
    DocumentError naming the first that can't (its position: line or argument number)."""
    if not check_set_name(args.name):
        raise DocumentError(
            f"DataSet name {args.name!r}: 1-128 of [A-Za-z0-9_.-], not starting with '-' or '.'"
        )
    for i, value in enumerate(values):
        error = value_error(value)
        if error is not None:
            raise DocumentError(f"value {error}", location=Location(where, i + 1))
    return [v for v in dict.fromkeys(values) if v]


def _report(args: argparse.Namespace, result: SetResult) -> int:
    print(
        f"{result.state}: tenant {args.tenant} version {result.version} set {result.name} "
        f"({result.size})"
    )
    return 0


async def _list(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    await admin.current(args.tenant)
    versions = await admin.sets.versions(args.tenant)
    sizes = (await admin.sets.sizes([args.tenant])).get(args.tenant, {})
    for name in sorted(versions):
        print(f"{name}\t{sizes.get(name, 0)}")
    return 0


async def _get(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    from extauthz.store.redis_model import NotFound

    if args.name not in await admin.sets.versions(args.tenant):
        raise NotFound(f"tenant {args.tenant!r} has no DataSet {args.name!r}")
    values: set[str] = set()
    async for chunk in admin.sets.scan(args.tenant, args.name):
        values.update(v.decode("utf-8", "backslashreplace") for v in chunk)
    sys.stdout.writelines(f"{v}\n" for v in sorted(values))
    return 0


async def _add(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    values = _checked(args, args.values, "argument")
    if not values:
        raise DocumentError("no value to add")
    return _report(args, await admin.sets.add(args.tenant, args.name, values))


async def _remove(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    values = _checked(args, args.values, "argument")
    if not values:
        raise DocumentError("no value to remove")
    return _report(args, await admin.sets.remove(args.tenant, args.name, values))


async def _import(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    where = "<stdin>" if str(args.file) == "-" else str(args.file)
    text = sys.stdin.read() if where == "<stdin>" else args.file.read_text(encoding="utf-8")
    values = _checked(args, [line.strip() for line in text.splitlines()], where)
    await admin.current(args.tenant)  # an unknown tenant: stage nothing
    start = last = time.monotonic()

    def progress(written: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY:
            last = now
            print(f"staged {written} of {len(values)} values", file=sys.stderr, flush=True)

    staging = await admin.sets.stage(args.tenant, args.name, values, progress)
    result = await admin.sets.replace(args.tenant, args.name, staging)
    if time.monotonic() - start >= PROGRESS_EVERY:
        print(f"imported {len(values)} values", file=sys.stderr)
    return _report(args, result)
