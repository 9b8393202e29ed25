"""A batched writer: the broker hands it messages on the event loop; a thread stores them in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from thingward.broker.base import InboundMessage
from thingward.ingest.store import StoredMessage, classify, store_messages
from thingward.registry.db import Database

logger = logging.getLogger(__name__)

MAX_BATCH = 500
MAX_PENDING = 100_000


class MessageWriter:
    """Collects classified messages and flushes them every `interval` seconds or `MAX_BATCH` messages."""

    def __init__(self, db: Database, retention_per_thing: int, interval: float = 0.1) -> None:
        self._db = db
        self._retention = retention_per_thing
        self._interval = interval
        self._pending: list[StoredMessage] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.stored = 0
        self.dropped = 0

    def __call__(self, message: InboundMessage) -> None:
        """The broker's MessageSink: cheap, never blocks the loop."""
        stored = classify(message)
        if stored is None:
            return
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                logger.warning("ingest queue full (%d messages); dropped %d so far", MAX_PENDING, self.dropped)
            return
        self._pending.append(stored)
        if len(self._pending) >= MAX_BATCH:
            self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="thingward-ingest-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                self.stored += await asyncio.to_thread(self._write, batch)
            except Exception:
                logger.exception("storing %d messages failed; they are lost", len(batch))

    def _write(self, batch: list[StoredMessage]) -> int:
        with self._db.session() as session:
            return store_messages(session, batch, self._retention)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._interval)
            self._wakeup.clear()
            await self.flush()
