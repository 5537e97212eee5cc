"""Remote JWKS, fetched in the background and held in memory.

One task per tracked ``jwksUri``: fetch, then wait for the periodic refresh or for a refresh
request (an unknown ``kid``), never fetching a URI more often than ``min_refresh_interval``.
A failed first fetch is retried with backoff (1 s doubling, capped at
``min_refresh_interval``). A failed fetch keeps the last good keys. The hot path only reads
``keys()``, a dict lookup; ``request_refresh()`` sets a flag and wakes the task, nothing more.

Fetching runs in a worker thread with http.client: HTTPS verified against the system CAs or
``ca_file``, no redirects, no proxies, bodies over 1 MiB and anything that is not a usable
JWKS rejected. Each fetch has one total deadline, the rule's ``timeout``: a watchdog shuts
the socket down when it passes, so a server that drips a byte at a time cannot hold the
thread. The host is resolved and every address checked before connecting (and only the
checked addresses are connected to): loopback, private, link-local (cloud metadata),
shared, reserved and multicast addresses are refused unless ``allow_private``. URIs are
logged without userinfo or query (``safe_uri``). Each URI is counted by the tenants using it
(``acquire``/``release``, the cost of one tenant's URIs): the last release stops fetching it and
forgets its keys. ``track`` (held until ``retain`` leaves it out) is the uncounted form.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import urlsplit

from extauthz.authn.keys import MAX_JWKS_BYTES, JwksError, Key, parse_jwks

__all__ = ["JwksCache", "JwksFetchError", "safe_uri"]

log = logging.getLogger("extauthz.authn")

_CHUNK: Final = 64 * 1024
_FIRST_RETRY: Final = 1.0


class JwksFetchError(Exception):
    """A fetch failed; the message is safe to log (no key material)."""


def safe_uri(uri: str) -> str:
    """``uri`` for a log line: no userinfo, no query or fragment (either may hold a secret)."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URI)"
    host = f"[{host}]" if ":" in host else host
    query = "?..." if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{query}"


