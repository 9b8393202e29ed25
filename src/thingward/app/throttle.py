"""A sliding-window limit on failures per client address, for endpoints that an attacker would guess at."""

from __future__ import annotations

import time
from collections import deque


class FailureThrottle:
    """Allows at most `max_failures` failures per key in `window` seconds; tracks at most `max_keys` keys."""

    def __init__(self, max_failures: int = 10, window: float = 600.0, max_keys: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def blocked(self, key: str) -> bool:
        return len(self._recent(key, time.monotonic())) >= self.max_failures

    def record_failure(self, key: str) -> None:
        now = time.monotonic()
        if key not in self._failures and len(self._failures) >= self.max_keys:
            # Bounded memory: forget the key whose last failure is oldest.
            oldest = min(self._failures, key=lambda k: self._failures[k][-1] if self._failures[k] else 0.0)
            del self._failures[oldest]
        times = self._recent(key, now)
        times.append(now)
        self._failures[key] = times
