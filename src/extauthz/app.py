"""The composition root: the one place that picks the concrete store, cache and observer."""

from __future__ import annotations

from dataclasses import dataclass

from extauthz.authn import JwksCache
from extauthz.pipeline import CheckPipeline
from extauthz.registry import Registry
from extauthz.servicer import AuthorizationServicer, Observer
from extauthz.settings import Settings
from extauthz.store.base import Store
from extauthz.store.files import FileStore

__all__ = ["Components", "build", "make_store"]


@dataclass(frozen=True, slots=True)
class Components:
    settings: Settings
    jwks: JwksCache
    registry: Registry
    store: Store
    servicer: AuthorizationServicer


def make_store(settings: Settings) -> Store:
    if settings.redis_url:
        from extauthz.store.redis import RedisStore  # imported only when used

        store: Store = RedisStore.from_url(settings.redis_url)
        return store
    return FileStore(settings.policies, interval=settings.poll_interval)


def build(settings: Settings, observer: Observer | None = None) -> Components:
    jwks = JwksCache(ca_file=settings.jwks_ca_file)
    registry = Registry(jwks)
    pipeline = CheckPipeline(settings.check_options())
    servicer = (
        AuthorizationServicer(registry, pipeline, observer)
        if observer is not None
        else AuthorizationServicer(registry, pipeline)
    )
    return Components(settings, jwks, registry, make_store(settings), servicer)
