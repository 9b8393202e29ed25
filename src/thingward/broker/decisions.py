"""The decisions behind the hooks for clustered brokers: who may connect, publish and subscribe, cached.

A clustered broker (EMQX, VerneMQ, RabbitMQ) asks over HTTP; `app/broker_hooks.py` translates each
broker's request into one of these questions and the answer back. The answer is the policy engine's
(`PolicyEngine.authorize`, the same decision the embedded broker makes), after an identity check the
engine does not make: the thing must have an active certificate that has not expired (a thing whose
certificates are all revoked is denied even if the broker's CRL is stale). Disabled things are not in
the policy world, so the engine denies them everything; a quarantined thing gets what its policies give.

Fail closed, everywhere: an unknown or invalid name, an exception, and a state that has not been
confirmed against the registry for `max_staleness` seconds (the database is down, the watcher died)
all mean deny. Decisions are cached in a bounded LRU with a time to live; `refresh` (called by the
server's registry watcher on any change to policies, groups, things or certificates) empties it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import MappingProxyType

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from thingward.broker.base import Action, Authorizer
from thingward.names import validate_name
from thingward.pki.ca import utcnow
from thingward.registry.models import Certificate, Thing

__all__ = ["HookDecisions", "load_certified_things"]

logger = logging.getLogger(__name__)

_Key = tuple[str, Action, str]


def load_certified_things(session: Session) -> dict[str, dt.datetime]:
    """Each enabled thing with an active certificate, and the latest end of validity among those certificates."""
    rows = session.execute(
        select(Thing.name, func.max(Certificate.not_after))
        .join(Certificate, Certificate.thing_id == Thing.id)
        .where(Certificate.status == "active", Thing.disabled.is_(False))
        .group_by(Thing.name)
    ).all()
    return {name: not_after for name, not_after in rows}


class HookDecisions:
    """Cached allow/deny answers for broker hooks. Thread-safe: handlers may run on a thread pool."""

    def __init__(
        self,
        authorizer: Authorizer,
        certified: Mapping[str, dt.datetime],
        *,
        cache_size: int = 65536,
        ttl: float = 30.0,
        max_staleness: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        if cache_size < 1 or ttl <= 0 or max_staleness <= 0:
            raise ValueError("cache_size, ttl and max_staleness must be positive")
        self._authorizer = authorizer
        self._certified: Mapping[str, dt.datetime] = MappingProxyType(dict(certified))
        self._cache: OrderedDict[_Key, tuple[float, bool]] = OrderedDict()
        self._cache_size = cache_size
        self._ttl = ttl
        self._max_staleness = max_staleness
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._generation = 0
        self._confirmed_at = clock()
        self._stale_reported = False
        # Counters for /metrics (approximate under threads; never used for a decision).
        self.hits = 0
        self.misses = 0
        self.allowed = 0
        self.denied = 0

    @property
    def cached(self) -> int:
        return len(self._cache)

    def refresh(self, certified: Mapping[str, dt.datetime]) -> None:
        """The registry changed: take its certified things, forget every cached decision, count as confirmed."""
        with self._lock:
            self._certified = MappingProxyType(dict(certified))
            self._cache.clear()
            self._generation += 1
            self._confirmed_at = self._clock()
            self._stale_reported = False

    def confirm(self) -> None:
        """The registry was looked at and has not changed: the current state is still the truth."""
        self._confirmed_at = self._clock()
        self._stale_reported = False

    def invalidate(self) -> None:
        """Forget every cached decision (the policy engine's world was replaced)."""
        with self._lock:
            self._cache.clear()
            self._generation += 1

    def is_stale(self) -> bool:
        return self._clock() - self._confirmed_at > self._max_staleness

    def identified(self, thing: str) -> bool:
        """True if `thing` is a valid name of an enabled thing with an unexpired active certificate."""
        try:
            validate_name(thing)
        except Exception:
            return False
        if self.is_stale():
            if not self._stale_reported:  # once per episode, not once per request
                self._stale_reported = True
                logger.error(
                    "broker hooks deny everything: the registry has not been read for over %.0f s", self._max_staleness
                )
            return False
        not_after = self._certified.get(thing)
        return not_after is not None and self._now() < not_after

    def may_connect(self, thing: str, client_id: str) -> bool:
        """May `thing` (the certificate's name) connect with this client id?"""
        return self.may(thing, "connect", client_id)

    def may(self, thing: str, action: Action, topic: str) -> bool:
        """The policy decision for an identified thing; deny on any failure."""
        try:
            allowed = self.identified(thing) and self._cached_decision(thing, action, topic)
        except Exception:
            logger.exception("broker hook decision failed for %r %s; denying", thing, action)
            allowed = False
        if allowed:
            self.allowed += 1
        else:
            self.denied += 1
        return allowed

    def _cached_decision(self, thing: str, action: Action, topic: str) -> bool:
        key: _Key = (thing, action, topic)
        now = self._clock()
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and entry[0] > now:
                self._cache.move_to_end(key)
                self.hits += 1
                return entry[1]
            generation = self._generation
        self.misses += 1
        allowed = bool(self._authorizer.authorize(thing, action, topic))
        with self._lock:
            # A refresh while we decided: the answer may come from the old world, so it is not kept.
            if generation == self._generation:
                self._cache[key] = (now + self._ttl, allowed)
                self._cache.move_to_end(key)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return allowed
