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
  before amqtt sees it, so a refused CONNECT never touches the session table);
- a will is publish-checked again when it fires (the policy may have changed since CONNECT);
- quotas per client: subscription filters (MAX_SUBSCRIPTIONS_PER_CLIENT), retained messages
  (MAX_RETAINED_PER_THING, MAX_RETAINED_BYTES_PER_THING) and, through the FramedReader, unreleased QoS 2
  messages of a resumed session; and an unsubscribed filter no longer leaves an empty entry that every
  message is matched against.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import amqtt  # type: ignore[import-untyped]
from amqtt.broker import Broker  # type: ignore[import-untyped]
from amqtt.contexts import Action  # type: ignore[import-untyped]
from amqtt.mqtt.disconnect import DisconnectPacket  # type: ignore[import-untyped]

from thingward.broker._framing import FramedReader

__all__ = ["LISTENER_NAME", "AccessGuard", "GuardedBroker"]

logger = logging.getLogger(__name__)

AMQTT_VERSION = "0.12.1"
LISTENER_NAME = "default"
# Messages kept for a disconnected persistent session; amqtt's own queue has no bound.
MAX_OFFLINE_MESSAGES = 1000
# A disconnected persistent session is forgotten after this long (amqtt's default: never).
SESSION_EXPIRY_SECONDS = 24 * 3600
# Topic filters one client may hold; a SUBSCRIBE past it gets 0x80 for each filter over the quota. amqtt
# matches every message against every filter in the broker, so this bounds what one device can slow down.
MAX_SUBSCRIPTIONS_PER_CLIENT = 100
# Retained messages one thing may hold (the thing that published the stored message owns it), by count and
# by bytes (topic + payload). A retained PUBLISH over quota is still delivered live but not retained, and
# the message it would have replaced is cleared (it is outdated: serving it as current would be worse).
# An empty retained PUBLISH (a clear) is always honoured and frees quota.
MAX_RETAINED_PER_THING = 100
MAX_RETAINED_BYTES_PER_THING = 1024 * 1024
# At most one INFO line per thing and reason in this many seconds for quota refusals (the rest at DEBUG):
# a device hammering a quota must not flood the log.
QUOTA_LOG_INTERVAL = 10.0
_REFUSED = 0x80  # SUBACK return code for a refused filter

