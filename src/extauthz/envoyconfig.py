"""A static Envoy bootstrap that calls extauthz the way an Istio sidecar calls a CUSTOM provider.

Built from envoy-data-plane's typed messages, then rendered as YAML or JSON. One listener
(plain HTTP, or mTLS that requires and verifies a client certificate) runs an HTTP connection
manager with two filters: ``ext_authz`` (gRPC to the ``extauthz`` cluster over HTTP/2,
``failure_mode_allow: false``, 403 on error, V3 transport) and the router, which sends what is
allowed to one upstream cluster. On a TLS downstream Envoy itself reports the peer
certificate's URI SAN as ``attributes.source.principal``. ``xfcc`` makes it a gateway that
writes the client's certificate URI into ``x-forwarded-client-cert`` for the next hop.

Differences from what istiod generates for ``envoyExtAuthzGrpc`` (``failOpen: false``): no
shadow-RBAC ``filter_enabled_metadata`` (every request is checked, as a CUSTOM policy with one
empty rule would do); a short gRPC timeout (Istio's default is 600s); the peer certificate is
included in the CheckRequest; the listener uses files for its certificates instead of SDS.
``include_tls_session`` (off by default, as in Istio's provider, which has no such option) adds
the TLS session (SNI) to the Check, without which a ``connection.sni`` condition can't be
evaluated.

The path is normalized as istiod configures it for ``meshConfig.pathNormalization``:
``NONE`` ``normalize_path: false``; ``BASE`` ``normalize_path: true``; ``MERGE_SLASHES`` also
``merge_slashes: true``; ``DECODE_AND_MERGE_SLASHES`` also ``path_with_escaped_slashes_action:
UNESCAPE_AND_FORWARD``; every other mode ``KEEP_UNCHANGED``.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Final

import yaml
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    ApiVersion,
    DataSource,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    SocketAddress,
    TransportSocket,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.route.v3 import (
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import BufferSettings, ExtAuthz
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpConnectionManagerForwardClientCertDetails,
    HttpConnectionManagerPathWithEscapedSlashesAction,
    HttpConnectionManagerSetCurrentClientCertDetails,
    HttpFilter,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    DownstreamTlsContext,
    TlsCertificate,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode
from envoy_data_plane.google.protobuf import Any as AnyMessage

from extauthz.envoyoptions import DEFAULT_BODY_BYTES, EnvoyOptions, HostPort, TlsFiles, XfccMode
from extauthz.pathnorm import PathNormalization

__all__ = [
    "DEFAULT_BODY_BYTES",
    "EXTAUTHZ_CLUSTER",
    "UPSTREAM_CLUSTER",
    "EnvoyOptions",
    "HostPort",
    "TlsFiles",
    "XfccMode",
    "bootstrap_dict",
    "build_bootstrap",
    "render",
]

EXTAUTHZ_CLUSTER: Final = "extauthz"
UPSTREAM_CLUSTER: Final = "upstream"
EXT_AUTHZ_FILTER: Final = "envoy.filters.http.ext_authz"
_HTTP_PROTOCOL_OPTIONS: Final = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_CONNECT_TIMEOUT: Final = datetime.timedelta(seconds=1)


def _address(hp: HostPort) -> Address:
    return Address(socket_address=SocketAddress(address=hp.host, port_value=hp.port))


def _cluster(name: str, target: HostPort, *, http2: bool) -> Cluster:
    protocol = (
        HttpProtocolOptionsExplicitHttpConfig(http2_protocol_options=Http2ProtocolOptions())
        if http2
        else HttpProtocolOptionsExplicitHttpConfig(http_protocol_options=Http1ProtocolOptions())
    )
    return Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC if target.is_ip else ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=_CONNECT_TIMEOUT,
        typed_extension_protocol_options={
            _HTTP_PROTOCOL_OPTIONS: AnyMessage.pack(
                HttpProtocolOptions(explicit_http_config=protocol)
            )
        },
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=_address(target)))]
                )
            ],
        ),
    )


def ext_authz_filter(options: EnvoyOptions) -> ExtAuthz:
    """The ext_authz HTTP filter as Istio configures it for a fail-closed gRPC provider."""
    body = (
        BufferSettings(max_request_bytes=options.with_request_body, allow_partial_message=True)
        if options.with_request_body
        else None
    )
    return ExtAuthz(
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(
                cluster_name=EXTAUTHZ_CLUSTER, authority=EXTAUTHZ_CLUSTER
            ),
            timeout=datetime.timedelta(seconds=options.timeout),
        ),
        transport_api_version=ApiVersion.V3,
        failure_mode_allow=False,
        status_on_error=HttpStatus(code=StatusCode.Forbidden),
        with_request_body=body,
        include_peer_certificate=True,
        include_tls_session=options.include_tls_session,
    )


def _http_connection_manager(options: EnvoyOptions) -> HttpConnectionManager:
    xfcc: dict[str, Any] = {}
    if options.xfcc is not None:
        xfcc = {
            "forward_client_cert_details": HttpConnectionManagerForwardClientCertDetails[
                options.xfcc.value
            ],
            "set_current_client_cert_details": HttpConnectionManagerSetCurrentClientCertDetails(
                uri=True
            ),
        }
    return HttpConnectionManager(
        stat_prefix="inbound",
        codec_type=HttpConnectionManagerCodecType.AUTO,
        **_path_normalization(options.path_normalization),
        route_config=RouteConfiguration(
            name="inbound",
            virtual_hosts=[
                VirtualHost(
                    name="inbound",
                    domains=["*"],
                    routes=[
                        Route(
                            match=RouteMatch(prefix="/"),
                            route=RouteAction(cluster=UPSTREAM_CLUSTER),
                        )
                    ],
                )
            ],
        ),
        http_filters=[
            HttpFilter(
                name=EXT_AUTHZ_FILTER, typed_config=AnyMessage.pack(ext_authz_filter(options))
            ),
            HttpFilter(name="envoy.filters.http.router", typed_config=AnyMessage.pack(Router())),
        ],
        **xfcc,
    )


def _path_normalization(mode: PathNormalization) -> dict[str, Any]:
    """The connection manager's path settings istiod writes for ``meshConfig.pathNormalization``."""
    unescape = mode is PathNormalization.DECODE_AND_MERGE_SLASHES
    return {
        "normalize_path": mode is not PathNormalization.NONE,
        "merge_slashes": unescape or mode is PathNormalization.MERGE_SLASHES,
        "path_with_escaped_slashes_action": (
            HttpConnectionManagerPathWithEscapedSlashesAction.UNESCAPE_AND_FORWARD
            if unescape
            else HttpConnectionManagerPathWithEscapedSlashesAction.KEEP_UNCHANGED
        ),
    }


