"""The rollout scheduler inside `thingward serve`: status reports in, ticks, job documents out.

Devices learn of their job from a retained message on their own `things/NAME/commands/ota`. Retained
rather than re-published on connect: it works the same on any MQTT broker (the managed Mosquitto too)
without a connect hook, a device gets it the moment it subscribes however late it comes, and each new
document (the next attempt, a cancellation, a clear when the job finished) replaces the last, so a device
never sees a stale job. The embedded broker keeps retained messages in memory, so at start the scheduler
publishes every document that should be held again.

Status reports come from the broker's message sink (on the event loop: parsed there, strictly, and queued,
bounded); the database work runs in a worker thread, once per tick, in one transaction.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from thingward.broker.base import InboundMessage
from thingward.errors import InvalidInputError
from thingward.ota import rollout
from thingward.ota.job_protocol import StatusReport, job_topic, parse_status_report, thing_of_status_topic
from thingward.registry.db import Database

__all__ = ["Publish", "RolloutScheduler"]

logger = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], Awaitable[None]]

TICK_INTERVAL = 1.0  # seconds between ticks when no report arrives (a report wakes the scheduler at once)
MAX_QUEUED_REPORTS = 10_000
# Reports one thing may queue for one tick: a real agent sends a handful per job; a device flooding its
# status topic (the broker allows it many publishes a second) must not make every tick slow for everyone.
MAX_REPORTS_PER_THING_PER_TICK = 20
MIN_TICK_GAP = 0.05  # seconds: a burst of reports is handled in one transaction, not one per report


class RolloutScheduler:
    """Owns the rollout side of the server: call `on_message` from the broker's sink, `run` as a task."""

    def __init__(self, db: Database, interval: float = TICK_INTERVAL) -> None:
        self._db = db
        self.interval = interval
        self._reports: collections.deque[tuple[str, StatusReport]] = collections.deque()
        self._queued_by: collections.Counter[str] = collections.Counter()
        self._wake = asyncio.Event()
        self.refused = 0
        self.dropped = 0
        self.ticks = 0

    def on_message(self, message: InboundMessage) -> None:
        """The broker's sink, on the loop: keep well-formed status reports a thing made about itself."""
        owner = thing_of_status_topic(message.topic)
        if owner is None:
            return
        if owner != message.thing:
            # The broker's policy already refuses this; a looser custom policy must not let one thing speak
            # for another either.
            self.refused += 1
            logger.warning("status report from %r on %r dropped: not its own topic", message.thing, message.topic)
            return
        try:
            report = parse_status_report(message.payload)
        except InvalidInputError as e:
            self.refused += 1
            logger.warning("status report from %r dropped: %s", message.thing, e)
            return
        if self._queued_by[message.thing] >= MAX_REPORTS_PER_THING_PER_TICK:
            self.dropped += 1
            logger.debug(
                "status report from %r dropped: over %d this tick", message.thing, MAX_REPORTS_PER_THING_PER_TICK
            )
            return
        if len(self._reports) >= MAX_QUEUED_REPORTS:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                logger.warning("rollout status queue full (%d); dropped %d so far", MAX_QUEUED_REPORTS, self.dropped)
            return
        self._reports.append((message.thing, report))
        self._queued_by[message.thing] += 1
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _work(self, reports: list[tuple[str, StatusReport]], now: dt.datetime) -> list[rollout.Delivery]:
        with self._db.session() as session:
            for thing, report in reports:
                outcome = rollout.record_status(session, thing, report, now)
                if not outcome.accepted:
                    self.refused += 1
                    logger.warning("status report from %r refused: %s", thing, outcome.reason)
            rollout.run_tick(session, now)
            return rollout.take_deliveries(session)

    def _pending(self) -> list[rollout.Delivery]:
        with self._db.read() as session:
            return rollout.pending_documents(session)

    async def _send(self, publish: Publish, deliveries: list[rollout.Delivery]) -> None:
        for delivery in deliveries:
            try:
                await publish(job_topic(delivery.thing), delivery.payload, 1, True)
            except Exception:
                logger.exception("publishing the job document of %r failed", delivery.thing)

    async def run(self, publish: Publish) -> None:
        """Re-send what devices should hold, then tick until cancelled."""
        try:
            await self._send(publish, await asyncio.to_thread(self._pending))
        except Exception:
            logger.exception("re-sending pending job documents failed; the next changes are still sent")
        while True:
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            reports = list(self._reports)
            self._reports.clear()
            self._queued_by.clear()
            try:
                deliveries = await asyncio.to_thread(self._work, reports, dt.datetime.now(dt.UTC))
                self.ticks += 1
            except Exception:
                logger.exception("a rollout tick failed (%d status reports lost); will retry", len(reports))
                await asyncio.sleep(self.interval)
                continue
            await self._send(publish, deliveries)
            await asyncio.sleep(MIN_TICK_GAP)