# amqtt internals this module overrides or calls.
_RELIED_ON = (
    "_authenticate",
    "_topic_filtering",
    "_client_message_loop",
    "_handle_client_session",
    "_handle_disconnect",
    "_handle_subscription",
    "_handle_unsubscription",
    "_publish_retained_messages_for_subscription",
    "_publish_session_retained_messages",
    "_retain_broadcast_message",
    "_cleanup_session",
    "add_subscription",
    "_del_subscription",
    "_del_all_subscriptions",
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

    def deny(self, thing: str, action: str, topic: str, reason: str, *, level: int = ...) -> bool:
        """Count and log a refusal the core decided itself (a quota, not a policy)."""
        ...


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
        # Refusals decided here (quotas), whether or not the adapter also counts them.
        self.quota_denials: Counter[tuple[str, str]] = Counter()
        self._quota_logged: dict[tuple[str, str], float] = {}
        self._filters_of: dict[str, set[str]] = {}  # client id -> its topic filters in _subscriptions
        self._retained_owner: dict[str, tuple[str, int]] = {}  # retained topic -> (owner, bytes)
        self._retained_usage: dict[str, list[int]] = {}  # owner -> [messages, bytes]

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

    async def _handle_client_session(
        self, reader: Any, writer: Any, client_session: Any, handler: Any, server: Any, listener_name: str
    ) -> None:
        if isinstance(reader, FramedReader):
            # A resumed session may still hold QoS 2 messages from earlier connections (amqtt will ask for
            # their PUBREL again): they count against the same bound, from the first packet on.
            reader.hold_unreleased(client_session.inflight_in.keys())
        await super()._handle_client_session(reader, writer, client_session, handler, server, listener_name)

    async def _client_message_loop(self, client_session: Any, handler: Any) -> None:
        """amqtt's loop, except that a DISCONNECT first delivers what the client sent before it.

        amqtt handles the DISCONNECT first and drops the session's pending queue: a client that
        publishes QoS 0 messages and disconnects at once loses the ones not yet routed. And a connection
        that ended before the loop started is noticed (amqtt would wait for it forever).
        """
        reader_task = getattr(handler, "_reader_task", None)
        if isinstance(reader_task, asyncio.Task) and reader_task.done():
            # The connection ended while amqtt was re-sending a resumed session's in-flight messages, and
            # amqtt then armed a fresh disconnect waiter that nothing will ever resolve: without this the
            # client loop waits forever and the thing stays "connected".
            await handler.handle_connection_closed()
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

    async def _handle_disconnect(self, session: Any, handler: Any, disconnect_waiter: asyncio.Future[Any]) -> None:
        """amqtt's, except that a will is checked against the policy of now, not the one of its CONNECT."""
        if session.will_flag and not isinstance(disconnect_waiter.result(), DisconnectPacket):
            thing: str = session.client_id
            topic = session.will_topic
            # allow_publish counts and logs the refusal (and applies the publish rate, as to any publish).
            if not isinstance(topic, str) or not self._guard.allow_publish(thing, topic):
                logger.info("thing %r: will on %r dropped, no longer allowed to publish there", thing, topic)
                session.will_flag = False
                session.will_topic = None
                session.will_message = None
        await super()._handle_disconnect(session, handler, disconnect_waiter)

    # -- quotas --------------------------------------------------------------------------------------

    def _refuse_over_quota(self, thing: str, action: str, topic: str, reason: str) -> None:
        """Count a quota refusal, in the adapter's denials too; log one INFO line per QUOTA_LOG_INTERVAL."""
        self.quota_denials[(thing, action)] += 1
        now = time.monotonic()
        key = (thing, reason)
        level = logging.DEBUG
        if now - self._quota_logged.get(key, -QUOTA_LOG_INTERVAL) >= QUOTA_LOG_INTERVAL:
            level = logging.INFO
            if len(self._quota_logged) > 10_000:
                self._quota_logged = {k: t for k, t in self._quota_logged.items() if now - t < QUOTA_LOG_INTERVAL}
            self._quota_logged[key] = now
        self._guard.deny(thing, action, topic, reason, level=level)

    async def add_subscription(self, subscription: tuple[str, int], session: Any) -> int:
        topic_filter = subscription[0]
        client_id: str = session.client_id
        held = self._filters_of.get(client_id)
        if held is not None and topic_filter not in held and len(held) >= MAX_SUBSCRIPTIONS_PER_CLIENT:
            self._refuse_over_quota(
                client_id, "subscribe", topic_filter, f"subscription quota ({MAX_SUBSCRIPTIONS_PER_CLIENT} filters)"
            )
            return _REFUSED
        code = int(await super().add_subscription(subscription, session))
        if code != _REFUSED:
            self._filters_of.setdefault(client_id, set()).add(topic_filter)
        return code

    def _del_subscription(self, a_filter: str, session: Any) -> int:
        deleted = int(super()._del_subscription(a_filter, session))
        if deleted:
            # amqtt leaves the emptied entry, and matches every message against every entry: a client that
            # subscribes and unsubscribes fresh filters would slow the broker down without bound.
            if not self._subscriptions.get(a_filter, True):
                del self._subscriptions[a_filter]
            held = self._filters_of.get(session.client_id)
            if held is not None:
                held.discard(a_filter)
                if not held:
                    del self._filters_of[session.client_id]
        return deleted

    async def _del_all_subscriptions(self, session: Any) -> None:
        # The client's own filters, not a scan of every filter in the broker (amqtt's way, at every connect).
        for topic_filter in list(self._filters_of.get(session.client_id, ())):
            self._del_subscription(topic_filter, session)

    async def retain_message(
        self, source_session: Any, topic_name: str | None, data: bytes | bytearray | None, qos: int | None = None
    ) -> None:
        owner: str | None = getattr(source_session, "client_id", None)
        if topic_name is None or not data or owner is None:
            # A clear always works and frees the quota of whoever owned the message; so does a message from
            # the broker itself (no source session; none is sent today), which is charged to nobody.
            await super().retain_message(source_session, topic_name, data, qos)
            if topic_name is not None:
                self._release_retained(topic_name)
            return
        size = len(topic_name.encode("utf-8")) + len(data)
        if not self._retained_fits(owner, topic_name, size):
            self._refuse_over_quota(
                owner,
                "retain",
                topic_name,
                f"retained quota ({MAX_RETAINED_PER_THING} messages, {MAX_RETAINED_BYTES_PER_THING} bytes): "
                "delivered, not retained",
            )
            if topic_name in self._retained_messages:
                await super().retain_message(source_session, topic_name, b"", qos)
                self._release_retained(topic_name)
            return
        await super().retain_message(source_session, topic_name, data, qos)
        self._release_retained(topic_name)
        usage = self._retained_usage.setdefault(owner, [0, 0])
        usage[0] += 1
        usage[1] += size
        self._retained_owner[topic_name] = (owner, size)

    def _retained_fits(self, owner: str, topic: str, size: int) -> bool:
        count, used = self._retained_usage.get(owner, (0, 0))
        previous = self._retained_owner.get(topic)
        if previous is not None and previous[0] == owner:
            used -= previous[1]  # a replacement: the old message's bytes come back
        else:
            count += 1
        return count <= MAX_RETAINED_PER_THING and used + size <= MAX_RETAINED_BYTES_PER_THING

    def _release_retained(self, topic: str) -> None:
        previous = self._retained_owner.pop(topic, None)
        if previous is None:
            return
        owner, size = previous
        usage = self._retained_usage.get(owner)
        if usage is None:
            return
        usage[0] -= 1
        usage[1] -= size
        if usage[0] <= 0:
            del self._retained_usage[owner]

    def drop_retained(self, keep: Callable[[str, str], bool]) -> list[str]:
        """Forget each retained message for which `keep(owner, topic)` is False; the topics dropped."""
        dropped = []
        for topic, (owner, _size) in list(self._retained_owner.items()):
            if not keep(owner, topic):
                self._retained_messages.pop(topic, None)
                self._release_retained(topic)
                dropped.append(topic)
        return dropped

    def retained_usage(self, thing: str) -> tuple[int, int]:
        """(messages, bytes) of retained messages `thing` holds against its quota."""
        count, used = self._retained_usage.get(thing, (0, 0))
        return count, used

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
