"""``extauthz policy ...``: validate documents exactly as the server loads them, and manage
the tenants held in Redis (apply, get, list, history, diff, delete, rollback).

Every write is compiled by the server's loader and checked for routing conflicts with the
other tenants before anything is stored (``extauthz.store.redis_admin``).

Exit codes of the Redis actions: 0 done (``diff``: no difference), 1 invalid documents,
routing conflict, unknown tenant or version (``diff``: differences found), 2 usage error
or Redis unreachable, 3 the tenant is not at ``--expected-version``.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from extauthz.authn import JwksCache
from extauthz.cli import _env
from extauthz.datasets import parse_datasets
from extauthz.documents import KIND_DATASET, Document, dump_documents
from extauthz.errors import ConflictError, DocumentError, StoreError
from extauthz.loader import compile_all
from extauthz.store.files import read_directory
from extauthz.tenancy import TenantConflict, group_by_tenant

if TYPE_CHECKING:
    from extauthz.store.redis_admin import PolicyAdmin

__all__ = ["register"]

EXIT_INVALID: Final = 1
EXIT_USAGE: Final = 2
EXIT_CONFLICT: Final = 3


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("policy", help="validate and manage documents")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    v = actions.add_parser("validate", help="parse and compile documents as the server does")
    v.add_argument("paths", nargs="+", type=Path, help="YAML files or directories")
    v.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    v.set_defaults(func=validate)

    def redis_action(name: str, help_text: str, func: Callable[..., Awaitable[int]]) -> Any:
        a: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        _env.add(
            a,
            "--redis-url",
            help="redis://, rediss://, unix://, redis+sentinel://, "
            "redis+cluster:// (see docs/redis.md)",
        )
        a.set_defaults(func=_runner(func))
        return a

    a = redis_action("apply", "validate, then store each tenant as its next version", _apply)
    a.add_argument(
        "-f",
        "--filename",
        dest="paths",
        action="append",
        type=Path,
        required=True,
        help="YAML file or directory (repeatable); replaces each tenant it names",
    )
    a.add_argument(
        "--expected-version",
        type=int,
        help="fail (exit 3) unless the tenant is at this version (one tenant only)",
    )
    _keep(a)
    g = redis_action("get", "print a tenant's documents as YAML", _get)
    g.add_argument("tenant")
    g.add_argument("--version", type=int, help="an earlier kept version (default: current)")
    ls = redis_action("list", "list the tenants in Redis", _list)
    ls.add_argument("--all", action="store_true", help="include deleted tenants")
    ls.add_argument("--output", choices=["text", "json"], default="text")
    h = redis_action("history", "list the kept versions of a tenant", _history)
    h.add_argument("tenant")
    d = redis_action("diff", "compare files with what Redis holds (exit 1 if they differ)", _diff)
    d.add_argument(
        "-f",
        "--filename",
        dest="paths",
        action="append",
        type=Path,
        required=True,
        help="YAML file or directory (repeatable)",
    )
    rm = redis_action("delete", "delete a tenant (a new version; rollback restores it)", _delete)
    rm.add_argument("tenant")
    rm.add_argument("--expected-version", type=int, help="fail (exit 3) unless at this version")
    _keep(rm)
    rb = redis_action("rollback", "store an earlier version again, as the next version", _rollback)
    rb.add_argument("tenant")
    rb.add_argument("--to", type=int, help="the version to restore (default: the previous one)")
    _keep(rb)


def _keep(parser: argparse.ArgumentParser) -> None:
    from extauthz.store.redis_model import DEFAULT_KEEP

    _env.add(
        parser,
        "--keep-versions",
        default=str(DEFAULT_KEEP),
        help="earlier versions kept per tenant for rollback",
    )


def validate(args: argparse.Namespace) -> int:
    docs: list[Document] = []
    errors: list[DocumentError | TenantConflict] = []
    for path in args.paths:
        found, bad = read_directory(path)
        docs.extend(found)
        errors.extend(bad)
    tenants, compile_errors = compile_all(docs, JwksCache())
    errors.extend(compile_errors)
    for tenant in tenants.values():
        for warning in tenant.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if not args.quiet:
            kind = "implicit tenant" if tenant.spec.implicit else "tenant"
            print(f"ok: {kind} {tenant.name}: {len(tenant.policies)} policies")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if not docs and not errors:
        print("error: no documents found", file=sys.stderr)
        return 1
    return 1 if errors else 0


# -- Redis actions -------------------------------------------------------------------------


def _runner(func: Callable[..., Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return asyncio.run(_with_admin(func, args))

    return run


async def _with_admin(func: Callable[..., Awaitable[int]], args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from extauthz.store.redis_admin import InvalidDocuments, NotFound, PolicyAdmin
    from extauthz.store.redis_client import connect, parse_url, redact_url
    from extauthz.store.redis_model import TenantRepo

    if not args.redis_url:
        print("error: --redis-url (EXTAUTHZ_REDIS_URL) is required", file=sys.stderr)
        return EXIT_USAGE
    try:
        target = parse_url(args.redis_url)
    except ValueError as exc:
        print(f"error: --redis-url: {exc}", file=sys.stderr)
        return EXIT_USAGE
    client = connect(target)
    try:
        return await func(PolicyAdmin(TenantRepo(client, target.prefix)), args)
    except InvalidDocuments as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return EXIT_INVALID
    except (NotFound, DocumentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except ConflictError as exc:
        print(f"conflict: {exc}", file=sys.stderr)
        return EXIT_CONFLICT
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StoreError, RedisError, OSError) as exc:
        print(f"error: redis {redact_url(target.url)}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        await client.aclose()


def _read(paths: list[Path]) -> list[Document]:
    docs: list[Document] = []
    errors: list[DocumentError] = []
    for path in paths:
        found, bad = read_directory(path)
        docs.extend(found)
        errors.extend(bad)
    if errors:
        from extauthz.store.redis_admin import InvalidDocuments

        raise InvalidDocuments(errors)
    return docs


async def _apply(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    results = await admin.apply(
        _read(args.paths), expected=args.expected_version, keep=int(args.keep_versions)
    )
    for result in results:
        state = "applied" if result.changed else "unchanged"
        print(f"{state}: tenant {result.tenant} version {result.version}")
        for s in result.sets:
            print(f"{s.state}: tenant {result.tenant} set {s.name} version {s.version} ({s.size})")
    return 0


async def _get(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    revision = await admin.get(args.tenant, args.version)
    print(f"# tenant {revision.tenant} version {revision.version}")
    versions = await admin.sets.versions(args.tenant)
    sizes = (await admin.sets.sizes([args.tenant])).get(args.tenant, {})
    for name in sorted(versions):  # run-time data: listed, not versioned with the documents
        print(f"# DataSet {name}: {sizes.get(name, 0)} values, version {versions[name]} "
              "(extauthz data get)")  # fmt: skip
    sys.stdout.write(dump_documents(revision.documents))
    return 0


async def _list(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    async for batch in admin.repo.tenants():
        rows.extend(await admin.repo.summary(batch))
    rows = sorted((r for r in rows if args.all or not r.get("deleted")), key=lambda r: r["tenant"])
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'TENANT':<32} {'VERSION':>8} {'POLICIES':>8}  UPDATED")
    for row in rows:
        updated = row.get("updated")
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(updated)) if updated else "-"
        policies = "deleted" if row.get("deleted") else row.get("policies", "-")
        print(f"{row['tenant']:<32} {row.get('version', '?')!s:>8} {policies!s:>8}  {when}")
    return 0


async def _history(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    record = await admin.current(args.tenant)
    history = await admin.repo.history(args.tenant)
    state = "deleted" if record.source is None else "current"
    print(f"{record.version}  {state}")
    for version in sorted(history, reverse=True):
        print(f"{version}")
    return 0


async def _diff(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    from extauthz.store.redis_admin import NotFound

    docs = _read(args.paths)
    await admin.compile(docs)
    differ = False
    for tenant, group in sorted(group_by_tenant(docs).items()):
        try:
            revision = await admin.get(tenant)
            stored, label = dump_documents(revision.documents), f"redis/{tenant}@{revision.version}"
        except NotFound:
            stored, label = "", f"redis/{tenant} (absent)"
        wanted = dump_documents([d for d in group if d.kind != KIND_DATASET])
        pairs = [(stored, wanted, label, f"files/{tenant}")]
        # a DataSet with values: compare them with the set's (one per line, sorted)
        versions = await admin.sets.versions(tenant)
        for name, values in parse_datasets(group).items():
            if name not in versions:
                differ = True
                print(f"--- redis/{tenant}/{name} (absent)\n+++ files/{tenant}/{name}")
                sys.stdout.writelines(f"+{v}\n" for v in sorted(values or ()))
            elif values is not None:
                held: set[str] = set()
                async for chunk in admin.sets.scan(tenant, name):
                    held.update(v.decode("utf-8", "backslashreplace") for v in chunk)
                source = f"redis/{tenant}/{name}@{versions[name]}"
                pairs.append((_lines(held), _lines(values), source, f"files/{tenant}/{name}"))
        for before, after, source, target in pairs:
            lines = list(
                difflib.unified_diff(
                    before.splitlines(keepends=True),
                    after.splitlines(keepends=True),
                    fromfile=source,
                    tofile=target,
                )
            )
            differ = differ or bool(lines)
            sys.stdout.writelines(lines)
    return 1 if differ else 0


def _lines(values: Iterable[str]) -> str:
    return "".join(f"{v}\n" for v in sorted(values))


async def _delete(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    result = await admin.delete(
        args.tenant, expected=args.expected_version, keep=int(args.keep_versions)
    )
    print(f"deleted: tenant {result.tenant} version {result.version}")
    return 0


async def _rollback(admin: PolicyAdmin, args: argparse.Namespace) -> int:
    restored, result = await admin.rollback(args.tenant, to=args.to, keep=int(args.keep_versions))
    print(f"rolled back: tenant {result.tenant} to version {restored} as version {result.version}")
    return 0
