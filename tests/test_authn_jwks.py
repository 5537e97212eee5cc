"""JwksCache against real local HTTP and HTTPS servers (http.server in a thread)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm

from extauthz.authn import Authenticator, JwksCache, parse_jwt_rules
from extauthz.documents import load_documents
from extauthz.errors import Reason
from extauthz.model import RequestView
from tests.helpers import until

ISS = "https://issuer.example"
KEY_1 = ec.generate_private_key(ec.SECP256R1())
KEY_2 = ec.generate_private_key(ec.SECP256R1())


def jwks(*pairs: tuple[Any, str]) -> bytes:
    keys = [{**ECAlgorithm.to_jwk(k.public_key(), as_dict=True), "kid": kid} for k, kid in pairs]
    return json.dumps({"keys": keys}).encode()


def sign(key: Any, kid: str) -> str:
    claims = {"iss": ISS, "sub": "alice", "exp": int(time.time()) + 600}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


@dataclass
class Served:
    """What the server answers, and what it saw. Changed by tests while it runs."""

    body: bytes = field(default_factory=lambda: jwks((KEY_1, "k1")))
    status: int = 200
    hits: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        with self.lock:
            return len(self.hits)


def handler_for(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with served.lock:
                served.hits.append(time.monotonic())
                status, body = served.status, served.body
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@dataclass
class Server:
    url: str
    served: Served


def run_server(ssl_context: ssl.SSLContext | None = None) -> Iterator[Server]:
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(served))
    httpd.daemon_threads = True
    if ssl_context is not None:
        httpd.socket = ssl_context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    scheme = "https" if ssl_context else "http"
    try:
        yield Server(f"{scheme}://127.0.0.1:{httpd.server_port}/jwks.json", served)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def http_server() -> Iterator[Server]:
    yield from run_server()


@dataclass
class Pki:
    ca_file: str
    server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    directory: Path = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "extauthz test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    server_key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "server.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "server.key"
    key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return Pki(str(ca_file), context)


@pytest.fixture
def https_server(pki: Pki) -> Iterator[Server]:
    yield from run_server(pki.server_context)


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A port that accepts TCP connections and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/jwks.json"
    finally:
        sock.close()


@pytest.fixture
async def cache_factory() -> AsyncIterator[Callable[..., JwksCache]]:
    made: list[JwksCache] = []

    def make(**kwargs: Any) -> JwksCache:
        kwargs.setdefault("allow_private", True)  # the test servers listen on 127.0.0.1
        cache = JwksCache(**kwargs)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.close()


async def started(cache: JwksCache, *uris: str) -> JwksCache:
    await cache.start()
    cache.track(uris)
    return cache


def authenticator(uri: str, cache: JwksCache) -> Authenticator:
    doc = {
        "apiVersion": "extauthz.io/v1",
        "kind": "Tenant",
        "metadata": {"name": "acme"},
        "spec": {"jwtRules": [{"issuer": ISS, "jwksUri": uri}]},
    }
    (document,) = load_documents(yaml.safe_dump(doc), "tenant.yaml")
    return Authenticator(parse_jwt_rules(document, ("spec", "jwtRules")), cache)


def bearer(token: str) -> RequestView:
    return RequestView(headers={"authorization": f"Bearer {token}"})


async def test_first_fetch_over_http(
    http_server: Server, cache_factory: Callable[..., JwksCache]
) -> None:
    """Tracking a URI fetches its keys in the background; keys() then returns them."""
    cache = await started(cache_factory(), http_server.url)
    await until(lambda: cache.keys(http_server.url) is not None)
    assert set(cache.keys(http_server.url) or {}) == {"k1"}
    assert cache.fetch_ok == 1
    assert cache.fetch_error == 0


async def test_first_fetch_over_https_with_ca_file(
    https_server: Server, pki: Pki, cache_factory: Callable[..., JwksCache]
) -> None:
    """HTTPS verified against ca_file: keys are fetched and a token verifies with them."""
    cache = await started(cache_factory(ca_file=pki.ca_file), https_server.url)
    await until(lambda: cache.keys(https_server.url) is not None)
    result = authenticator(https_server.url, cache).authenticate(bearer(sign(KEY_1, "k1")))
    assert result.request_principal == f"{ISS}/alice"


async def test_https_with_unknown_ca_fails(
    https_server: Server, cache_factory: Callable[..., JwksCache]
) -> None:
    """Without the CA, certificate verification fails: an error is counted, no keys."""
    cache = await started(cache_factory(), https_server.url)
    await until(lambda: cache.fetch_error >= 1)
    assert cache.keys(https_server.url) is None
    assert https_server.served.count() == 0  # the handshake failed before any request


async def test_unknown_kid_refresh_picks_up_rotation(
    http_server: Server, cache_factory: Callable[..., JwksCache]
) -> None:
    """A token with a new kid fails once, triggers a refetch, then verifies."""
    cache = await started(cache_factory(min_refresh_interval=0.2), http_server.url)
    auth = authenticator(http_server.url, cache)
    await until(lambda: cache.keys(http_server.url) is not None)
    http_server.served.body = jwks((KEY_1, "k1"), (KEY_2, "k2"))
    token = sign(KEY_2, "k2")
    first = auth.authenticate(bearer(token))
    assert first.error is not None
    assert first.error.reason is Reason.JWT_INVALID
    await until(lambda: "k2" in (cache.keys(http_server.url) or {}))
    assert auth.authenticate(bearer(token)).request_principal == f"{ISS}/alice"


async def test_refresh_requests_are_rate_limited(
    http_server: Server, cache_factory: Callable[..., JwksCache]
) -> None:
    """Many refresh requests within min_refresh_interval make one fetch, not sooner than it."""
    cache = await started(cache_factory(min_refresh_interval=1.0), http_server.url)
    await until(lambda: http_server.served.count() == 1)
    for _ in range(20):
        cache.request_refresh(http_server.url)
        await asyncio.sleep(0.02)
    await until(lambda: http_server.served.count() == 2)
    for _ in range(20):
        cache.request_refresh(http_server.url)
    await asyncio.sleep(0.3)
    hits = list(http_server.served.hits)
    assert len(hits) == 2
    assert hits[1] - hits[0] >= 0.7  # server-side times: allow for fetch latency


async def test_request_refresh_never_blocks(
    silent_url: str, cache_factory: Callable[..., JwksCache]
) -> None:
    """request_refresh returns at once even while the fetch is hanging."""
    cache = await started(cache_factory(fetch_timeout=0.5), silent_url)
    start = time.perf_counter()
    for _ in range(1000):
        cache.request_refresh(silent_url)
    assert time.perf_counter() - start < 0.1


async def test_failed_fetch_keeps_last_good_keys(
    http_server: Server, cache_factory: Callable[..., JwksCache], caplog: pytest.LogCaptureFixture
) -> None:
    """A refetch answered with HTTP 500 is counted and logged; the old keys stay."""
    cache = await started(cache_factory(min_refresh_interval=0.1), http_server.url)
    await until(lambda: cache.keys(http_server.url) is not None)
    http_server.served.status = 500
    caplog.set_level(logging.WARNING, logger="extauthz.authn")
    cache.request_refresh(http_server.url)
    await until(lambda: cache.fetch_error >= 1)
    assert set(cache.keys(http_server.url) or {}) == {"k1"}
    (record,) = [r for r in caplog.records if r.getMessage() == "jwks fetch failed"][:1]
    assert record.__dict__["jwks_uri"] == http_server.url
    assert record.__dict__["keeping_last_good"] is True


async def test_oversized_body_is_rejected(
    http_server: Server, cache_factory: Callable[..., JwksCache]
) -> None:
    """A JWKS body over 1 MiB is refused: counted as an error, no keys."""
    http_server.served.body = b'{"keys": [], "pad": "' + b"x" * (1024 * 1024) + b'"}'
    cache = await started(cache_factory(), http_server.url)
    await until(lambda: cache.fetch_error >= 1)
    assert cache.keys(http_server.url) is None


async def test_invalid_json_is_rejected(
    http_server: Server, cache_factory: Callable[..., JwksCache]
) -> None:
    """A body that is not JSON is refused: counted as an error, no keys."""
    http_server.served.body = b"<html>not json</html>"
    cache = await started(cache_factory(), http_server.url)
    await until(lambda: cache.fetch_error >= 1)
    assert cache.keys(http_server.url) is None
    assert cache.fetch_ok == 0


async def test_silent_server_does_not_hang_the_caller(
    silent_url: str, cache_factory: Callable[..., JwksCache]
) -> None:
    """While the fetch hangs, authenticate answers at once; the fetch times out as an error."""
    cache = await started(cache_factory(fetch_timeout=0.3), silent_url)
    auth = authenticator(silent_url, cache)
    start = time.perf_counter()
    result = auth.authenticate(bearer(sign(KEY_1, "k1")))
    assert time.perf_counter() - start < 0.05
    assert result.error is not None
    assert "not available" in result.error.detail
    await until(lambda: cache.fetch_error >= 1, within=3.0)
    assert cache.keys(silent_url) is None


async def test_periodic_refresh(
    http_server: Server, cache_factory: Callable[..., JwksCache]
) -> None:
    """With a short refresh_interval the keys are refetched on their own."""
    cache = await started(
        cache_factory(refresh_interval=0.2, min_refresh_interval=0.1), http_server.url
    )
    await until(lambda: cache.fetch_ok >= 3, within=3.0)
    assert http_server.served.count() >= 3


async def test_close_stops_fetching(
    http_server: Server, cache_factory: Callable[..., JwksCache]
) -> None:
    """After close() no more requests reach the server."""
    cache = await started(
        cache_factory(refresh_interval=0.1, min_refresh_interval=0.05), http_server.url
    )
    await until(lambda: http_server.served.count() >= 1)
    await cache.close()
    count = http_server.served.count()
    await asyncio.sleep(0.3)
    assert http_server.served.count() == count


@dataclass
class Drip:
    """A server that answers every connection one byte per 100 ms, for ever."""

    url: str
    closed: threading.Event


@pytest.fixture
def drip_server() -> Iterator[Drip]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    closed = threading.Event()
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        payload = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: " + b"a" * 10_000
        try:
            for byte in payload:
                if stop.is_set():
                    return
                conn.sendall(bytes([byte]))
                time.sleep(0.1)
        except OSError:  # the client shut the connection
            closed.set()
        finally:
            conn.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield Drip(f"http://127.0.0.1:{listener.getsockname()[1]}/jwks.json", closed)
    finally:
        stop.set()
        thread.join(5)
        listener.close()


async def test_slow_drip_server_is_cut_at_the_deadline(
    drip_server: Drip, cache_factory: Callable[..., JwksCache]
) -> None:
    """A server dripping a byte per 100 ms: the fetch fails at its deadline and the
    connection is shut, so no thread stays reading it."""
    # a 2 s deadline: far longer than one byte's wait, so only a total deadline cuts it
    cache = await started(cache_factory(fetch_timeout=2.0), drip_server.url)
    await until(lambda: cache.fetch_error >= 1, within=8.0)
    await until(drip_server.closed.is_set, within=8.0)
    assert cache.keys(drip_server.url) is None


async def test_rule_timeout_is_the_fetch_deadline(
    drip_server: Drip, cache_factory: Callable[..., JwksCache]
) -> None:
    """A rule's ``timeout`` (300ms) is its URI's fetch deadline, not the 60 s default."""
    cache = await started(cache_factory(fetch_timeout=60.0))
    doc = {
        "apiVersion": "extauthz.io/v1",
        "kind": "Tenant",
        "metadata": {"name": "acme"},
        "spec": {"jwtRules": [{"issuer": ISS, "jwksUri": drip_server.url, "timeout": "300ms"}]},
    }
    (document,) = load_documents(yaml.safe_dump(doc), "tenant.yaml")
    auth = Authenticator(parse_jwt_rules(document, ("spec", "jwtRules")), cache)
    assert auth.jwks_timeouts == {drip_server.url: 0.3}
    cache.track(auth.jwks_timeouts)
    await until(lambda: cache.fetch_error >= 1, within=5.0)
    await until(drip_server.closed.is_set, within=5.0)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "169.254.169.254", "10.1.2.3"])
async def test_private_addresses_are_refused_by_default(
    host: str, http_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Without allow_private a jwksUri resolving to loopback, link-local or private
    addresses is never connected to: an error is counted and logged, no keys."""
    caplog.set_level(logging.WARNING, logger="extauthz.authn")
    url = http_server.url.replace("127.0.0.1", host)
    cache = JwksCache(fetch_timeout=2.0)
    try:
        await started(cache, url)
        await until(lambda: cache.fetch_error >= 1)
    finally:
        await cache.close()
    assert cache.keys(url) is None
    assert http_server.served.count() == 0
    (record,) = [r for r in caplog.records if r.getMessage() == "jwks fetch failed"][:1]
    assert "non-public address" in record.__dict__["error"]


