"""amqtt's broker with the checks it lacks, each placed in the method amqtt calls for that step.

This subclass overrides private methods of amqtt 0.12.1, the version pinned in pyproject.toml; import
fails on any other version rather than run with checks silently bypassed. Every override is covered by
an attack test in tests/broker. What is closed here:

- publish, subscribe and every delivery ask the `AccessGuard` (no plugin manager, no `$SYS` plugin);
- retained messages are receive-checked, and only the subscriber's own filters are replayed at CONNECT
  (amqtt replays every filter in the broker, other clients' included);
- messages queued for an offline session are checked again when delivered, and the queue is bounded;
- a client that publishes and disconnects at once does not lose its last QoS 0 messages (amqtt drops
  the session's pending queue on DISCONNECT);
- `authenticate` only lets through a client the TLS gate admitted (the gate refuses everything else
  before amqtt sees it, so a refused CONNECT never touches the session table).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, Protocol

import amqtt  # type: ignore[import-untyped]
from amqtt.broker import Broker  # type: ignore[import-untyped]
from amqtt.contexts import Action  # type: ignore[import-untyped]

from thingward.broker._framing import FramedReader

__all__ = ["LISTENER_NAME", "AccessGuard", "GuardedBroker"]

logger = logging.getLogger(__name__)

AMQTT_VERSION = "0.12.1"
LISTENER_NAME = "default"
# Messages kept for a disconnected persistent session; amqtt's own queue has no bound.
MAX_OFFLINE_MESSAGES = 1000
# A disconnected persistent session is forgotten after this long (amqtt's default: never).
SESSION_EXPIRY_SECONDS = 24 * 3600

# amqtt internals this module overrides or calls.
_RELIED_ON = (
    "_authenticate",
    "_topic_filtering",
    "_client_message_loop",
    "_handle_disconnect",
    "_handle_subscription",
    "_handle_unsubscription",
    "_publish_retained_messages_for_subscription",
    "_publish_session_retained_messages",
    "_retain_broadcast_message",
    "_cleanup_session",
    "_broadcast_message",
    "_get_handler",
    "_matches",
    "retain_message",
    "external_connected",
)

if amqtt.__version__ != AMQTT_VERSION or not all(hasattr(Broker, name) for name in _RELIED_ON):
    raise ImportError(
        f"thingward's embedded broker is written against amqtt {AMQTT_VERSION} internals, "
        f"found amqtt {amqtt.__version__}: install amqtt=={AMQTT_VERSION}"
    )


class AccessGuard(Protocol):
    """The decisions the broker asks for; the adapter answers, counts and logs."""

    def allow_publish(self, thing: str, topic: str) -> bool: ...

    def allow_subscribe(self, thing: str, topic_filter: str) -> bool: ...

    def allow_receive(self, thing: str, topic: str) -> bool: ...

    def accepted(self, thing: str, topic: str, payload: bytes, qos: int, retain: bool) -> None: ...


class GuardedBroker(Broker):  # type: ignore[misc]
    """An amqtt broker with no listener of its own: the TLS gate hands it admitted connections."""

    def __init__(self, guard: AccessGuard) -> None:
        super().__init__(
            {
                # An external listener opens no socket: only the gate feeds this broker.
                "listeners": {LISTENER_NAME: {"type": "external", "bind": "thingward-gate"}},
                # No plugins at all: no $SYS broadcaster, no anonymous auth, no packet logger.
                "plugins": {},
                "session_expiry_interval": SESSION_EXPIRY_SECONDS,
            }
        )
        self._guard = guard
        self._admitted: Counter[str] = Counter()
        self._offline_overflow: set[str] = set()

    # -- admission -----------------------------------------------------------------------------------

    def admit(self, client_id: str) -> None:
        """The gate checked this client id against the connection's certificate and policy."""
        self._admitted[client_id] += 1

    def withdraw(self, client_id: str) -> None:
        """Forget an admission that amqtt did not use (the connection failed before authentication)."""
        if self._admitted[client_id] > 0:
            self._admitted[client_id] -= 1
        if self._admitted[client_id] <= 0:
            del self._admitted[client_id]

    async def _authenticate(self, session: Any, _listener: Any) -> bool:
        client_id = session.client_id
        if self._admitted.get(client_id, 0) > 0:
            self.withdraw(client_id)
            return True
        # Cannot happen through the gate; refuse rather than trust a session amqtt built by itself.
        logger.error("refusing an amqtt session the TLS gate did not admit: client_id=%r", client_id)
        return False

    # -- session table -------------------------------------------------------------------------------

    def clear_will(self, client_id: str) -> None:
        entry = self._sessions.get(client_id)
        if entry is not None:
            session = entry[0]
            session.will_flag = False
            session.will_topic = None
            session.will_message = None

    async def drop_session(self, client_id: str) -> bool:
        """Stop the client's handler and forget its session and subscriptions (the will is cleared first)."""
        if client_id not in self._sessions:
            return False
        self.clear_will(client_id)
        await self._cleanup_session(client_id)
        return True

    # -- checks on every action ----------------------------------------------------------------------

    async def _topic_filtering(self, session: Any, topic: str, action: Any) -> bool:
        thing: str = session.client_id
        if action == Action.RECEIVE:
            return self._guard.allow_receive(thing, topic)
        if action == Action.SUBSCRIBE:
            return self._guard.allow_subscribe(thing, topic)
        return self._guard.allow_publish(thing, topic)

    async def _deliver_publish(self, session: Any, handler: Any, message: Any) -> None:
        """One PUBLISH from a client: check it, hand it to the sink, route it, retain it."""
        topic = message.topic
        thing: str = session.client_id
        if not topic or "#" in topic or "+" in topic or "\x00" in topic:
            # A protocol violation: close the connection the normal way (the will is published).
            reader = handler.reader
            if isinstance(reader, FramedReader):
                reader.close("invalid topic name in PUBLISH", topic)
            return
        if not self._guard.allow_publish(thing, topic):
            return
        data = message.data
        packet = message.publish_packet
        retain = bool(packet is not None and packet.retain_flag)
        qos = int(message.qos or 0)
        self._guard.accepted(thing, topic, bytes(data), qos, retain)
        await self._broadcast_message(session, topic, data)
        if retain:
            await self.retain_message(session, topic, data, qos)

    async def _client_message_loop(self, client_session: Any, handler: Any) -> None:
        """amqtt's loop, except that a DISCONNECT first delivers what the client sent before it.

        amqtt handles the DISCONNECT first and drops the session's pending queue: a client that
        publishes QoS 0 messages and disconnects at once loses the ones not yet routed.
        """
        disconnect_waiter = asyncio.ensure_future(handler.wait_disconnect())
        subscribe_waiter = asyncio.ensure_future(handler.get_next_pending_subscription())
        unsubscribe_waiter = asyncio.ensure_future(handler.get_next_pending_unsubscription())
        wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
        try:
            while True:
                done, _ = await asyncio.wait(
                    [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if disconnect_waiter in done:
                    await self._deliver_pending(client_session, handler, wait_deliver)
                    await self._handle_disconnect(client_session, handler, disconnect_waiter)
                    return
                if wait_deliver in done:
                    message = wait_deliver.result()
                    if message is not None:
                        await self._deliver_publish(client_session, handler, message)
                    wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
                if subscribe_waiter in done:
                    await self._handle_subscription(client_session, handler, subscribe_waiter)
                    subscribe_waiter = asyncio.ensure_future(handler.get_next_pending_subscription())
                if unsubscribe_waiter in done:
                    await self._handle_unsubscription(client_session, handler, unsubscribe_waiter)
                    unsubscribe_waiter = asyncio.ensure_future(handler.get_next_pending_unsubscription())
        except asyncio.CancelledError:
            # As amqtt does: a cancelled client loop ends the client, not the broker.
            logger.debug("client loop of %r cancelled", client_session.client_id)
        finally:
            waiters = [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver]
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _deliver_pending(self, session: Any, handler: Any, wait_deliver: asyncio.Future[Any]) -> None:
        """Route, in order, the messages the client sent before it disconnected."""
        if not wait_deliver.done():
            wait_deliver.cancel()
            await asyncio.gather(wait_deliver, return_exceptions=True)
        if wait_deliver.done() and not wait_deliver.cancelled() and wait_deliver.exception() is None:
            message = wait_deliver.result()
            if message is not None:
                await self._deliver_publish(session, handler, message)
        queue = session.delivered_message_queue
        while not queue.empty():
            await self._deliver_publish(session, handler, queue.get_nowait())

    # -- retained and queued deliveries --------------------------------------------------------------

    def _granted_qos(self, topic_filter: str, session: Any) -> int | None:
        for subscriber, qos in self._subscriptions.get(topic_filter, ()):
            if subscriber.client_id == session.client_id:
                return int(qos)
        return None

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int], session: Any) -> None:
        topic_filter = subscription[0]
        # amqtt calls this at CONNECT for every filter in the broker, other clients' too: only the
        # session's own filters are replayed, and each retained message is receive-checked.
        granted = self._granted_qos(topic_filter, session)
        handler = self._get_handler(session)
        if granted is None or handler is None:
            return
        tasks = []
        for topic, retained in list(self._retained_messages.items()):
            if not self._matches(topic, topic_filter):
                continue
            if not self._guard.allow_receive(session.client_id, topic):
                continue
            qos = min(granted, retained.qos if retained.qos is not None else granted)
            tasks.append(asyncio.ensure_future(handler.mqtt_publish(topic, retained.data, qos, retain=True)))
        await self._finish_deliveries(tasks)

    async def _publish_session_retained_messages(self, session: Any) -> None:
        # Messages queued while the session was offline: checked again now (the policy may have changed).
        handler = self._get_handler(session)
        queue = session.retained_messages
        tasks = []
        while not queue.empty():
            queued = queue.get_nowait()
            if handler is None or not self._guard.allow_receive(session.client_id, queued.topic):
                continue
            # RETAIN 0: these are ordinary deliveries, not retained messages [MQTT-3.3.1-9].
            tasks.append(
                asyncio.ensure_future(handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False))
            )
        self._offline_overflow.discard(session.client_id)
        await self._finish_deliveries(tasks)

    async def _retain_broadcast_message(self, broadcast: dict[str, Any], qos: int, target_session: Any) -> None:
        client_id = target_session.client_id
        if target_session.retained_messages.qsize() >= MAX_OFFLINE_MESSAGES:
            if client_id not in self._offline_overflow:
                self._offline_overflow.add(client_id)
                logger.warning(
                    "offline queue of %r is full (%d messages): dropping new messages until it reconnects",
                    client_id,
                    MAX_OFFLINE_MESSAGES,
                )
            return
        await super()._retain_broadcast_message(broadcast, qos, target_session)

    @staticmethod
    async def _finish_deliveries(tasks: list[asyncio.Future[Any]]) -> None:
        if not tasks:
            return
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception):
                logger.debug("a retained or queued delivery failed: %r", result)
