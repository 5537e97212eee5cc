"""The Envoy the end-to-end tests start comes up even when its chosen port was taken."""

from __future__ import annotations

import socket
from pathlib import Path

from extauthz.envoyconfig import EnvoyOptions, HostPort
from tests.envoy_support import echo_upstream, started_envoy
from tests.helpers import free_port


def test_envoy_starts_again_on_new_ports_when_its_port_is_taken(tmp_path: Path) -> None:
    """A listener port another process holds (as a client's connection can, between
    free_port and Envoy's bind) makes Envoy exit; the next attempt uses new ports."""
    with socket.socket() as taken, echo_upstream() as upstream:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = EnvoyOptions(
            extauthz=HostPort("127.0.0.1", free_port()),
            upstream=HostPort.parse(upstream),
            listen=HostPort("127.0.0.1", port),
            admin_port=free_port(),
        )
        with started_envoy(options, tmp_path) as envoy:
            assert envoy.port != port
            assert envoy.proc.poll() is None
        assert envoy.proc.poll() is not None  # stopped on exit
        assert "Address already in use" in (tmp_path / f"envoy-{port}.log").read_text()
