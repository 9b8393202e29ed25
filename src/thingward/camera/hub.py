"""Live delivery: each open page of a person holds a subscription; a notification goes to theirs only.

Bounded on every side: a subscription's queue keeps the newest `queue_size` items (a page that does not
read loses the oldest, and the count is kept), a person may hold `max_per_person` streams, the hub at
most `max_streams`. Publishing is thread-safe (the analysis runs in a worker thread): items are handed to
each subscriber's own event loop. `close` ends every stream, so a server can stop without waiting on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NotificationHub", "Subscription", "TooManyStreamsError"]


class TooManyStreamsError(Exception):
    """A person (or the whole server) holds as many live streams as allowed."""


@dataclass(eq=False)
class Subscription:
    user_id: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[dict[str, Any] | None]
    dropped: int = 0
    closed: bool = field(default=False)

    def _put(self, item: dict[str, Any] | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # keep the newest: a page that lags loses the oldest
            self.dropped += 1
        self.queue.put_nowait(item)

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next item, or raises TimeoutError after `timeout` s; None means the hub closed this stream."""
        return await asyncio.wait_for(self.queue.get(), timeout)


class NotificationHub:
    def __init__(self, queue_size: int = 64, max_per_person: int = 8, max_streams: int = 500) -> None:
        self.queue_size = queue_size
        self.max_per_person = max_per_person
        self.max_streams = max_streams
        self._lock = threading.Lock()
        self._subscriptions: dict[int, list[Subscription]] = {}
        self._closed = False
        self.delivered = 0

    def subscribe(self, user_id: int) -> Subscription:
        """A subscription on the running loop; TooManyStreamsError past the limits."""
        subscription = Subscription(user_id, asyncio.get_running_loop(), asyncio.Queue(self.queue_size))
        with self._lock:
            if self._closed:
                raise TooManyStreamsError("the server is stopping: reconnect in a moment")
            mine = self._subscriptions.setdefault(user_id, [])
            if len(mine) >= self.max_per_person:
                raise TooManyStreamsError(
                    f"{len(mine)} live notification streams are open for this account already: close a page"
                )
            if self.stream_count() >= self.max_streams:
                raise TooManyStreamsError("the server holds as many live notification streams as it allows")
            mine.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            mine = self._subscriptions.get(subscription.user_id, [])
            if subscription in mine:
                mine.remove(subscription)
            if not mine:
                self._subscriptions.pop(subscription.user_id, None)

    def stream_count(self) -> int:
        return sum(len(subs) for subs in self._subscriptions.values())

    def publish(self, user_id: int, item: dict[str, Any]) -> int:
        """Hand `item` to every open stream of `user_id`; returns how many. Safe from any thread."""
        with self._lock:
            targets = list(self._subscriptions.get(user_id, []))
        for subscription in targets:
            try:
                subscription.loop.call_soon_threadsafe(subscription._put, item)
            except RuntimeError:  # that loop is closed: its server stopped
                self.unsubscribe(subscription)
        self.delivered += len(targets)
        return len(targets)

    def close(self) -> None:
        """End every stream (each gets None)."""
        with self._lock:
            self._closed = True
            everyone = [s for subs in self._subscriptions.values() for s in subs]
        for subscription in everyone:
            subscription.closed = True
            with contextlib.suppress(RuntimeError):  # that loop is closed already
                subscription.loop.call_soon_threadsafe(subscription._put, None)
