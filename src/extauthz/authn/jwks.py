"""Remote JWKS, fetched in the background and held in memory.

One task per tracked ``jwksUri``: fetch, then wait for the periodic refresh or for a refresh
request (an unknown ``kid``), never fetching a URI more often than ``min_refresh_interval``.
A failed first fetch is retried with backoff (1 s doubling, capped at
``min_refresh_interval``). A failed fetch keeps the last good keys. The hot path only reads
``keys()``, a dict lookup; ``request_refresh()`` sets a flag and wakes the task, nothing more.

Fetching uses urllib in a worker thread: HTTPS verified against the system CAs or
``ca_file``, no redirects, a socket timeout plus an overall deadline, bodies over 1 MiB and
anything that is not a usable JWKS rejected.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any, Final

from extauthz.authn.keys import MAX_JWKS_BYTES, JwksError, Key, parse_jwks

__all__ = ["JwksCache", "JwksFetchError"]

log = logging.getLogger("extauthz.authn")

_CHUNK: Final = 64 * 1024
_FIRST_RETRY: Final = 1.0


class JwksFetchError(Exception):
    """A fetch failed; the message is safe to log (no key material)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        raise JwksFetchError("JWKS endpoint redirected; redirects are not followed")


class JwksCache:
    """Keys per jwksUri. ``start()`` before ``track()``; ``close()`` when done."""

    def __init__(
        self,
        *,
        fetch_timeout: float = 5.0,
        refresh_interval: float = 600.0,
        min_refresh_interval: float = 30.0,
        ca_file: str | None = None,
    ) -> None:
        self.fetch_timeout = fetch_timeout
        self.refresh_interval = refresh_interval
        self.min_refresh_interval = min_refresh_interval
        self.fetch_ok = 0
        self.fetch_error = 0
        self._ssl = ssl.create_default_context(cafile=ca_file)
        self._keys: dict[str, Mapping[str, Key]] = {}
        self._timeouts: dict[str, float] = {}
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
        """Start fetching the URIs not tracked yet. ``timeouts`` overrides fetch_timeout."""
        for uri in uris:
            if uri in self._timeouts:
                continue
            self._timeouts[uri] = (timeouts or {}).get(uri, self.fetch_timeout)
            if self._loop is not None and not self._closed:
                self._spawn(uri)

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
        self._tasks[uri] = self._loop.create_task(self._run(uri), name=f"jwks {uri}")

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
        timeout = self._timeouts[uri]
        try:
            body = await asyncio.wait_for(
                asyncio.to_thread(self._fetch_sync, uri, timeout), timeout=timeout * 2 + 1
            )
            keys = parse_jwks(body)
        except (JwksFetchError, JwksError, TimeoutError, OSError, ValueError) as exc:
            self.fetch_error += 1
            log.warning(
                "jwks fetch failed",
                extra={
                    "jwks_uri": uri,
                    "error": _describe(exc),
                    "keeping_last_good": uri in self._keys,
                },
            )
            return False
        self._keys[uri] = keys
        self.fetch_ok += 1
        log.info("jwks fetched", extra={"jwks_uri": uri, "keys": len(keys)})
        return True

    def _fetch_sync(self, uri: str, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout * 2
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self._ssl), _NoRedirect()
        )
        request = urllib.request.Request(uri, headers={"Accept": "application/json"})  # noqa: S310 - scheme checked by rules
        try:
            response = opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the connection
            raise JwksFetchError(f"HTTP status {exc.code}") from None
        with response:
            status = getattr(response, "status", 200)
            if status != 200:
                raise JwksFetchError(f"HTTP status {status}")
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > MAX_JWKS_BYTES:
                raise JwksFetchError(f"body larger than {MAX_JWKS_BYTES} bytes")
            chunks: list[bytes] = []
            size = 0
            while True:
                if time.monotonic() > deadline:
                    raise JwksFetchError("fetch took too long")
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
