"""The composition root: the one place that picks the concrete store, cache and observer.

The observer of every Check is the telemetry (metrics, spans) followed by the decision log,
unless a caller passes its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from extauthz.answer import Observer, Observers
from extauthz.authn import JwksCache
from extauthz.decisionlog import DecisionLog
from extauthz.pipeline import CheckPipeline
from extauthz.ratelimit import Limiter
from extauthz.registry import Registry
from extauthz.servicer import AuthorizationServicer
from extauthz.settings import Settings
from extauthz.store.base import Store
from extauthz.store.files import FileStore
from extauthz.telemetry import Telemetry

__all__ = ["Components", "build", "make_store"]


@dataclass(frozen=True, slots=True)
class Components:
    settings: Settings
    jwks: JwksCache
    registry: Registry
    store: Store
    servicer: AuthorizationServicer
    telemetry: Telemetry = field(default_factory=Telemetry)
    limiter: Limiter = field(default_factory=Limiter)


def make_store(settings: Settings) -> Store:
    if settings.redis_url:
        from extauthz.store.redis import RedisStore  # imported only when used

        store: Store = RedisStore.from_url(settings.redis_url)
        return store
    return FileStore(settings.policies, interval=settings.poll_interval)


def make_observer(telemetry: Telemetry, decisions: DecisionLog) -> Observer:
    return Observers(telemetry.observer, decisions.record)


def build(
    settings: Settings, observer: Observer | None = None, *, telemetry: Telemetry | None = None
) -> Components:
    """Everything ``Server`` runs. Without ``telemetry``, it is built from the settings and
    the ``OTEL_*`` variables; an ``observer`` replaces telemetry and decision log as observer."""
    jwks = JwksCache(ca_file=settings.jwks_ca_file, allow_private=settings.jwks_allow_private)
    registry = Registry(jwks)
    limiter = Limiter()
    pipeline = CheckPipeline(settings.check_options(), limiter=limiter)
    if telemetry is None:
        from extauthz.telemetry_env import telemetry_from_settings

        telemetry = telemetry_from_settings(settings)
    telemetry.bind(registry, jwks)
    telemetry.bind_ratelimits(limiter.stats)
    if observer is None:
        decisions = DecisionLog(
            settings.decision_log, sample=settings.decision_log_sample, mask=settings.mask_headers
        )
        observer = make_observer(telemetry, decisions)
    servicer = AuthorizationServicer(registry, pipeline, observer)
    return Components(settings, jwks, registry, make_store(settings), servicer, telemetry, limiter)
