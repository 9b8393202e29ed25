"""A sliding-window budget of attempts per client address, for endpoints an attacker would guess at.

An attempt is counted when it starts, not when it fails, so requests sent in parallel cannot all slip
past the check before any failure is recorded; a success gives its attempt back.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque


class FailureThrottle:
    """At most `max_failures` failed or pending attempts per key in `window` seconds; at most `max_keys` keys."""

    def __init__(self, max_failures: int = 10, window: float = 600.0, max_keys: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_keys = max_keys
        self._attempts: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._attempts.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def try_acquire(self, key: str) -> float | None:
        """Reserve an attempt; returns its ticket, or None when the key has used its budget."""
        with self._lock:
            now = time.monotonic()
            times = self._recent(key, now)
            if len(times) >= self.max_failures:
                return None
            if key not in self._attempts and len(self._attempts) >= self.max_keys:
                # Bounded memory: forget the key whose newest attempt is oldest.
                oldest = min(self._attempts, key=lambda k: self._attempts[k][-1] if self._attempts[k] else 0.0)
                del self._attempts[oldest]
            times.append(now)
            self._attempts[key] = times
            return now

    def release(self, key: str, ticket: float) -> None:
        """The attempt succeeded: it does not count against the key."""
        with self._lock:
            times = self._attempts.get(key)
            if times is not None:
                with contextlib.suppress(ValueError):
                    times.remove(ticket)
