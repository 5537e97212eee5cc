"""``extauthz check``: decide one request offline and say why."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import json_format

from extauthz.authn import JwksCache
from extauthz.cli._flags import add_settings_flags, settings_from_args
from extauthz.decode import MalformedRequest, decode
from extauthz.errors import Reason
from extauthz.loader import compile_all
from extauthz.outcome import Outcome, decision_record
from extauthz.pipeline import CheckPipeline
from extauthz.policy import explain
from extauthz.registry import Snapshot
from extauthz.response import metadata_of
from extauthz.settings import SettingsError
from extauthz.store.files import read_directory


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "check", help="decide a CheckRequest (JSON) offline and explain the decision"
    )
    p.add_argument(
        "--request",
        required=True,
        type=Path,
        help="CheckRequest as JSON (Envoy's protobuf JSON), '-' for stdin",
    )
    p.add_argument("--output", choices=["text", "json"], default="text")
    add_settings_flags(p, "check")
    p.add_argument(
        "--at",
        type=instant,
        help="decide as at this instant (RFC 3339, e.g. 2026-03-29T01:30:00Z); default now",
    )
    p.set_defaults(func=run)


def instant(text: str) -> datetime.datetime:
    """An RFC 3339 date-time with an offset (``Z`` or ``+02:00``)."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 date-time: {text!r}") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs an offset (Z or +HH:MM)")
    return when.astimezone(datetime.UTC)


def load_request(path: Path) -> external_auth_pb2.CheckRequest:
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    return json_format.Parse(text, external_auth_pb2.CheckRequest(), ignore_unknown_fields=False)


def fetch_keys(jwks: JwksCache, uris: frozenset[str], timeout: float = 5.0) -> list[str]:
    """Fetch the key sets at ``uris`` once (the server does it in the background; an offline
    check waits for them). The URIs that gave no keys."""

    async def fetch() -> None:
        jwks.track(uris)
        await jwks.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            # a bounded poll: the cache has no arrival event, and this is an offline command
            while any(jwks.keys(u) is None for u in uris) and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        finally:
            await jwks.close()

    asyncio.run(fetch())
    return sorted(u for u in uris if jwks.keys(u) is None)


def json_output(outcome: Outcome, decision_id: str) -> dict[str, object]:
    """``--output json``: the dynamic metadata, with the record's status, detail (also of
    an allow: empty) and the dry-run reason and rule."""
    record = decision_record(outcome, decision_id)
    out = {**metadata_of(outcome, decision_id), "status": record["status"]}
    out["detail"] = record.get("detail", outcome.detail)
    for name in ("shadow_reason", "shadow_rule"):
        if name in record:
            out[name] = record[name]
    return out


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args, "check")
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    docs, errors = read_directory(settings.policies)
    jwks = JwksCache(ca_file=settings.jwks_ca_file, allow_private=settings.jwks_allow_private)
    tenants, compile_errors = compile_all(docs, jwks)
    for error in [*errors, *compile_errors]:
        print(f"error: {error}", file=sys.stderr)
    if errors or compile_errors:
        return 2
    try:
        view = decode(load_request(args.request))
    except (OSError, json_format.ParseError, MalformedRequest) as exc:
        print(f"error: {args.request}: {exc}", file=sys.stderr)
        return 2
    options = settings.check_options()
    at: datetime.datetime | None = args.at
    if at is not None:
        options = dataclasses.replace(options, clock=lambda: at)
    pipeline = CheckPipeline(options)
    snapshot = Snapshot.build(tenants)
    outcome, tenant, subject = pipeline.trace(snapshot, view)
    uris = tenant.authenticator.jwks_uris if tenant is not None else frozenset()
    if outcome.reason is Reason.JWT_INVALID and any(jwks.keys(u) is None for u in uris):
        for uri in fetch_keys(jwks, uris):
            print(f"warning: no keys from {uri}", file=sys.stderr)
        outcome, tenant, subject = pipeline.trace(snapshot, view)
    explanation = explain(tenant.policies, subject) if tenant and subject else None
    if args.output == "json":
        out = json_output(outcome, view.request_id)
        if explanation is not None:
            out["explanation"] = explanation.to_dict()
        print(json.dumps(out, indent=2))
    else:
        verdict = "ALLOW" if outcome.allowed else f"DENY ({outcome.status})"
        print(f"{verdict}  reason={outcome.reason}  tenant={outcome.tenant or '-'}")
        if outcome.detail and not outcome.allowed:
            print(f"  {outcome.detail}")
        shadow = outcome.shadow
        if shadow is not None:
            verdict = "ALLOW" if shadow.allowed else "DENY"
            by = f"  policy={shadow.policy}[{shadow.rule}]" if shadow.policy else ""
            print(f"SHADOW {verdict}  reason={shadow.reason}{by}  (dry-run, not enforced)")
        if explanation is not None:
            print(explanation.render())
    return 0 if outcome.allowed else 1