async def test_allow_private_fetches_loopback(http_server: Server) -> None:
    """With allow_private the same loopback jwksUri is fetched."""
    cache = JwksCache(allow_private=True)
    try:
        await started(cache, http_server.url)
        await until(lambda: cache.keys(http_server.url) is not None)
    finally:
        await cache.close()


async def test_uris_are_logged_without_credentials(
    http_server: Server, cache_factory: Callable[..., JwksCache], caplog: pytest.LogCaptureFixture
) -> None:
    """userinfo and the query of a jwksUri never reach a log line."""
    caplog.set_level(logging.INFO, logger="extauthz.authn")
    url = http_server.url.replace("http://", "http://user:hunter2@") + "?sig=s3cret"
    cache = await started(cache_factory(), url)
    await until(lambda: cache.keys(url) is not None)
    logged = [str(r.__dict__.get("jwks_uri")) for r in caplog.records]
    assert logged
    assert not any("hunter2" in u or "s3cret" in u or "user" in u for u in logged)
    assert f"{http_server.url}?..." in logged


async def test_untracked_when_no_tenant_uses_it(
    http_server: Server, cache_factory: Callable[..., JwksCache]
) -> None:
    """A registry whose tenants go stops fetching their jwksUri and forgets its keys."""
    from extauthz.registry import Registry
    from extauthz.sources import TenantSource

    cache = await started(cache_factory(refresh_interval=0.1, min_refresh_interval=0.05))
    doc = {
        "apiVersion": "extauthz.io/v1",
        "kind": "Tenant",
        "metadata": {"name": "acme"},
        "spec": {
            "match": {"hosts": ["a.test"]},
            "jwtRules": [{"issuer": ISS, "jwksUri": http_server.url}],
        },
    }
    registry = Registry(cache)
    documents = tuple(load_documents(yaml.safe_dump(doc), "t.yaml"))
    registry.replace_all({"acme": TenantSource("acme", "1", documents)})
    await until(lambda: cache.keys(http_server.url) is not None)
    registry.replace_all({})
    assert cache.tracked == frozenset()
    assert cache.keys(http_server.url) is None
    count = http_server.served.count()
    await asyncio.sleep(0.3)
    assert http_server.served.count() == count


async def test_unknown_kid_refreshes_even_with_kidless_keys(
    http_server: Server, cache_factory: Callable[..., JwksCache]
) -> None:
    """A token with a new kid triggers a refetch even when the set has a key without kid."""
    kidless = {**ECAlgorithm.to_jwk(KEY_1.public_key(), as_dict=True)}
    http_server.served.body = json.dumps({"keys": [kidless]}).encode()
    cache = await started(cache_factory(min_refresh_interval=0.1), http_server.url)
    auth = authenticator(http_server.url, cache)
    await until(lambda: cache.keys(http_server.url) is not None)
    http_server.served.body = jwks((KEY_2, "k2"))
    token = sign(KEY_2, "k2")
    assert auth.authenticate(bearer(token)).error is not None
    await until(lambda: "k2" in (cache.keys(http_server.url) or {}))
    assert auth.authenticate(bearer(token)).request_principal == f"{ISS}/alice"
