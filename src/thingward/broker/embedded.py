"""The embedded data plane: amqtt 0.12.1 behind our own mutual-TLS gate, secure by default.

How a connection travels:

    TCP accept -> TLS handshake (ours: TLS 1.2+, client certificate REQUIRED, CRL)   _tls.ServerTls
               -> identity = thing named by THIS connection's certificate            ServerTls.identify
               -> first packet must be CONNECT, parsed strictly, then admitted:     EmbeddedBroker._admission
                  connect rate, client id == thing, authorize connect, will topic
               -> refused: CONNACK 5 and close; amqtt never sees it, so its session table is untouched
               -> admitted: handed to amqtt on an `external` listener through a FramedReader (packet
                  size limit, keep-alive) and checked again on every publish, subscribe and delivery
                  (_amqtt_core.GuardedBroker asks this class, which asks the Authorizer).

Why a gate of our own rather than amqtt's TLS listener: amqtt builds a CERT_OPTIONAL context, changes
its session table before authentication, checks a resumed session against the previous connection's
certificate, and has no packet size limit. With our own `asyncio.start_server` the handshake, the
identity and the CONNECT decision all happen before amqtt runs, through public amqtt API
(`external_connected`); only the per-message checks live in overridden amqtt methods.

The plaintext listener (`plaintext_port`) exists only to give legacy or misconfigured clients a clear
answer: it refuses every CONNECT with "not authorized", since a plaintext client has no certificate and
so no identity. It is off unless asked for, and a WARNING is logged at every start.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import itertools
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from amqtt.adapters import StreamWriterAdapter  # type: ignore[import-untyped]

from thingward.broker._amqtt_core import LISTENER_NAME, GuardedBroker
from thingward.broker._framing import (
    CONNACK_NOT_AUTHORIZED,
    CONNACK_UNACCEPTABLE_PROTOCOL,
    ConnectRequest,
    FramedReader,
    MalformedConnectError,
    connack,
    parse_connect,
)
from thingward.broker._limits import ConnectRateLimiter, PublishRateLimiter
from thingward.broker._tls import IdentityRefusedError, ServerTls
from thingward.broker.base import (
    Action,
    Authorizer,
    BrokerLimits,
    BrokerTls,
    InboundMessage,
    LiveSession,
    MessageSink,
    Takeover,
)
from thingward.errors import ConfigError

__all__ = ["EmbeddedBroker", "LiveSession", "Takeover"]

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0  # seconds for the TLS handshake
CONNECT_TIMEOUT = 10.0  # seconds from the handshake to a complete CONNECT
TAKEOVER_TIMEOUT = 2.0  # seconds for an older connection of the same thing to finish
TAKEOVERS_KEPT = 20  # recent takeovers remembered per thing
MAX_THINGS_WITH_TAKEOVERS = 10_000  # bound on that memory; the oldest thing's record goes first
DISCONNECT_TIMEOUT = 1.0  # seconds for disconnect(thing) to see the connections gone
CLOSE_TIMEOUT = 1.0  # seconds for a graceful TLS close before the connection is aborted
STOP_TIMEOUT = 5.0
THROTTLE_LOG_INTERVAL = 10.0  # seconds between two "over the publish rate" lines for one thing
MAX_PENDING_PER_THING = 2  # connections of one thing between handshake and admission
UNKNOWN_THING = "<unknown>"
PLAINTEXT = "<plaintext>"

_Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _valid_topic_name(topic: str) -> bool:
    return bool(topic) and not topic.startswith("$") and not any(c in topic for c in "#+\x00")


async def _wait_finished(connections: list[_Connection], timeout: float) -> bool:
    """Wait until every connection has finished, at most `timeout`; True if they all did. Leaves no task behind."""
    if not connections:
        return True
    waiters = [asyncio.ensure_future(conn.finished.wait()) for conn in connections]
    _, pending = await asyncio.wait(waiters, timeout=timeout)
    for waiter in pending:
        waiter.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    return not pending


class _Connection:
    """One client connection, tracked from the handshake on so it can be closed whatever amqtt thinks."""

    __slots__ = ("finished", "live", "peer", "seq", "serial", "since", "thing", "transport")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.transport = writer.transport
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"
        self.thing: str | None = None
        self.seq = 0  # order of identification: a takeover closes only connections identified before it
        self.serial = ""  # of the certificate the connection was admitted with
        self.since: dt.datetime | None = None  # when it was admitted
        self.live = False  # admitted and handed to amqtt
        self.finished = asyncio.Event()

    def abort(self) -> None:
        # abort, not close: close waits for the peer to read what is buffered, which it may never do.
        self.transport.abort()

    async def finish(self, writer: asyncio.StreamWriter) -> None:
        """Close gracefully (a refusal's CONNACK must reach the client), but never wait long."""
        try:
            if not self.transport.is_closing():
                writer.close()
            await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)
        except (OSError, TimeoutError):
            pass
        finally:
            self.abort()


