"""MQTT framing in front of amqtt: whole packets only, bounded in size, keep-alive enforced, CONNECT parsed strictly.

amqtt reads straight from the socket with no packet size limit (a 256 MB PUBLISH is buffered before any
check) and never closes a client whose keep-alive expired. `FramedReader` reads the network in chunks,
cuts it into packets, refuses oversize ones before buffering them, and serves amqtt one packet at a time:
a read that would run past the end of the packet amqtt is parsing is a protocol error, so amqtt and
this layer can never disagree about where a packet ends.

The other way round, amqtt must never give up on a packet half way: when its parser raises inside a
PUBLISH (a topic with '+' or '#'), it discards the packet and parses the rest of its bytes as new packets,
so a payload could smuggle packets. Every PUBLISH topic is therefore validated here, as the packet is cut,
and a bad one closes the connection. The framer also counts the QoS 2 messages a client has not released
(PUBLISH seen, PUBREL not yet): amqtt keeps each one in the session without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from amqtt.adapters import ReaderAdapter  # type: ignore[import-untyped]
from amqtt.errors import AMQTTError, MQTTError, NoDataError  # type: ignore[import-untyped]
from amqtt.mqtt.connect import ConnectPacket  # type: ignore[import-untyped]
from amqtt.mqtt.packet import MQTTFixedHeader  # type: ignore[import-untyped]

__all__ = [
    "CONNACK_NOT_AUTHORIZED",
    "CONNACK_UNACCEPTABLE_PROTOCOL",
    "MAX_INFLIGHT_QOS2",
    "ConnectRequest",
    "FramedReader",
    "MalformedConnectError",
    "connack",
    "parse_connect",
    "valid_topic_name",
]

logger = logging.getLogger(__name__)

CONNECT = 1
PUBLISH = 3
PUBREL = 6
DISCONNECT = 14
CONNACK_UNACCEPTABLE_PROTOCOL = 0x01
CONNACK_NOT_AUTHORIZED = 0x05

_READ_CHUNK = 64 * 1024
# Control packets other than PUBLISH and CONNECT: a SUBSCRIBE with many filters fits in this.
MAX_CONTROL_PACKET = 64 * 1024
# Topic (2-byte length + up to 65535 bytes) and packet id around a payload.
_PUBLISH_OVERHEAD = 2 + 65535 + 2
# CONNECT: client id, will topic, username, password (each up to 65537 bytes) and the header.
_CONNECT_OVERHEAD = 4 * (2 + 65535) + 16
# MQTT 3.1.1 section 3.1.2.10: the server waits one and a half keep-alive periods.
_KEEPALIVE_GRACE = 1.5
# QoS 2 messages a client may leave unreleased (PUBLISH received, PUBREL not yet) on one connection, plus
# those its resumed session still holds; one more closes the connection. amqtt keeps every one of them,
# payload included, until the PUBREL: unbounded, that is up to 65535 x max_payload per client.
MAX_INFLIGHT_QOS2 = 32
# Characters a topic name must not contain [MQTT-3.3.2-2], [MQTT-4.7.3-2].
_FORBIDDEN_IN_TOPIC_NAME = frozenset("+#\x00")

# Called as on_violation(reason, topic) when the reader closes the connection for a limit.
ViolationSink = Callable[[str, str | None], None]
_TOO_MANY_UNRELEASED = f"more than {MAX_INFLIGHT_QOS2} QoS 2 messages awaiting PUBREL"


def connack(return_code: int) -> bytes:
    """A CONNACK with session-present 0 and `return_code`."""
    return bytes((0x20, 0x02, 0x00, return_code))


class _FrameError(Exception):
    def __init__(self, reason: str, topic: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.topic = topic


def valid_topic_name(raw_topic: bytes) -> bool:
    """True for a topic name amqtt parses as it is: UTF-8, non-empty, no wildcard, no NUL (at most 65535 bytes)."""
    if not raw_topic or len(raw_topic) > 65535:
        return False
    try:
        # Python's strict decoder refuses overlong forms and encoded surrogates, as MQTT 1.5.3 requires.
        topic = raw_topic.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return _FORBIDDEN_IN_TOPIC_NAME.isdisjoint(topic)


def _decode_topic(buffer: bytearray | bytes, start: int, end: int) -> str | None:
    """The topic of a PUBLISH whose variable header starts at `start`, if the bytes are there."""
    if end - start < 2:
        return None
    length = int.from_bytes(buffer[start : start + 2], "big")
    if end - start < 2 + length:
        return None
    return bytes(buffer[start + 2 : start + 2 + length]).decode("utf-8", errors="replace")


class FramedReader(ReaderAdapter):  # type: ignore[misc]
    """amqtt's reader for one client connection, serving whole, size-checked packets."""

    def __init__(
        self,
        stream: asyncio.StreamReader,
        *,
        max_payload: int,
        abort: Callable[[], None],
        on_violation: ViolationSink,
    ) -> None:
        self._stream = stream
        self._max_payload = max_payload
        self._max_publish = max_payload + _PUBLISH_OVERHEAD
        self._max_connect = max_payload + _CONNECT_OVERHEAD
        self._abort = abort
        self._on_violation = on_violation
        self._raw = bytearray()  # network bytes not yet cut into packets
        self._raw_pos = 0
        self._frame = b""  # the packet amqtt is reading
        self._pos = 0
        self._eof = False
        self._keepalive: float | None = None
        self._last_packet = time.monotonic()
        self._unreleased: set[int] = set()  # packet ids of QoS 2 PUBLISHes awaiting their PUBREL

    # -- the gate's side ---------------------------------------------------------------------------

    async def first_packet(self) -> bytes:
        """The first packet, left unread for amqtt. Empty bytes if the peer closed or broke a limit."""
        if not await self._next_frame():
            return b""
        return self._frame

    def set_keepalive(self, seconds: int) -> None:
        """Close the connection after 1.5 keep-alive periods without a packet (0: no keep-alive)."""
        self._keepalive = seconds * _KEEPALIVE_GRACE if seconds > 0 else None
        self._last_packet = time.monotonic()

    def hold_unreleased(self, packet_ids: Iterable[int]) -> None:
        """Count QoS 2 messages a resumed session still holds from an earlier connection against MAX_INFLIGHT_QOS2.

        Without this a client could leave MAX_INFLIGHT_QOS2 messages unreleased on every connection of a
        persistent session and pile them up across reconnects.
        """
        self._unreleased.update(packet_ids)
        if len(self._unreleased) > MAX_INFLIGHT_QOS2:
            self.close(_TOO_MANY_UNRELEASED)

    @property
    def unreleased_qos2(self) -> int:
        """QoS 2 messages received and not yet released by their PUBREL."""
        return len(self._unreleased)

    def close(self, reason: str, topic: str | None = None) -> None:
        """Stop serving packets and abort the connection; amqtt sees the end of the stream."""
        if self._eof:
            return
        self._eof = True
        self._frame = b""
        self._pos = 0
        self._raw.clear()
        self._raw_pos = 0
        self._on_violation(reason, topic)
        self._abort()

    # -- amqtt's side (ReaderAdapter) --------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._frame) and not await self._next_frame():
            return b""
        end = len(self._frame) if n < 0 else self._pos + n
        if end > len(self._frame):
            # amqtt's parser wants bytes beyond this packet: the packet lies about its own fields.
            self.close("malformed packet")
            return b""
        data = self._frame[self._pos : end]
        self._pos = end
        return data

    def feed_eof(self) -> None:
        self._eof = True

    # -- framing -----------------------------------------------------------------------------------

    async def _next_frame(self) -> bool:
        while True:
            if self._eof:
                # Let the packet tasks amqtt's reader loop has just created run before it sees the end
                # of the stream: it cancels whatever has not started, and those are the client's last
                # messages (QoS 0 loss on a quick publish-then-disconnect).
                await asyncio.sleep(0)
                return False
            try:
                frame = self._cut_frame()
            except _FrameError as e:
                self.close(e.reason, e.topic)
                continue
            if frame is not None:
                self._frame = frame
                self._pos = 0
                self._last_packet = time.monotonic()
                return True
            chunk = await self._receive()
            if chunk is None:
                continue
            if not chunk:
                self._eof = True
                continue
            if self._raw_pos:
                del self._raw[: self._raw_pos]
                self._raw_pos = 0
            self._raw += chunk

    async def _receive(self) -> bytes | None:
        """Network bytes; b'' at end of stream; None if the keep-alive expired (the reader is then closed)."""
        timeout = None
        if self._keepalive is not None:
            timeout = self._last_packet + self._keepalive - time.monotonic()
            if timeout <= 0:
                self.close("keep-alive expired")
                return None
        try:
            # StreamReader.read is cancel-safe (amqtt wraps reads in wait_for): nothing is lost.
            return await asyncio.wait_for(self._stream.read(_READ_CHUNK), timeout)
        except TimeoutError:
            self.close("keep-alive expired")
            return None
        except (ConnectionError, OSError):
            return b""

    def _cut_frame(self) -> bytes | None:
        raw = self._raw
        start = self._raw_pos
        available = len(raw) - start
        if available < 2:
            return None
        first = raw[start]
        packet_type = first >> 4
        remaining = 0
        multiplier = 1
        index = start + 1
        while True:
            if index >= len(raw):
                return None
            byte = raw[index]
            remaining += (byte & 0x7F) * multiplier
            index += 1
            if not byte & 0x80:
                break
            multiplier *= 128
            if multiplier > 128**3:
                raise _FrameError("malformed remaining length")
        header_end = index
        if packet_type == PUBLISH:
            if remaining > self._max_publish:
                raise _FrameError("payload too large", _decode_topic(raw, header_end, len(raw)))
        elif packet_type == CONNECT:
            if remaining > self._max_connect:
                raise _FrameError("CONNECT too large")
        elif remaining > MAX_CONTROL_PACKET:
            raise _FrameError("control packet too large")
        end = header_end + remaining
        if len(raw) < end:
            return None
        if packet_type == PUBLISH:
            self._check_publish(first, raw, header_end, end)
        elif packet_type == PUBREL and remaining >= 2:
            self._unreleased.discard(int.from_bytes(raw[header_end : header_end + 2], "big"))
        frame = bytes(raw[start:end])
        self._raw_pos = end
        return frame

    def _check_publish(self, first: int, raw: bytearray, header_end: int, end: int) -> None:
        """Refuse a PUBLISH amqtt would misparse or that breaks a limit; count an unreleased QoS 2 message."""
        qos = (first >> 1) & 0x03
        if qos == 3:
            raise _FrameError("malformed PUBLISH (QoS 3)")  # [MQTT-3.3.1-4]
        if end - header_end < 2:
            raise _FrameError("malformed PUBLISH")
        topic_end = header_end + 2 + int.from_bytes(raw[header_end : header_end + 2], "big")
        payload = end - topic_end - (2 if qos else 0)
        if payload < 0:
            raise _FrameError("malformed PUBLISH")
        if payload > self._max_payload:
            raise _FrameError("payload too large", _decode_topic(raw, header_end, end))
        # The topic is not passed on: it is what failed, and it is the client's to choose.
        if not valid_topic_name(bytes(raw[header_end + 2 : topic_end])):
            raise _FrameError("invalid topic name in PUBLISH")
        if not qos:
            return
        packet_id = int.from_bytes(raw[topic_end : topic_end + 2], "big")
        if packet_id == 0:
            raise _FrameError("malformed PUBLISH (packet id 0)")  # [MQTT-2.3.1-1]
        if qos == 2:
            self._unreleased.add(packet_id)
            if len(self._unreleased) > MAX_INFLIGHT_QOS2:
                raise _FrameError(_TOO_MANY_UNRELEASED, _decode_topic(raw, header_end, end))