class JwksCache:
    """Keys per jwksUri. ``start()`` before ``track()``; ``close()`` when done."""

    def __init__(
        self,
        *,
        fetch_timeout: float = 5.0,
        refresh_interval: float = 600.0,
        min_refresh_interval: float = 30.0,
        ca_file: str | None = None,
        allow_private: bool = False,
    ) -> None:
        self.fetch_timeout = fetch_timeout
        self.allow_private = allow_private
        self.refresh_interval = refresh_interval
        self.min_refresh_interval = min_refresh_interval
        self.fetch_ok = 0
        self.fetch_error = 0
        self._ssl = ssl.create_default_context(cafile=ca_file)
        self._keys: dict[str, Mapping[str, Key]] = {}
        self._timeouts: dict[str, float] = {}
        self._users: dict[str, int] = {}  # URI -> how many acquire()s hold it
        self._wake: dict[str, asyncio.Event] = {}
        self._pending: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def start(self) -> None:
        """Bind to the running loop and start fetching every URI tracked so far."""
        self._loop = asyncio.get_running_loop()
        for uri in self._timeouts:
            self._spawn(uri)

    async def close(self) -> None:
        """Stop all fetch tasks and wait for them."""
        self._closed = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def track(self, uris: Iterable[str], timeouts: Mapping[str, float] | None = None) -> None:
        """Start fetching the URIs not tracked yet. A mapping of URI to seconds (a rule's
        ``timeout``) as ``uris`` or ``timeouts`` sets each fetch's deadline (else
        fetch_timeout); a tracked URI takes a new timeout from its next fetch on."""
        if timeouts is None and isinstance(uris, Mapping):
            timeouts = uris
        for uri in uris:
            new = uri not in self._timeouts
            self._timeouts[uri] = (timeouts or {}).get(uri, self.fetch_timeout)
            if new and self._loop is not None and not self._closed:
                self._spawn(uri)

    def acquire(self, timeouts: Mapping[str, float]) -> None:
        """One more user (a tenant) of each URI, with its fetch deadline: a URI not tracked
        yet starts being fetched; a tracked one takes the new timeout from its next fetch."""
        if timeouts:
            self.track(timeouts)
            for uri in timeouts:
                self._users[uri] = self._users.get(uri, 0) + 1

    def release(self, uris: Iterable[str]) -> None:
        """One user fewer of each URI (each one acquired before); a URI nobody uses any more
        stops being fetched and its keys are forgotten."""
        for uri in uris:
            left = self._users.get(uri, 0) - 1
            if left > 0:
                self._users[uri] = left
            else:
                self._users.pop(uri, None)
                self._untrack(uri)

    def retain(self, uris: Iterable[str]) -> None:
        """Stop fetching every tracked URI not in ``uris`` and forget its keys."""
        keep = frozenset(uris)
        for uri in [u for u in self._timeouts if u not in keep]:
            self._users.pop(uri, None)
            self._untrack(uri)

    def _untrack(self, uri: str) -> None:
        if self._timeouts.pop(uri, None) is None:
            return
        self._keys.pop(uri, None)
        self._wake.pop(uri, None)
        self._pending.discard(uri)
        task = self._tasks.pop(uri, None)
        if task is not None:
            task.cancel()
        log.info("jwks untracked", extra={"jwks_uri": safe_uri(uri)})

    @property
    def tracked(self) -> frozenset[str]:
        return frozenset(self._timeouts)

    def keys(self, uri: str) -> Mapping[str, Key] | None:
        """The last good keys of ``uri``, or None before its first successful fetch."""
        return self._keys.get(uri)

    def request_refresh(self, uri: str) -> None:
        """Ask for a refetch soon (an unknown kid). Cheap, never blocks, safe from any thread.

        The fetch task honours it no sooner than min_refresh_interval after the last fetch
        of that URI; requests in between are merged into that one fetch.
        """
        if uri in self._pending or uri not in self._wake or self._loop is None:
            return
        self._pending.add(uri)
        try:
            self._loop.call_soon_threadsafe(self._wake[uri].set)
        except RuntimeError:  # loop closed
            self._pending.discard(uri)

    def _spawn(self, uri: str) -> None:
        assert self._loop is not None
        if uri in self._tasks:
            return
        self._wake[uri] = asyncio.Event()
        self._tasks[uri] = self._loop.create_task(self._run(uri), name=f"jwks {safe_uri(uri)}")

    async def _run(self, uri: str) -> None:
        wake = self._wake[uri]
        retry = _FIRST_RETRY
        while True:
            started = time.monotonic()
            ok = await self._fetch_once(uri)
            if ok:
                retry = _FIRST_RETRY
                wait = self.refresh_interval
            else:
                wait = min(retry, self.min_refresh_interval, self.refresh_interval)
                retry *= 2
            try:
                await asyncio.wait_for(wake.wait(), timeout=wait)
            except TimeoutError:
                continue
            # a refresh request: honour it, but not sooner than min_refresh_interval
            remaining = started + self.min_refresh_interval - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
            wake.clear()
            self._pending.discard(uri)

    async def _fetch_once(self, uri: str) -> bool:
        timeout = self._timeouts.get(uri, self.fetch_timeout)
        try:
            # the thread keeps its own deadline; this one only outlives a stuck DNS lookup
            body = await asyncio.wait_for(
                asyncio.to_thread(self._fetch_sync, uri, timeout), timeout=timeout + 1
            )
            keys = parse_jwks(body)
        except (JwksFetchError, JwksError, TimeoutError, OSError, ValueError) as exc:
            self.fetch_error += 1
            log.warning(
                "jwks fetch failed",
                extra={
                    "jwks_uri": safe_uri(uri),
                    "error": _describe(exc),
                    "keeping_last_good": uri in self._keys,
                },
            )
            return False
        self._keys[uri] = keys
        self.fetch_ok += 1
        log.info("jwks fetched", extra={"jwks_uri": safe_uri(uri), "keys": len(keys)})
        return True

    def _fetch_sync(self, uri: str, timeout: float) -> bytes:
        """GET ``uri`` within ``timeout`` seconds in all (connect, TLS, headers, body)."""
        deadline = time.monotonic() + timeout
        parts = urlsplit(uri)
        host, port = parts.hostname or "", parts.port
        if parts.scheme not in ("http", "https") or not host:
            raise JwksFetchError("jwksUri is not an http(s) URL with a host")
        port = port or (443 if parts.scheme == "https" else 80)
        addresses = self._addresses(host, port)
        watchdog = _Watchdog(deadline)
        try:
            sock = _connect(addresses, deadline)
            watchdog.watch(sock)
            if parts.scheme == "https":
                sock = self._ssl.wrap_socket(sock, server_hostname=host)
                watchdog.watch(sock)
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            conn.sock = sock
            try:
                target = parts.path or "/"
                target += f"?{parts.query}" if parts.query else ""
                conn.request("GET", target, headers={"Accept": "application/json"})
                body = _read(conn.getresponse(), watchdog)
            finally:
                conn.close()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if watchdog.fired:
                raise JwksFetchError(f"fetch took longer than {timeout:g}s") from None
            if isinstance(exc, ssl.SSLError | TimeoutError):
                raise
            raise JwksFetchError(f"{type(exc).__name__}: {exc}"[:200]) from None
        finally:
            watchdog.cancel()
            watchdog.close()
        if watchdog.fired:
            raise JwksFetchError(f"fetch took longer than {timeout:g}s")
        return body

    def _addresses(self, host: str, port: int) -> list[tuple[str, int]]:
        """Every address ``host`` resolves to; all must be public unless allow_private."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [(str(info[4][0]), port) for info in infos]
        if not addresses:
            raise JwksFetchError("host did not resolve")
        if not self.allow_private:
            for address, _ in addresses:
                if not _public(address):
                    raise JwksFetchError(
                        f"host resolves to non-public address {address};"
                        " refused (--jwks-allow-private allows it)"
                    )
        return addresses


class _Watchdog:
    """Shuts the watched socket down at the deadline, ending any blocked read or write."""

    def __init__(self, deadline: float) -> None:
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                self._shutdown()

    def cancel(self) -> None:
        self._timer.cancel()

    def close(self) -> None:
        """Close the watched socket (once the fetch is done with it, whatever happened)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            # the plain socket's shutdown: an SSLSocket's would drop its TLS state
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _connect(addresses: list[tuple[str, int]], deadline: float) -> socket.socket:
    error = OSError("no address to connect to")
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("connect")
        try:
            return socket.create_connection(address, timeout=remaining)
        except OSError as exc:
            error = exc
    raise error


def _read(response: http.client.HTTPResponse, watchdog: _Watchdog) -> bytes:
    with response:
        return _read_body(response, watchdog)


def _read_body(response: http.client.HTTPResponse, watchdog: _Watchdog) -> bytes:
    status = response.status
    if status != 200:  # 3xx included: redirects are not followed
        raise JwksFetchError(f"HTTP status {status}")
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > MAX_JWKS_BYTES:
        raise JwksFetchError(f"body larger than {MAX_JWKS_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    while not watchdog.fired:
        chunk = response.read(_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_JWKS_BYTES:
            raise JwksFetchError(f"body larger than {MAX_JWKS_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text[:200]
