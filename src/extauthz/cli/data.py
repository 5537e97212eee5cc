"""``extauthz data ...``: the DataSets of a tenant in Redis (list, get, add, remove, import).

A DataSet is one of the tenant's documents, so a change is a new version of the tenant:
validated and compiled like ``policy apply``, stored atomically, announced on the channel,
recompiled by every replica, kept in the history for rollback. Each command reads the
tenant's current version, changes the one set and writes with that version expected; when
another writer got there first it reads again and retries (a few times).

Exit codes as ``extauthz policy``: 0 done, 1 invalid or unknown, 2 usage or Redis, 3 conflict.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from extauthz.cli import _env
from extauthz.cli.policy import _keep, _runner
from extauthz.documents import KIND_DATASET, Document, document_from_data
from extauthz.errors import ConflictError

if TYPE_CHECKING:
    from extauthz.store.redis_admin import PolicyAdmin

__all__ = ["register"]

RETRIES: Final = 5
Change = Callable[[frozenset[str]], frozenset[str]]


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
    _keep(add)
    rm = action("remove", "remove values from a set", _remove)
    rm.add_argument("values", nargs="+")
    _keep(rm)
    imp = action("import", "replace a set's values with a file's lines ('-': stdin)", _import)
    imp.add_argument("--file", required=True, type=Path)
    _keep(imp)


def _sets(docs: Sequence[Document]) -> dict[str, Document]:
    return {d.name: d for d in docs if d.kind == KIND_DATASET}


def _values(doc: Document) -> frozenset[str]:
    values = doc.spec.get("values", [])
    return frozenset(str(v) for v in values) if isinstance(values, list) else frozenset()


async def _list(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    revision = await admin.get(args.tenant)
    for name, doc in sorted(_sets(revision.documents).items()):
        print(f"{name}\t{len(_values(doc))}")
    return 0


async def _get(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    from extauthz.store.redis_admin import NotFound

    revision = await admin.get(args.tenant)
    doc = _sets(revision.documents).get(args.name)
    if doc is None:
        raise NotFound(f"tenant {args.tenant!r} has no DataSet {args.name!r}")
    sys.stdout.writelines(f"{v}\n" for v in sorted(_values(doc)))
    return 0


async def _add(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    added = frozenset(args.values)
    return await _change(admin, args, lambda old: old | added)


async def _remove(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    removed = frozenset(args.values)
    return await _change(admin, args, lambda old: old - removed)


async def _import(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text(encoding="utf-8")
    values = frozenset(line.strip() for line in text.splitlines() if line.strip())
    return await _change(admin, args, lambda old: values)


async def _change(admin: PolicyAdmin, args: argparse.Namespace, change: Change) -> int:
    """Read, change the set, write with the version read expected; retry on a conflict."""
    for attempt in range(RETRIES):
        revision = await admin.get(args.tenant)
        docs = list(revision.documents)
        current = _sets(docs).get(args.name)
        old = _values(current) if current is not None else frozenset()
        new = change(old)
        if current is not None and new == old:
            print(f"unchanged: tenant {args.tenant} version {revision.version} set {args.name}")
            return 0
        body = {
            "apiVersion": "extauthz.io/v1",
            "kind": KIND_DATASET,
            "metadata": {"name": args.name, "namespace": args.tenant},
            "spec": {"values": sorted(new)},
        }
        doc = document_from_data(body, f"{args.tenant}/{args.name}")
        docs = [doc if d is current else d for d in docs] if current else [*docs, doc]
        try:
            (result,) = await admin.apply(
                docs, expected=revision.version, keep=int(args.keep_versions)
            )
        except ConflictError:
            if attempt == RETRIES - 1:
                raise
            continue
        size = len(new)
        print(f"applied: tenant {args.tenant} version {result.version} set {args.name} ({size})")
        return 0
    return 0  # pragma: no cover - the loop returns or raises
