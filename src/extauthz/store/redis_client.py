"""Redis connection URLs: standalone, TLS, unix socket, Sentinel and Cluster, one parser.

``redis://`` / ``rediss://`` (TLS) / ``unix://`` are handed to redis-py as they are, with
an ACL user and password in the userinfo (``redis://user:pass@host:6379/0``). Two schemes
of our own select the topology:

- ``redis+sentinel://[user:pass@]host:26379,host2:26379/SERVICE[/DB]`` (``rediss+sentinel``
  for TLS): ask the Sentinels for the master of SERVICE and follow failovers.
  ``?sentinel_password=...`` (and ``sentinel_username``) authenticate to the Sentinels.
- ``redis+cluster://[user:pass@]host:port[,host:port...]`` (``rediss+cluster`` for TLS):
  a Redis Cluster, discovered from any of the given nodes.

With TLS, the ``ssl_*`` query parameters redis-py takes in a ``rediss://`` URL
(``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ...) apply to
every connection of the Sentinel and Cluster schemes too, the Sentinels' included.

``?prefix=NAME`` (any scheme) puts the keys under ``NAME:`` instead of ``extauthz:``, so
several environments can share one Redis. The client always speaks RESP through hiredis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.asyncio.sentinel import Sentinel

__all__ = [
    "DEFAULT_PREFIX",
    "Client",
    "RedisTarget",
    "connect",
    "display_target",
    "parse_url",
    "redact_url",
]

DEFAULT_PREFIX: Final = "extauthz"
Client = Redis | RedisCluster

# Liveness of idle connections: keepalive on the socket, a PING on the subscriber when it
# has been quiet this long, and bounded waits so a hung Redis becomes an error we retry.
CONNECTION_DEFAULTS: Final[dict[str, Any]] = {
    "socket_connect_timeout": 5.0,
    "socket_timeout": 30.0,
    "socket_keepalive": True,
    "health_check_interval": 10,
}
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where the tenant keys live, resolved from a URL."""

    mode: str  # "standalone" | "sentinel" | "cluster"
    url: str  # what redis-py is given (our query parameters removed)
    prefix: str = DEFAULT_PREFIX
    nodes: tuple[tuple[str, int], ...] = ()  # sentinels, or cluster seed nodes
    service: str = ""  # sentinel master name
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_options: dict[str, str] = field(default_factory=dict)  # ssl_* (sentinel, cluster)
    sentinel_auth: dict[str, str] = field(default_factory=dict)

    @property
    def redacted(self) -> str:
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """The URL with its passwords masked (userinfo and ``?...password=``), for logs and messages."""
    url = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)
    return re.sub(r"([?&][^=&#]*password=)[^&#]*", r"\1***", url)


def parse_url(url: str) -> RedisTarget:
    """Resolve a store URL. Raises ValueError naming what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    prefix = query.pop("prefix", DEFAULT_PREFIX)
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"prefix {prefix!r} must be 1-64 of [A-Za-z0-9_.-]")
    if scheme in ("redis", "rediss", "unix"):
        clean = urlunsplit(parts._replace(query=urlencode(query)))
        return RedisTarget("standalone", clean, prefix)
    if scheme not in ("redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster"):
        raise ValueError(
            f"unsupported scheme {parts.scheme!r}: use redis://, rediss://, unix://, "
            "redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://"
        )
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = tuple(_hostport(h, 26379 if "sentinel" in scheme else 6379) for h in hosts.split(","))
    tls = scheme.startswith("rediss")
    path = [p for p in parts.path.split("/") if p]
    auth: dict[str, str] = {
        k: query.pop(k) for k in ("sentinel_username", "sentinel_password") if k in query
    }
    tls_options = {k: v for k, v in query.items() if k.startswith("ssl_")}
    if tls_options and not tls:
        raise ValueError(f"{', '.join(tls_options)}: only with rediss+sentinel/rediss+cluster")
    clean = urlunsplit(parts._replace(query=urlencode(query)))
    common: dict[str, Any] = {
        "url": clean,
        "prefix": prefix,
        "nodes": nodes,
        "username": unquote(username) or None,
        "password": unquote(password) or None,
        "tls": tls,
        "tls_options": tls_options,
    }
    if "cluster" in scheme:
        if path:
            raise ValueError("a Redis Cluster has only database 0; drop the path")
        return RedisTarget("cluster", **common)
    if not path:
        raise ValueError("redis+sentinel:// needs the master name: .../SERVICE[/DB]")
    db = int(path[1]) if len(path) > 1 and path[1].isdigit() else 0
    return RedisTarget("sentinel", service=path[0], db=db, sentinel_auth=auth, **common)


def _hostport(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def connect(target: RedisTarget, **overrides: Any) -> Client:
    """A client for ``target`` (not yet connected: redis-py connects on first use)."""
    kwargs = {**CONNECTION_DEFAULTS, **overrides}
    if target.mode == "standalone":
        if target.url.startswith("unix:"):
            kwargs.pop("socket_keepalive", None)
        return Redis.from_url(target.url, **kwargs)
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    tls_options = {
        k: URL_QUERY_ARGUMENT_PARSERS.get(k, str)(v) for k, v in target.tls_options.items()
    }
    kwargs.update(tls_options)
    if target.mode == "cluster":
        kwargs.pop("health_check_interval", None)
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
            ssl=target.tls,
            **auth,
            **kwargs,
        )
    sentinel_kwargs: dict[str, Any] = {
        "password": target.sentinel_auth.get("sentinel_password"),
        "username": target.sentinel_auth.get("sentinel_username"),
        "ssl": target.tls,
        **tls_options,
        "socket_connect_timeout": kwargs["socket_connect_timeout"],
        "socket_timeout": kwargs["socket_connect_timeout"],
    }
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.nodes), sentinel_kwargs=sentinel_kwargs, ssl=target.tls, **auth, **kwargs
    )
    client: Redis = sentinel.master_for(target.service, db=target.db, redis_class=_SentinelMaster)
    return client


class _SentinelMaster(Redis):
    """The master of a Sentinel service. Closing it also closes the connections to the
    Sentinels, which redis-py leaves to the caller of ``Sentinel.master_for``."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            await self.connection_pool.sentinel_manager.aclose()  # type: ignore[attr-defined]


def display_target(target: RedisTarget) -> str:
    """A short description for logs (no password)."""
    if target.mode == "standalone":
        return target.redacted
    hosts = ",".join(f"{h}:{p}" for h, p in target.nodes)
    user = f"{quote(target.username)}@" if target.username else ""
    service = f"/{target.service}" if target.service else ""
    return f"{target.mode}:{user}{hosts}{service}"
