"""SIGTERM with Checks in flight: a real ``extauthz serve`` answers every one before it exits.

Many Checks are started at once over several connections; SIGTERM is sent once the first
answers arrive, so most are still in flight (queued in the server, or not yet read from the
socket). Every one must get its decision: none may end UNAVAILABLE or cancelled.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from google.rpc import code_pb2

from tests.helpers import Issuer, check_request, serving
from tests.telemetry_support import HOST, shop_policies

CHANNELS = 8
CHECKS = 1000  # in all, over CHANNELS connections (more can overflow the server queue)
SIGTERM_AFTER = 50  # answers before SIGTERM is sent


async def _checks_across_sigterm(address: str, send_sigterm: object) -> tuple[Counter[str], int]:
    """Start CHECKS Checks; SIGTERM after SIGTERM_AFTER answers. Outcome counts, and how
    many were answered when SIGTERM was sent."""
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    outcomes: Counter[str] = Counter()
    first = asyncio.Event()
    at_sigterm = -1
    request = check_request(host=HOST)

    async def one(stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
        try:
            reply = await stub.Check(request, timeout=30)
            outcomes["ok" if reply.status.code == code_pb2.OK else "denied"] += 1
        except grpc.aio.AioRpcError as exc:
            outcomes[exc.code().name] += 1
        if outcomes.total() >= SIGTERM_AFTER:
            first.set()

    try:
        for channel in channels:
            await channel.channel_ready()
        stubs = [external_auth_pb2_grpc.AuthorizationStub(c) for c in channels]
        tasks = [asyncio.create_task(one(stubs[n % CHANNELS])) for n in range(CHECKS)]
        await first.wait()
        at_sigterm = outcomes.total()
        send_sigterm()  # type: ignore[operator]
        await asyncio.gather(*tasks)
    finally:
        for channel in channels:
            await channel.close()
    return outcomes, at_sigterm


def test_sigterm_answers_every_check_in_flight(tmp_path: Path) -> None:
    """Thousands of Checks in flight at SIGTERM: every one is answered, then the server exits 0."""
    policies = shop_policies(tmp_path / "policies", Issuer())
    args = ["--policies", str(policies), "--grace-period", "20", "--decision-log", "none"]
    with serving(args) as server:

        def sigterm() -> None:
            server.proc.send_signal(signal.SIGTERM)

        outcomes, at_sigterm = asyncio.run(_checks_across_sigterm(server.address, sigterm))
        assert server.proc.wait(timeout=30) == 0
        logs = [line for line in server.logs().splitlines() if "drain" in line or "stop" in line]
    assert at_sigterm < CHECKS // 2, "too few Checks were in flight to show anything"
    assert outcomes == Counter({"ok": CHECKS}), f"answered before SIGTERM: {at_sigterm}; {logs}"