def _downstream_tls(tls: TlsFiles) -> TransportSocket:
    context = DownstreamTlsContext(
        require_client_certificate=True,
        common_tls_context=CommonTlsContext(
            tls_certificates=[
                TlsCertificate(
                    certificate_chain=DataSource(filename=str(tls.cert)),
                    private_key=DataSource(filename=str(tls.key)),
                )
            ],
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(filename=str(tls.ca))
            ),
        ),
    )
    return TransportSocket(
        name="envoy.transport_sockets.tls", typed_config=AnyMessage.pack(context)
    )


def build_bootstrap(options: EnvoyOptions) -> Bootstrap:
    """The typed bootstrap for ``options``."""
    chain = FilterChain(
        filters=[
            Filter(
                name="envoy.filters.network.http_connection_manager",
                typed_config=AnyMessage.pack(_http_connection_manager(options)),
            )
        ],
        transport_socket=_downstream_tls(options.tls) if options.tls else None,
    )
    return Bootstrap(
        admin=Admin(address=_address(HostPort("127.0.0.1", options.admin_port))),
        static_resources=BootstrapStaticResources(
            listeners=[
                Listener(name="inbound", address=_address(options.listen), filter_chains=[chain])
            ],
            clusters=[
                _cluster(EXTAUTHZ_CLUSTER, options.extauthz, http2=True),
                _cluster(UPSTREAM_CLUSTER, options.upstream, http2=False),
            ],
        ),
    )


def bootstrap_dict(bootstrap: Bootstrap) -> dict[str, Any]:
    """The bootstrap in proto JSON form (camelCase keys, as Envoy reads them).

    Proto JSON leaves out fields at their default; ``failureModeAllow: false`` is written
    anyway, so that whoever reads the config sees that it fails closed.
    """
    data: dict[str, Any] = bootstrap.to_dict()
    for listener in data.get("staticResources", {}).get("listeners", []):
        for chain in listener.get("filterChains", []):
            for network_filter in chain.get("filters", []):
                hcm = network_filter.get("typedConfig", {})
                for http_filter in hcm.get("httpFilters", []):
                    if http_filter.get("name") == EXT_AUTHZ_FILTER:
                        http_filter["typedConfig"].setdefault("failureModeAllow", False)
    return data


def render(options: EnvoyOptions, fmt: str = "yaml") -> str:
    """The bootstrap for ``options`` as ``yaml`` or ``json`` text."""
    data = bootstrap_dict(build_bootstrap(options))
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "yaml":
        text: str = yaml.safe_dump(data, sort_keys=False)
        return text
    raise ValueError(f"unknown format {fmt!r} (yaml or json)")
