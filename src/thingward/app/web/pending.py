"""Sign-ins waiting for their second step (a TOTP, recovery or mailed code), held in this process.

The accounts service checks the password and the code in one call, so between the two pages the web door
keeps what was typed under a random 256-bit id (the browser holds only the id, in a `__Host-` cookie),
for a few minutes and a few tries at most, and forgets it when the sign-in ends either way. A restart
forgets every pending sign-in: the person types the password again.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

PENDING_SECONDS = 600.0
MAX_PENDING = 10_000
MAX_TRIES = 5


@dataclass
class PendingSignIn:
    email: str
    password: str
    kind: str  # "totp" (app or recovery code) or "email" (a mailed code)
    created: float
    tries: int = 0


class PendingSignIns:
    def __init__(self, ttl: float = PENDING_SECONDS, capacity: int = MAX_PENDING) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._items: OrderedDict[str, PendingSignIn] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while self._items:
            key, first = next(iter(self._items.items()))
            if now - first.created < self._ttl and len(self._items) <= self._capacity:
                return
            del self._items[key]

    def add(self, email: str, password: str, kind: str) -> str:
        key = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._items[key] = PendingSignIn(email, password, kind, now)
            self._expire(now)
        return key

    def take_try(self, key: str) -> PendingSignIn | None:
        """The pending sign-in for one more try, or None (unknown, expired, or out of tries)."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            found = self._items.get(key) if key else None
            if found is None:
                return None
            found.tries += 1
            if found.tries > MAX_TRIES:
                del self._items[key]
                return None
            return found

    def peek(self, key: str) -> PendingSignIn | None:
        with self._lock:
            self._expire(time.monotonic())
            return self._items.get(key) if key else None

    def drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)
