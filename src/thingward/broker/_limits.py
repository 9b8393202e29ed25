"""Per-identity rate limits for the data plane: connect flapping (sliding minute) and publish rate (token bucket).

Pure and clock-injected so they are tested without sleeping; the broker adapter owns one of each.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["ConnectRateLimiter", "PublishRateLimiter"]

Clock = Callable[[], float]


class ConnectRateLimiter:
    """Refuses an identity that tried to connect `limit` times or more in the last `window` seconds.

    Every attempt counts, refused ones included: a device stuck in a reconnect loop stays refused until
    it backs off for a window. Memory is bounded by `limit` timestamps per identity seen in the window.
    """

    def __init__(self, limit: int, window: float = 60.0, clock: Clock = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("max_connects_per_minute must be at least 1")
        self._limit = limit
        self._window = window
        self._clock = clock
        self._attempts: dict[str, deque[float]] = {}
        self._last_sweep = clock()

    def attempt(self, identity: str) -> bool:
        """Record a connect attempt by `identity`; True if it is within the limit."""
        now = self._clock()
        self._sweep(now)
        attempts = self._attempts.get(identity)
        if attempts is None:
            attempts = self._attempts[identity] = deque(maxlen=self._limit)
        horizon = now - self._window
        while attempts and attempts[0] <= horizon:
            attempts.popleft()
        allowed = len(attempts) < self._limit
        attempts.append(now)
        return allowed

    def _sweep(self, now: float) -> None:
        # Forget identities with no attempt in the window, so memory follows active devices only.
        if now - self._last_sweep < self._window:
            return
        self._last_sweep = now
        horizon = now - self._window
        stale = [key for key, attempts in self._attempts.items() if not attempts or attempts[-1] <= horizon]
        for key in stale:
            del self._attempts[key]


class PublishRateLimiter:
    """A token bucket per identity: `rate` tokens a second, holding at most `burst` (default: one second's worth)."""

    def __init__(self, rate: float, burst: float | None = None, clock: Clock = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("max_publish_per_second must be positive")
        self._rate = float(rate)
        self._burst = float(burst if burst is not None else max(rate, 1.0))
        self._clock = clock
        # identity -> [tokens, time of last refill]; lists, not objects: this is on every publish.
        self._buckets: dict[str, list[float]] = {}
        self._last_sweep = clock()

    def allow(self, identity: str) -> bool:
        """Take one token for `identity`; False if its bucket is empty."""
        now = self._clock()
        bucket = self._buckets.get(identity)
        if bucket is None:
            self._sweep(now)
            self._buckets[identity] = [self._burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * self._rate
        if tokens > self._burst:
            tokens = self._burst
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _sweep(self, now: float) -> None:
        # A bucket that has refilled completely carries no information: drop it.
        if now - self._last_sweep < 60.0:
            return
        self._last_sweep = now
        full_after = self._burst / self._rate
        stale = [key for key, (_, last) in self._buckets.items() if now - last >= full_after]
        for key in stale:
            del self._buckets[key]