class EmbeddedBroker:
    """An MQTT broker in this process: mutual TLS only, every action checked by the `Authorizer`."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: BrokerTls,
        limits: BrokerLimits,
        authorizer: Authorizer,
        on_message: MessageSink | None = None,
        plaintext_port: int | None = None,
    ) -> None:
        if (
            min(
                limits.max_payload_bytes,
                limits.max_connects_per_minute,
                limits.max_publish_per_second,
                limits.max_connections,
            )
            < 1
        ):
            raise ConfigError(f"broker limits must all be positive: {limits}")
        self._host = host
        self._requested_port = port
        self._tls = tls
        self._limits = limits
        self._authorizer = authorizer
        self._on_message = on_message
        self._plaintext_port_requested = plaintext_port
        self.denials: collections.Counter[tuple[str, str]] = collections.Counter()
        self.refused_over_capacity = 0
        self._connect_limiter = ConnectRateLimiter(limits.max_connects_per_minute)
        self._publish_limiter = PublishRateLimiter(limits.max_publish_per_second)
        self._throttle_logged: dict[str, float] = {}
        self._throttle_drops: dict[str, int] = {}
        self._server_tls: ServerTls | None = None
        self._core: GuardedBroker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.Server] = []
        self._port: int | None = None
        self._plaintext_port: int | None = None
        self._connections: dict[str, set[_Connection]] = {}
        self._anonymous: set[_Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Recent takeovers per thing: a second connection with the same identity closes the first. A
        # thing whose sessions keep taking each other over from different addresses is likely cloned.
        self._takeovers: dict[str, collections.deque[Takeover]] = {}
        self._seq = itertools.count(1)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load TLS material, start the broker core, then listen. Port 0 picks a free port."""
        if self._servers or self._core is not None:
            raise RuntimeError("the broker is already started")
        self._loop = asyncio.get_running_loop()
        self._server_tls = ServerTls(self._tls)
        self._core = GuardedBroker(self)
        try:
            await self._core.start()
            tls_server = await self._listen(
                self._serve_tls,
                self._requested_port,
                ssl=self._server_tls.listening_context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
            self._port = tls_server.sockets[0].getsockname()[1]
            if self._plaintext_port_requested is not None:
                plain_server = await self._listen(self._serve_plaintext, self._plaintext_port_requested)
                self._plaintext_port = plain_server.sockets[0].getsockname()[1]
                logger.warning(
                    "plaintext MQTT listener open on %s:%d: it refuses every CONNECT (a plaintext client has "
                    "no certificate, so no identity); remove plaintext_port to close it",
                    self._host,
                    self._plaintext_port,
                )
        except BaseException:
            await self.stop()
            raise
        logger.info("embedded broker listening on %s:%d (MQTT over mutual TLS)", self._host, self._port)

    async def _listen(self, handler: _Handler, port: int, **kwargs: Any) -> asyncio.Server:
        server = await asyncio.start_server(handler, self._host, port, reuse_address=True, **kwargs)
        ports = {sock.getsockname()[1] for sock in server.sockets}
        if port == 0 and len(ports) > 1:
            # A host name with several addresses got a different free port on each: use the first's.
            first = server.sockets[0].getsockname()[1]
            server.close()
            await server.wait_closed()
            server = await asyncio.start_server(handler, self._host, first, reuse_address=True, **kwargs)
        for sock in server.sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._servers.append(server)
        return server

    async def stop(self) -> None:
        """Stop listening, close every connection, shut amqtt down, and wait for every task we started."""
        for server in self._servers:
            server.close()
        for conn in self._all_connections():
            conn.abort()
        core, self._core = self._core, None
        if core is not None and core.transitions.state == "started":
            try:
                await core.shutdown()
            except Exception:
                logger.exception("amqtt shutdown failed")
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=STOP_TIMEOUT)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._connections.clear()
        self._anonymous.clear()
        self._port = None
        self._plaintext_port = None
        logger.info("embedded broker stopped")

    @property
    def port(self) -> int:
        """The bound TLS port."""
        if self._port is None:
            raise RuntimeError("the broker is not started")
        return self._port

    @property
    def plaintext_port(self) -> int | None:
        """The bound plaintext port (which refuses every CONNECT), or None when there is none."""
        return self._plaintext_port

    # -- the core's controls -----------------------------------------------------------------------

    def reload_crl(self) -> None:
        """Re-read tls.crl_file; every handshake from now on uses it. Pair with `disconnect` to drop live sessions."""
        if self._server_tls is None:
            raise RuntimeError("the broker is not started")
        self._server_tls.reload_crl()

    async def disconnect(self, thing: str) -> int:
        """Drop every connection of `thing` (its will cleared first, so it is not published) and its session.

        Returns how many connections were closed, admitted or still in their CONNECT; they are gone within
        DISCONNECT_TIMEOUT. The thing's persistent session and subscriptions are forgotten too. Pair with
        `reload_crl()` after a revocation, or the device simply reconnects.
        """
        if self._core is not None:
            self._core.clear_will(thing)
        connections = list(self._connections.get(thing, ()))
        for conn in connections:
            conn.abort()
        if self._core is not None:
            try:
                await self._core.drop_session(thing)
            except Exception:
                logger.exception("dropping the amqtt session of %r failed", thing)
        if not await _wait_finished(connections, DISCONNECT_TIMEOUT):
            logger.warning(
                "thing %r: a connection did not finish within %.0f s of its abort", thing, DISCONNECT_TIMEOUT
            )
        logger.info("disconnected thing %r: %d connection(s) closed", thing, len(connections))
        return len(connections)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish as the platform itself (OTA job documents, commands to devices).

        Every subscriber is receive-checked by the policy as for any message, so only things allowed to
        receive `topic` get it. A retained message is charged to no thing's quota; an empty retained
        payload clears the topic. QoS 1 and 2 are delivered at each subscriber's granted QoS.
        """
        core = self._core
        if core is None:
            raise RuntimeError("the broker is not started")
        if not _valid_topic_name(topic):
            raise ValueError(f"cannot publish to {topic!r}: not a valid topic name")
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS {qos} is not 0, 1 or 2")
        if len(payload) > self._limits.max_payload_bytes:
            raise ValueError(f"payload of {len(payload)} bytes is over {self._limits.max_payload_bytes}")
        await core._broadcast_message(None, topic, payload, 0 if qos == 0 else None)
        if retain:
            await core.retain_message(None, topic, payload, qos)

    def drop_retained(self, keep: Callable[[str, str], bool]) -> list[str]:
        """Forget the retained messages for which `keep(owner, topic)` is False (their owner was revoked, or may
        no longer publish there): a thing cut off must not go on speaking through what it retained."""
        return self._core.drop_retained(keep) if self._core is not None else []

    def connected_things(self) -> set[str]:
        """Things with at least one admitted, open connection."""
        return {thing for thing, conns in list(self._connections.items()) if any(c.live for c in list(conns))}

    def live_sessions(self) -> list[LiveSession]:
        """Every admitted, open connection: which thing, from where, with which certificate, since when."""
        out = []
        for thing, conns in list(self._connections.items()):
            for conn in list(conns):
                if conn.live and conn.since is not None:
                    out.append(LiveSession(thing=thing, serial=conn.serial, peer=conn.peer, since=conn.since))
        return sorted(out, key=lambda s: (s.thing, s.since))

    def takeovers(self) -> dict[str, list[Takeover]]:
        """Recent takeovers (at most TAKEOVERS_KEPT per thing, newest last)."""
        return {thing: list(events) for thing, events in list(self._takeovers.items()) if events}

    async def policies_changed(self) -> None:
        """Nothing to compile: every action is asked of the authorizer, which already holds the new world (the
        server drops the sessions of things no longer allowed to connect)."""

    def set_authorizer(self, authorizer: Authorizer) -> None:
        """Use `authorizer` from now on, for open sessions too; things no longer allowed to connect are dropped.

        Safe to call from any thread.
        """
        self._authorizer = authorizer
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._recheck_connected)

    def _recheck_connected(self) -> None:
        for thing in self.connected_things():
            if not self._authorize(thing, "connect", thing):
                logger.info("thing %r may no longer connect under the new policy: disconnecting", thing)
                self._spawn(self.disconnect(thing))

    # -- connections -------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _track_current_task(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @property
    def open_connections(self) -> int:
        return len(self._anonymous) + sum(len(group) for group in self._connections.values())

    def _all_connections(self) -> list[_Connection]:
        conns = list(self._anonymous)
        for group in self._connections.values():
            conns.extend(group)
        return conns

    def _register(self, conn: _Connection, thing: str) -> None:
        self._anonymous.discard(conn)
        conn.thing = thing
        conn.seq = next(self._seq)
        self._connections.setdefault(thing, set()).add(conn)

    def _unregister(self, conn: _Connection) -> None:
        self._anonymous.discard(conn)
        if conn.thing is not None:
            group = self._connections.get(conn.thing)
            if group is not None:
                group.discard(conn)
                if not group:
                    del self._connections[conn.thing]

    async def _serve_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve_connection(self._serve_identified, reader, writer)

    async def _serve_plaintext(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve_connection(self._refuse_plaintext, reader, writer)

    async def _serve_connection(
        self,
        serve: Callable[[_Connection, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """What every accepted socket goes through, on any listener: the global cap, then clean-up."""
        self._track_current_task()
        conn = _Connection(writer)
        if self.open_connections >= self._limits.max_connections:
            self.refused_over_capacity += 1
            if self.refused_over_capacity % 100 == 1:
                logger.warning(
                    "refusing connection from %s: %d connections open, the limit (max_connections)",
                    conn.peer,
                    self._limits.max_connections,
                )
            conn.abort()
            return
        self._anonymous.add(conn)
        try:
            await serve(conn, reader, writer)
        except Exception:
            logger.exception("connection from %s failed", conn.peer)
        finally:
            try:
                await conn.finish(writer)
            finally:
                self._unregister(conn)
                conn.finished.set()

    async def _serve_identified(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        server_tls = self._server_tls
        core = self._core
        if server_tls is None or core is None:
            return
        ssl_object = writer.get_extra_info("ssl_object")
        try:
            thing = server_tls.identify(ssl_object)
        except IdentityRefusedError as e:
            self.deny(e.thing or UNKNOWN_THING, "connect", "-", f"{e.reason} (peer {conn.peer})")
            return
        pending = sum(1 for c in self._connections.get(thing, ()) if not c.live)
        if pending >= MAX_PENDING_PER_THING:
            # Handshakes held open without a CONNECT would let one identity hoard sockets (and keep a
            # connection ready across a revocation).
            self.deny(thing, "connect", "-", f"{pending} connections already waiting for CONNECT (peer {conn.peer})")
            return
        self._register(conn, thing)
        framed = FramedReader(
            reader,
            max_payload=self._limits.max_payload_bytes,
            abort=conn.abort,
            on_violation=lambda reason, topic: self._on_violation(thing, reason, topic),
        )
        try:
            first = await asyncio.wait_for(framed.first_packet(), CONNECT_TIMEOUT)
        except TimeoutError:
            logger.info("closing %s (thing %r): no CONNECT within %.0f s", conn.peer, thing, CONNECT_TIMEOUT)
            return
        if not first:
            return
        try:
            request = await parse_connect(first)
        except MalformedConnectError as e:
            self.deny(thing, "connect", "-", f"{e} (peer {conn.peer})")
            return
        try:
            # Judged again now, against the CRL and clock of this moment: the handshake may be old.
            identity = server_tls.identify_peer(ssl_object)
        except IdentityRefusedError as e:
            self.deny(thing, "connect", request.client_id, f"{e.reason} (peer {conn.peer})")
            await self._refuse(writer, CONNACK_NOT_AUTHORIZED)
            return
        refusal = self._admission(thing, request)
        if refusal is not None:
            code, reason = refusal
            self.deny(thing, "connect", request.client_id, f"{reason} (peer {conn.peer})")
            await self._refuse(writer, code)
            return
        await self._take_over(thing, conn)
        framed.set_keepalive(request.keep_alive)
        conn.serial = identity.serial
        conn.since = dt.datetime.now(dt.UTC)
        conn.live = True
        logger.info("thing %r connected from %s (clean session %s)", thing, conn.peer, request.clean_session)
        core.admit(thing)
        expiry = self._end_at_expiry(thing, conn, identity.not_after)
        try:
            await core.external_connected(framed, StreamWriterAdapter(writer), LISTENER_NAME)
        finally:
            expiry.cancel()
            core.withdraw(thing)
            conn.live = False
            logger.info("thing %r disconnected (%s)", thing, conn.peer)

    def _end_at_expiry(self, thing: str, conn: _Connection, not_after: dt.datetime) -> asyncio.TimerHandle:
        """Close a live session when its certificate expires: the identity ends there, the socket with it."""
        loop = asyncio.get_running_loop()
        delay = max(0.0, (not_after - dt.datetime.now(dt.UTC)).total_seconds())

        def expire() -> None:
            if conn.live:
                self.deny(thing, "connect", thing, f"certificate expired during the session (peer {conn.peer})")
                if self._core is not None:
                    self._core.clear_will(thing)
                conn.abort()

        return loop.call_later(delay, expire)

    def _admission(self, thing: str, request: ConnectRequest) -> tuple[int, str] | None:
        """None if the CONNECT may proceed, else (CONNACK code, reason). Pure apart from the rate limiter."""
        if request.protocol_name != "MQTT" or request.protocol_level != 4:
            return CONNACK_UNACCEPTABLE_PROTOCOL, f"unsupported protocol level {request.protocol_level}"
        if not self._connect_limiter.attempt(thing):
            return CONNACK_NOT_AUTHORIZED, f"more than {self._limits.max_connects_per_minute} connects in a minute"
        if not request.client_id_given or request.client_id != thing:
            return CONNACK_NOT_AUTHORIZED, "client id differs from the certificate's thing"
        if not self._authorize(thing, "connect", request.client_id):
            return CONNACK_NOT_AUTHORIZED, "connect not allowed by policy"
        if request.will_topic is not None:
            if not _valid_topic_name(request.will_topic):
                return CONNACK_NOT_AUTHORIZED, f"invalid will topic {request.will_topic!r}"
            if len(request.will_payload or b"") > self._limits.max_payload_bytes:
                return CONNACK_NOT_AUTHORIZED, "will payload over the payload limit"
            if not self._authorize(thing, "publish", request.will_topic):
                return CONNACK_NOT_AUTHORIZED, f"will topic {request.will_topic!r} not allowed by policy"
        return None

    async def _refuse(self, writer: asyncio.StreamWriter, code: int) -> None:
        try:
            writer.write(connack(code))
            await asyncio.wait_for(writer.drain(), CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            pass

    async def _take_over(self, thing: str, conn: _Connection) -> None:
        """One connection per thing [MQTT-3.1.4-2]: close older ones and let amqtt finish them first."""
        # Only older ones: two copies in CONNECT at once must not close each other (the newest wins).
        older = [c for c in self._connections.get(thing, ()) if c.seq < conn.seq]
        if not older:
            return
        logger.info("thing %r connected again: closing %d older connection(s)", thing, len(older))
        events = self._takeovers.setdefault(thing, collections.deque(maxlen=TAKEOVERS_KEPT))
        if len(self._takeovers) > MAX_THINGS_WITH_TAKEOVERS:
            self._takeovers.pop(next(iter(self._takeovers)))
        for old in older:
            events.append(Takeover(at=dt.datetime.now(dt.UTC), old_peer=old.peer, new_peer=conn.peer))
            old.abort()
        await _wait_finished(older, TAKEOVER_TIMEOUT)

    async def _refuse_plaintext(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A plaintext client has no certificate, so no identity: every CONNECT is refused."""
        framed = FramedReader(
            reader, max_payload=self._limits.max_payload_bytes, abort=conn.abort, on_violation=lambda r, t: None
        )
        try:
            first = await asyncio.wait_for(framed.first_packet(), CONNECT_TIMEOUT)
        except TimeoutError:
            return
        client_id = "-"
        try:
            client_id = (await parse_connect(first)).client_id if first else "-"
        except MalformedConnectError:
            first = b""
        self.deny(PLAINTEXT, "connect", client_id, f"plaintext connection has no identity (peer {conn.peer})")
        if first:
            await self._refuse(writer, CONNACK_NOT_AUTHORIZED)

    # -- decisions (the AccessGuard the core asks) ---------------------------------------------------

    def _authorize(self, thing: str, action: Action, topic: str) -> bool:
        try:
            return self._authorizer.authorize(thing, action, topic) is True
        except Exception:
            # Fail closed: a broken policy denies.
            logger.exception("authorizer failed on %s %s %r: denying", thing, action, topic)
            return False

    def deny(self, thing: str, action: str, topic: str, reason: str, *, level: int = logging.INFO) -> bool:
        """Count and log a refusal (policy, limit or quota); returns False so a check can `return self.deny(...)`."""
        self.denials[(thing, action)] += 1
        logger.log(level, "denied %s: thing=%s topic=%r reason=%s", action, thing, topic, reason)
        return False

    def allow_publish(self, thing: str, topic: str) -> bool:
        if not self._publish_limiter.allow(thing):
            self._throttled_drop(thing, topic)
            return False
        if topic.startswith("$"):
            return self.deny(thing, "publish", topic, "reserved $ topic")
        if not self._authorize(thing, "publish", topic):
            return self.deny(thing, "publish", topic, "not allowed by policy")
        return True

    def _throttled_drop(self, thing: str, topic: str) -> None:
        # One log line per thing every THROTTLE_LOG_INTERVAL, with the count: a line per dropped
        # message would let a device flood the log.
        self.denials[(thing, "publish")] += 1
        self._throttle_drops[thing] = self._throttle_drops.get(thing, 0) + 1
        now = time.monotonic()
        if now - self._throttle_logged.get(thing, -THROTTLE_LOG_INTERVAL) < THROTTLE_LOG_INTERVAL:
            return
        if len(self._throttle_logged) > 10_000:
            self._throttle_logged = {k: t for k, t in self._throttle_logged.items() if now - t < THROTTLE_LOG_INTERVAL}
        self._throttle_logged[thing] = now
        dropped = self._throttle_drops.pop(thing)
        logger.info(
            "denied publish: thing=%s topic=%r reason=over %d messages a second (%d dropped since the last report)",
            thing,
            topic,
            self._limits.max_publish_per_second,
            dropped,
        )

    def allow_subscribe(self, thing: str, topic_filter: str) -> bool:
        if topic_filter.startswith("$"):
            return self.deny(thing, "subscribe", topic_filter, "reserved $ topic")
        if not self._authorize(thing, "subscribe", topic_filter):
            return self.deny(thing, "subscribe", topic_filter, "not allowed by policy")
        return True

    def allow_receive(self, thing: str, topic: str) -> bool:
        if not topic.startswith("$") and self._authorize(thing, "receive", topic):
            return True
        # DEBUG: a wildcard subscriber is refused every message it may not see; that is policy working.
        return self.deny(thing, "receive", topic, "not allowed by policy", level=logging.DEBUG)

    def accepted(self, thing: str, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        sink = self._on_message
        if sink is None:
            return
        try:
            sink(InboundMessage(thing=thing, topic=topic, payload=payload, qos=qos, retain=retain))
        except Exception:
            logger.exception("on_message sink failed for a message from %s on %r", thing, topic)

    def _on_violation(self, thing: str, reason: str, topic: str | None) -> None:
        if reason == "keep-alive expired":
            logger.info("closing thing %r: keep-alive expired", thing)
        elif reason == "payload too large":
            self.deny(
                thing,
                "publish",
                topic if topic is not None else "-",
                f"payload over {self._limits.max_payload_bytes} bytes: connection closed",
            )
        else:
            # A protocol violation closes the connection; it is counted like any refusal.
            self.deny(thing, "protocol", topic if topic is not None else "-", f"{reason}: connection closed")
