"""The real Prometheus endpoint of ``extauthz serve``, one process and a supervisor of two."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Issuer, check_request, free_port, serving, wait_for
from tests.telemetry_support import HOST, shop_policies

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return samples


def checks(samples: Samples, decision: str) -> float:
    return sum(
        v
        for labels, v in samples.get("extauthz_checks_total", [])
        if labels["tenant"] == "shop" and labels["decision"] == decision
    )


def test_prometheus_endpoint_counts_checks(tmp_path: Path) -> None:
    """Checks show on /metrics as extauthz_checks_total by tenant and decision, with latency."""
    port = free_port()
    policies = shop_policies(tmp_path / "policies", Issuer())
    args = ["--policies", str(policies), "--metrics-listen", f"127.0.0.1:{port}"]
    with serving(args) as server:
        for _ in range(3):
            server.check(check_request(host=HOST))
        server.check(check_request(host=HOST, method="POST"))
        samples = scrape(port)
    assert checks(samples, "allow") == 3
    assert checks(samples, "deny") == 1
    assert sum(v for _, v in samples["extauthz_check_duration_seconds_count"]) == 4
    assert samples["extauthz_ready"][0][1] == 1


def test_supervisor_endpoint_gathers_every_worker(tmp_path: Path) -> None:
    """With --workers 2 the supervisor's /metrics holds each worker's counts, by worker label."""
    port = free_port()
    policies = shop_policies(tmp_path / "policies", Issuer())
    args = ["--policies", str(policies), "--metrics-listen", f"127.0.0.1:{port}", "--workers", "2"]
    with serving(args) as server:
        for _ in range(8):  # a new connection each time: SO_REUSEPORT spreads them
            with grpc.insecure_channel(
                server.address, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                stub.Check(check_request(host=HOST), timeout=5)

        def both_workers() -> Samples:
            samples = scrape(port)
            ready = {labels["worker"] for labels, v in samples.get("extauthz_ready", []) if v}
            return samples if ready == {"0", "1"} else {}

        samples = wait_for(both_workers, 20, what="both workers' metrics")
    assert checks(samples, "allow") == 8
    assert sum(v for _, v in samples["extauthz_check_duration_seconds_count"]) == 8
    assert {labels["worker"] for labels, _ in samples["extauthz_check_duration_seconds_count"]}
    assert samples["extauthz_workers"][0][1] == 2