@dataclass(frozen=True)
class ConnectRequest:
    """The fields of a CONNECT that the gate decides on, exactly as amqtt will read them."""

    protocol_name: str
    protocol_level: int
    client_id: str
    client_id_given: bool
    clean_session: bool
    keep_alive: int
    will_topic: str | None
    will_payload: bytes | None
    will_qos: int
    will_retain: bool


class MalformedConnectError(Exception):
    """The first packet is not a well-formed MQTT CONNECT."""


class _ExactReader(ReaderAdapter):  # type: ignore[misc]
    """Serves one packet's bytes and remembers whether the parser asked for more than there was."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self.overrun = False

    async def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        if end > len(self._data):
            self.overrun = True
        chunk = self._data[self._pos : end]
        self._pos = min(end, len(self._data))
        return chunk

    def feed_eof(self) -> None:
        pass

    @property
    def fully_read(self) -> bool:
        return self._pos == len(self._data) and not self.overrun


async def parse_connect(frame: bytes) -> ConnectRequest:
    """Parse a CONNECT with amqtt's own parser, so the gate checks exactly what amqtt will use.

    amqtt's parser does not stop at the end of the packet: a short field makes it read into the next
    packet, and a long packet leaves bytes that it then reads as another packet. Either is refused.
    """
    if not frame or frame[0] != CONNECT << 4:
        raise MalformedConnectError("the first packet is not a CONNECT")
    reader = _ExactReader(frame)
    try:
        header = await MQTTFixedHeader.from_stream(reader)
        packet = await ConnectPacket.from_stream(reader, fixed_header=header)
    except (AMQTTError, MQTTError, NoDataError, ValueError, UnicodeDecodeError) as e:
        raise MalformedConnectError(f"unparsable CONNECT: {type(e).__name__}") from e
    if not reader.fully_read:
        raise MalformedConnectError("CONNECT fields disagree with its length")
    if packet.reserved_flag:
        raise MalformedConnectError("CONNECT reserved flag set")
    will_flag = bool(packet.will_flag)
    will_qos = int(packet.will_qos) if will_flag else 0
    if will_qos > 2 or (not will_flag and (packet.will_qos or packet.will_retain_flag)):
        raise MalformedConnectError("invalid will flags")
    if bool(packet.password_flag) and not bool(packet.username_flag):
        raise MalformedConnectError("password without user name")
    will_payload = packet.will_message
    return ConnectRequest(
        protocol_name=str(packet.proto_name),
        protocol_level=int(packet.proto_level),
        client_id=str(packet.client_id),
        client_id_given=not packet.client_id_is_random,
        clean_session=bool(packet.clean_session_flag),
        keep_alive=int(packet.keep_alive),
        will_topic=packet.will_topic if will_flag else None,
        will_payload=bytes(will_payload) if will_flag and will_payload is not None else None,
        will_qos=will_qos,
        will_retain=bool(packet.will_retain_flag) if will_flag else False,
    )
