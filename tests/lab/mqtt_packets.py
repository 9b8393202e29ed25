"""Raw MQTT 3.1.1 (and a little 5) packets for tests that must send what a well-behaved client never would."""

from __future__ import annotations

import struct
from dataclasses import dataclass

PUBACK, PUBREC, SUBACK, UNSUBACK, PINGRESP = 4, 5, 9, 11, 13


def _rl(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def _s(text: str | bytes) -> bytes:
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _rl(len(body)) + body


def connect_packet(
    client_id: str | bytes,
    *,
    clean: bool = True,
    keepalive: int = 30,
    will: tuple[str, bytes, int, bool] | None = None,  # topic, payload, qos, retain
    level: int = 4,
    name: bytes = b"MQTT",
    username: str | None = None,
) -> bytes:
    flags = 0x02 if clean else 0
    payload = _s(client_id)
    if will is not None:
        _topic, _message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
    props = b"\x00" if level == 5 else b""
    if will is not None:
        payload += (b"\x00" if level == 5 else b"") + _s(will[0]) + _s(will[1])
    if username is not None:
        flags |= 0x80
        payload += _s(username)
    body = _s(name) + bytes([level, flags]) + struct.pack("!H", keepalive) + props + payload
    return packet(0x10, body)


def subscribe_packet(pid: int, *filters: str, qos: int = 1, v5: bool = False) -> bytes:
    body = struct.pack("!H", pid) + (b"\x00" if v5 else b"")
    for f in filters:
        body += _s(f) + bytes([qos])
    return packet(0x82, body)


def unsubscribe_packet(pid: int, *filters: str) -> bytes:
    return packet(0xA2, struct.pack("!H", pid) + b"".join(_s(f) for f in filters))


def publish_packet(
    topic: str | bytes, payload: bytes, *, qos: int = 0, retain: bool = False, pid: int = 1, dup: bool = False
) -> bytes:
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    body = _s(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return packet(first, body)


def pubrel_packet(pid: int) -> bytes:
    return packet(0x62, struct.pack("!H", pid))


def puback_packet(pid: int) -> bytes:
    return packet(0x40, struct.pack("!H", pid))


DISCONNECT = b"\xe0\x00"
PINGREQ = b"\xc0\x00"


@dataclass
class Packet:
    type: int
    flags: int
    body: bytes

    @property
    def connack_code(self) -> int:
        return self.body[1]

    @property
    def packet_id(self) -> int:
        return struct.unpack("!H", self.body[:2])[0]

    def publish(self) -> tuple[str, bytes, int, bool]:
        """topic, payload, qos, retain of a PUBLISH."""
        qos = (self.flags >> 1) & 3
        length = struct.unpack("!H", self.body[:2])[0]
        topic = self.body[2 : 2 + length].decode()
        start = 2 + length + (2 if qos else 0)
        return topic, self.body[start:], qos, bool(self.flags & 1)


class Closed(Exception):
    pass
