"""Per-client quotas and strict PUBLISH framing: what one device may pile up in the broker, and what it may hide.

Attacks stopped here: a will that outlives the policy that allowed it, tens of thousands of subscriptions,
unbounded retained messages, unreleased QoS 2 messages held in the broker, and packets smuggled inside a
PUBLISH that amqtt discards half way. Devices speak raw MQTT (byte by byte over TLS) where the attack
needs packets a well-behaved client library never sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.mqtt_packets import (
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBREC,
    SUBACK,
    UNSUBACK,
    Closed,
    Packet,
    connect_packet,
    puback_packet,
    publish_packet,
    pubrel_packet,
    subscribe_packet,
    unsubscribe_packet,
)
from thingward.broker import _amqtt_core
from thingward.broker._amqtt_core import MAX_RETAINED_PER_THING, MAX_SUBSCRIPTIONS_PER_CLIENT
from thingward.broker._framing import MAX_INFLIGHT_QOS2, FramedReader, valid_topic_name

WAIT = 5.0

# -- a raw MQTT 3.1.1 client ------------------------------------------------------------------------------


@dataclass
class RawDevice:
    """A blocking TLS socket speaking raw MQTT; QoS 1 deliveries are acknowledged as they are read."""

    sock: ssl.SSLSocket
    buf: bytearray = field(default_factory=bytearray)
    skipped: list[Packet] = field(default_factory=list)  # PUBLISHes `expect` passed over, for `publishes_until`

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, timeout: float = WAIT) -> Packet:
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                length, multiplier, index = 0, 1, 1
                while index < len(self.buf):
                    byte = self.buf[index]
                    length += (byte & 0x7F) * multiplier
                    multiplier *= 128
                    index += 1
                    if not byte & 0x80:
                        break
                else:
                    index = -1
                if index > 0 and len(self.buf) >= index + length:
                    packet = Packet(self.buf[0] >> 4, self.buf[0] & 0x0F, bytes(self.buf[index : index + length]))
                    del self.buf[: index + length]
                    if packet.type == 3 and (packet.flags >> 1) & 3 == 1:
                        self.send(puback_packet(packet.packet_id))
                    return packet
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise
            except OSError as e:
                raise Closed(repr(e)) from e
            if not chunk:
                raise Closed("eof")
            self.buf += chunk

    def expect(self, packet_type: int, timeout: float = WAIT) -> Packet:
        """The next packet of `packet_type`, skipping others (PUBLISHes are kept in `skipped`)."""
        deadline = time.monotonic() + timeout
        while True:
            packet = self.read(max(0.0, deadline - time.monotonic()))
            if packet.type == packet_type:
                return packet
            if packet.type == 3:
                self.skipped.append(packet)

    def subscribe(self, pid: int, *filters: str) -> list[int]:
        self.send(subscribe_packet(pid, *filters))
        suback = self.expect(SUBACK)
        assert suback.packet_id == pid
        return list(suback.body[2:])

    def unsubscribe(self, pid: int, *filters: str) -> None:
        self.send(unsubscribe_packet(pid, *filters))
        assert self.expect(UNSUBACK).packet_id == pid

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, pid: int = 1) -> None:
        """QoS 1, waiting for the PUBACK (which comes after the broker has handled the message)."""
        self.send(publish_packet(topic, payload, qos=1, retain=retain, pid=pid))
        assert self.expect(PUBACK).packet_id == pid

    def publishes_until(self, sentinel_topic: str) -> list[tuple[str, bytes, bool]]:
        """Every PUBLISH received up to and including the first on `sentinel_topic`."""
        seen: list[tuple[str, bytes, bool]] = []
        deadline = time.monotonic() + WAIT
        while not seen or seen[-1][0] != sentinel_topic:
            packet = self.skipped.pop(0) if self.skipped else self.read(max(0.0, deadline - time.monotonic()))
            if packet.type == 3:
                topic, payload, _qos, retain = packet.publish()
                seen.append((topic, payload, retain))
        return seen

    def packets_until_closed(self, timeout: float = 3.0) -> list[int] | None:
        """Types of the packets received until the server closed the connection; None if it stayed open."""
        seen: list[int] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                seen.append(self.read(max(0.0, deadline - time.monotonic())).type)
        except Closed:
            return seen
        except TimeoutError:
            return None


@pytest.fixture
def raw(pki: Any) -> Iterator[Callable[..., RawDevice]]:
    """raw(port, creds, clean=True) -> a RawDevice whose CONNECT was accepted."""
    made: list[RawDevice] = []

    def connect(port: int, creds: Any, *, clean: bool = True) -> RawDevice:
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        context.load_cert_chain(creds.cert, creds.key)
        plain = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        device = RawDevice(context.wrap_socket(plain, server_hostname="localhost"))
        made.append(device)
        device.send(connect_packet(creds.name, clean=clean))
        connack = device.expect(2)
        assert connack.body[1] == 0, f"CONNACK {connack.body[1]}"
        return device

    yield connect
    for device in made:
        with contextlib.suppress(OSError):
            device.sock.close()


def on_loop(broker: Any, fn: Callable[[], Any]) -> Any:
    """Run `fn` on the broker's loop, so amqtt's state is read without racing it."""

    async def call() -> Any:
        return fn()

    return broker.call(call())


def retained_topics(broker: Any) -> set[str]:
    return set(on_loop(broker, lambda: list(broker.broker._core._retained_messages)))


def fence(device: RawDevice, thing: str) -> None:
    """Return once the broker has handled what `device` sent before (it must be subscribed to its fence topic).

    A PUBACK is no such proof: amqtt sends it before the message is routed (and retained).
    """
    device.send(publish_packet(f"things/{thing}/fence", b"f"))
    device.publishes_until(f"things/{thing}/fence")


# == Hole 2: a will outlives the policy that allowed it ======================================================


class PublishRevoked:
    """The test authorizer, except that `thing` may no longer publish anywhere (it may still connect)."""

    def __init__(self, base: Any, thing: str) -> None:
        self.base = base
        self.thing = thing

    def authorize(self, thing: str, action: str, topic: str) -> bool:
        if thing == self.thing and action == "publish":
            return False
        return bool(self.base.authorize(thing, action, topic))


@pytest.mark.parametrize("revoked", [False, True], ids=["policy-unchanged", "publish-revoked"])
def test_will_not_published_once_the_policy_takes_the_topic_away(
    broker: Any, pki: Any, raw: Any, online: Any, authorizer: Any, revoked: bool
) -> None:
    monitor = raw(broker.port, pki.device("monitor"))  # may read every things/ topic
    assert monitor.subscribe(1, "things/cam1/#", "things/monitor/sentinel") == [1, 1]
    cam1 = online(pki.device("cam1"), broker.port, will=("things/cam1/status", b"offline", True))
    if revoked:
        broker.broker.set_authorizer(PublishRevoked(authorizer, "cam1"))
    cam1.drop_abruptly()  # no DISCONNECT: the will fires, unless refused
    assert broker.wait_until(lambda: "cam1" not in broker.broker.connected_things())
    monitor.publish("things/monitor/sentinel", b"s", pid=2)  # routed after the will, if there is one
    seen = [(topic, payload) for topic, payload, _ in monitor.publishes_until("things/monitor/sentinel")]
    if not revoked:  # control: the will is published and retained while the policy allows it
        assert seen == [("things/cam1/status", b"offline"), ("things/monitor/sentinel", b"s")]
        assert "things/cam1/status" in retained_topics(broker)
        return
    assert seen == [("things/monitor/sentinel", b"s")]
    assert "things/cam1/status" not in retained_topics(broker)
    assert broker.broker.denials[("cam1", "publish")] == 1


# == Hole 3: one client holding tens of thousands of subscriptions ===========================================


def test_subscriptions_over_the_per_client_quota_refused(broker: Any, pki: Any, raw: Any) -> None:
    cam1 = raw(broker.port, pki.device("cam1"))
    filters = [f"things/cam1/s/{i}" for i in range(MAX_SUBSCRIPTIONS_PER_CLIENT)]
    assert cam1.subscribe(1, *filters) == [1] * MAX_SUBSCRIPTIONS_PER_CLIENT
    extra = [f"things/cam1/extra/{i}" for i in range(5)]
    # Over the quota: refused, and counted; a filter already held is still granted (it adds nothing).
    assert cam1.subscribe(2, *extra, filters[0]) == [0x80] * 5 + [1]
    assert broker.broker.denials[("cam1", "subscribe")] == 5
    subscribed = set(on_loop(broker, lambda: list(broker.broker._core._subscriptions)))
    assert subscribed.isdisjoint(extra)
    # Unsubscribing frees quota; the quota is per client.
    cam1.unsubscribe(3, filters[0])
    assert cam1.subscribe(4, extra[0], extra[1]) == [1, 0x80]
    cam2 = raw(broker.port, pki.device("cam2"))
    assert cam2.subscribe(1, *[f"things/cam2/s/{i}" for i in range(MAX_SUBSCRIPTIONS_PER_CLIENT)]) == [1] * 100


def test_subscription_quota_not_escaped_by_reconnecting(broker: Any, pki: Any, raw: Any) -> None:
    creds = pki.device("cam1")
    cam1 = raw(broker.port, creds, clean=False)
    assert set(cam1.subscribe(1, *[f"things/cam1/a/{i}" for i in range(MAX_SUBSCRIPTIONS_PER_CLIENT)])) == {1}
    cam1.send(DISCONNECT)
    assert broker.wait_until(lambda: broker.broker.connected_things() == set())
    cam1 = raw(broker.port, creds, clean=False)  # the persistent session keeps its filters, and its quota
    assert cam1.subscribe(2, "things/cam1/b/0") == [0x80]
    cam1.send(DISCONNECT)
    assert broker.wait_until(lambda: broker.broker.connected_things() == set())
    cam1 = raw(broker.port, creds, clean=True)  # a clean session drops them: the quota is free again
    assert set(cam1.subscribe(3, *[f"things/cam1/c/{i}" for i in range(MAX_SUBSCRIPTIONS_PER_CLIENT)])) == {1}
    held = on_loop(broker, lambda: sorted(broker.broker._core._subscriptions))
    assert held == sorted(f"things/cam1/c/{i}" for i in range(MAX_SUBSCRIPTIONS_PER_CLIENT))


def test_subscribe_unsubscribe_churn_leaves_no_filters_behind(broker: Any, pki: Any, raw: Any) -> None:
    # amqtt keeps an emptied entry for every filter ever subscribed, and matches each message against all
    # of them: churning fresh filters would slow the whole broker down as surely as holding them.
    cam1 = raw(broker.port, pki.device("cam1"))
    for round_number in range(3):
        filters = [f"things/cam1/churn/{round_number}/{i}" for i in range(MAX_SUBSCRIPTIONS_PER_CLIENT)]
        assert set(cam1.subscribe(round_number + 1, *filters)) == {1}
        cam1.unsubscribe(round_number + 10, *filters)
    assert on_loop(broker, lambda: dict(broker.broker._core._subscriptions)) == {}


# == Hole 4: unbounded retained messages from one thing =======================================================


def test_retained_messages_over_the_per_thing_quota_delivered_but_not_kept(broker: Any, pki: Any, raw: Any) -> None:
    monitor = raw(broker.port, pki.device("monitor"))
    assert monitor.subscribe(1, "things/cam1/#") == [1]
    cam1 = raw(broker.port, pki.device("cam1"))
    over = 5
    burst = b"".join(
        publish_packet(f"things/cam1/r/{i}", b"x" * 64, retain=True) for i in range(MAX_RETAINED_PER_THING + over)
    )
    cam1.send(burst)
    cam1.publish("things/cam1/sentinel", b"s", pid=1)  # not retained: the PUBACK orders it after the burst
    live = monitor.publishes_until("things/cam1/sentinel")
    assert len(live) == MAX_RETAINED_PER_THING + over + 1  # over-quota messages are still delivered live
    held = {t for t in retained_topics(broker) if t.startswith("things/cam1/")}
    assert held == {f"things/cam1/r/{i}" for i in range(MAX_RETAINED_PER_THING)}
    assert broker.broker.denials[("cam1", "retain")] == over
    # Clearing always works and frees quota for a new retained message.
    assert cam1.subscribe(2, "things/cam1/fence") == [1]
    cam1.publish("things/cam1/r/0", b"", retain=True, pid=3)
    cam1.publish("things/cam1/r/new", b"fits", retain=True, pid=4)
    fence(cam1, "cam1")
    held = {t for t in retained_topics(broker) if t.startswith("things/cam1/")}
    assert "things/cam1/r/0" not in held and "things/cam1/r/new" in held
    assert on_loop(broker, lambda: broker.broker._core.retained_usage("cam1"))[0] == MAX_RETAINED_PER_THING
    # The quota is per thing.
    cam2 = raw(broker.port, pki.device("cam2"))
    cam2.publish("things/cam2/state", b"on", retain=True, pid=1)
    assert broker.wait_until(lambda: "things/cam2/state" in retained_topics(broker))


def test_retained_bytes_over_the_per_thing_quota_not_kept(
    broker: Any, pki: Any, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic_bytes = len("things/cam1/b/0")
    monkeypatch.setattr(_amqtt_core, "MAX_RETAINED_BYTES_PER_THING", 3 * (topic_bytes + 300))
    cam1 = raw(broker.port, pki.device("cam1"))
    assert cam1.subscribe(1, "things/cam1/fence") == [1]
    core = broker.broker._core
    for i in range(3):
        cam1.publish(f"things/cam1/b/{i}", b"x" * 300, retain=True, pid=i + 1)
    fence(cam1, "cam1")
    assert on_loop(broker, lambda: core.retained_usage("cam1")) == (3, 3 * (topic_bytes + 300))
    cam1.publish("things/cam1/b/3", b"x", retain=True, pid=4)  # one byte over
    fence(cam1, "cam1")
    assert "things/cam1/b/3" not in retained_topics(broker)
    # Replacing its own message with a smaller one fits (the old bytes come back)...
    cam1.publish("things/cam1/b/0", b"small", retain=True, pid=5)
    fence(cam1, "cam1")
    assert on_loop(broker, lambda: core.retained_usage("cam1")) == (3, 3 * topic_bytes + 605)
    # ...and a replacement that does not fit is not kept, nor is the outdated message it replaced.
    cam1.publish("things/cam1/b/0", b"x" * 400, retain=True, pid=6)
    fence(cam1, "cam1")
    assert {t for t in retained_topics(broker) if t.startswith("things/cam1/")} == {
        "things/cam1/b/1",
        "things/cam1/b/2",
    }
    assert on_loop(broker, lambda: core.retained_usage("cam1")) == (2, 2 * (topic_bytes + 300))
    assert broker.broker.denials[("cam1", "retain")] == 2


# == Hole 5: unreleased QoS 2 messages held without bound ===================================================


def test_unreleased_qos2_messages_over_the_bound_close_the_connection(broker: Any, pki: Any, raw: Any) -> None:
    cam1 = raw(broker.port, pki.device("cam1"))
    for pid in range(1, MAX_INFLIGHT_QOS2 + 1):
        cam1.send(publish_packet("things/cam1/q2", b"x" * 1000, qos=2, pid=pid))
    assert sorted(cam1.expect(PUBREC).packet_id for _ in range(MAX_INFLIGHT_QOS2)) == list(
        range(1, MAX_INFLIGHT_QOS2 + 1)
    )
    cam1.send(PINGREQ)
    assert cam1.expect(PINGRESP)  # at the bound, still connected
    cam1.send(publish_packet("things/cam1/q2", b"x" * 1000, qos=2, pid=MAX_INFLIGHT_QOS2 + 1))
    seen = cam1.packets_until_closed()
    assert seen is not None and PUBREC not in seen


def test_released_qos2_messages_do_not_count_against_the_bound(broker: Any, pki: Any, raw: Any) -> None:
    cam1 = raw(broker.port, pki.device("cam1"))
    for pid in range(1, 3 * MAX_INFLIGHT_QOS2 + 1):
        cam1.send(publish_packet(f"things/cam1/q2/{pid}", b"x", qos=2, pid=pid))
        cam1.send(pubrel_packet(pid))
    cam1.publish("things/cam1/sentinel", b"s", pid=1)
    received = []
    while len(received) < 3 * MAX_INFLIGHT_QOS2:
        received.append(broker.next_message())
    assert len({m.topic for m in received}) == 3 * MAX_INFLIGHT_QOS2


def test_unreleased_qos2_messages_of_a_resumed_session_still_count(broker: Any, pki: Any, raw: Any) -> None:
    creds = pki.device("cam1")
    cam1 = raw(broker.port, creds, clean=False)
    for pid in range(1, MAX_INFLIGHT_QOS2 + 1):
        cam1.send(publish_packet("things/cam1/q2", b"x" * 1000, qos=2, pid=pid))
    for _ in range(MAX_INFLIGHT_QOS2):
        cam1.expect(PUBREC)
    cam1.send(DISCONNECT)
    assert broker.wait_until(lambda: broker.broker.connected_things() == set())
    cam1 = raw(broker.port, creds, clean=False)
    # amqtt still holds the messages and asks for their PUBREL again (read them all: a connection closed
    # while amqtt is still sending them keeps its task waiting for PUBRELs that cannot come, for 10 s).
    assert sorted(cam1.expect(PUBREC).packet_id for _ in range(MAX_INFLIGHT_QOS2)) == list(
        range(1, MAX_INFLIGHT_QOS2 + 1)
    )
    cam1.send(publish_packet("things/cam1/q2", b"x" * 1000, qos=2, pid=1000))
    assert cam1.packets_until_closed() is not None
    # Closed while amqtt was still waiting for those PUBRELs: the session must end, not linger "connected".
    assert broker.wait_until(lambda: broker.broker.connected_things() == set())


# == Hole 8: packets smuggled inside a PUBLISH that amqtt discards ===========================================


def test_packets_hidden_in_a_publish_with_a_wildcard_topic_not_processed(broker: Any, pki: Any, raw: Any) -> None:
    cam1 = raw(broker.port, pki.device("cam1"))
    hidden = PINGREQ + subscribe_packet(77, "things/cam1/commands/#")
    # amqtt raises on '+' after the topic and would read the payload as packets: a PINGRESP and a SUBACK.
    cam1.send(publish_packet("things/cam1/+", hidden))
    seen = cam1.packets_until_closed()
    assert seen is not None, "the connection stayed open"
    assert PINGRESP not in seen and SUBACK not in seen
    assert broker.messages.empty()


# -- the framer on its own (no sockets) ---------------------------------------------------------------------


class _Stream(asyncio.StreamReader):
    """A StreamReader fed in the given chunk sizes, one per read."""

    def __init__(self, data: bytes, sizes: list[int] | None = None) -> None:
        super().__init__()
        self._pending = data
        self._sizes = sizes or [len(data) or 1]

    async def read(self, n: int = -1) -> bytes:
        if not self._pending:
            return b""
        size = max(self._sizes[0] if len(self._sizes) == 1 else self._sizes.pop(0), 1)
        chunk, self._pending = self._pending[:size], self._pending[size:]
        return chunk


def _frames(data: bytes, sizes: list[int] | None = None) -> tuple[list[bytes], list[str]]:
    """The packets a FramedReader serves for `data`, and the violations it reported."""

    async def run() -> tuple[list[bytes], list[str]]:
        violations: list[str] = []
        reader = FramedReader(
            _Stream(data, sizes),
            max_payload=1000,
            abort=lambda: None,
            on_violation=lambda reason, _topic: violations.append(reason),
        )
        frames = []
        while first := await reader.read(1):  # as amqtt reads: the fixed header, then the rest
            header = bytearray(first)
            while (byte := await reader.read(1))[0] & 0x80:
                header += byte
            header += byte
            length = sum((b & 0x7F) << (7 * i) for i, b in enumerate(header[1:]))
            frames.append(bytes(header) + await reader.read(length))
        return frames, violations

    return asyncio.run(run())


_VALID_TOPIC = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="+#\x00"), min_size=1, max_size=20)


@settings(max_examples=100, deadline=None)
@given(
    messages=st.lists(st.tuples(_VALID_TOPIC, st.binary(max_size=300), st.sampled_from([0, 1, 2])), max_size=8),
    sizes=st.lists(st.integers(min_value=1, max_value=700), max_size=30),
)
def test_framer_passes_valid_publishes_whole_however_the_network_splits_them(
    messages: list[tuple[str, bytes, int]], sizes: list[int]
) -> None:
    packets = [publish_packet(topic, payload, qos=qos, pid=i + 1) for i, (topic, payload, qos) in enumerate(messages)]
    assert _frames(b"".join(packets), sizes) == (packets, [])


@pytest.mark.parametrize(
    "topic",
    [
        b"things/cam1/+",
        b"things/cam1/#",
        b"things/cam1/x\x00",
        b"",
        b"things/cam1/\xff",  # not UTF-8
        b"things/cam1/\xc0\xaf",  # an overlong '/'
        b"things/cam-\xed\xa0\x80b",  # a UTF-8-encoded surrogate
    ],
)
def test_framer_closes_on_a_publish_topic_amqtt_would_misread(topic: bytes) -> None:
    assert not valid_topic_name(topic)
    smuggled = PINGREQ + subscribe_packet(1, "things/cam1/#")
    frames, violations = _frames(publish_packet(topic, smuggled, qos=1) + PINGREQ)
    assert frames == []
    assert violations == ["invalid topic name in PUBLISH"]


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(bytes([0x36]) + publish_packet("things/cam1/x", b"p", qos=1)[1:], id="qos-3"),
        pytest.param(publish_packet("things/cam1/x", b"p", qos=1, pid=0), id="packet-id-0"),
    ],
)
def test_framer_closes_on_a_malformed_publish(packet: bytes) -> None:
    frames, violations = _frames(packet + PINGREQ)
    assert frames == [] and len(violations) == 1 and violations[0].startswith("malformed PUBLISH")


def test_framer_bounds_unreleased_qos2_messages() -> None:
    held = b"".join(publish_packet("t", b"p", qos=2, pid=pid) for pid in range(1, MAX_INFLIGHT_QOS2 + 1))
    again = publish_packet("t", b"p", qos=2, pid=1)  # a retransmission of a held message: no new one
    released = pubrel_packet(1) + publish_packet("t", b"p", qos=2, pid=1000)  # one released, one new
    frames, violations = _frames(held + again + released)
    assert len(frames) == MAX_INFLIGHT_QOS2 + 3 and violations == []
    frames, violations = _frames(held + publish_packet("t", b"p", qos=2, pid=1000) + PINGREQ)
    assert len(frames) == MAX_INFLIGHT_QOS2 and len(violations) == 1 and "QoS 2" in violations[0]


def test_framer_counts_what_a_resumed_session_still_holds() -> None:
    async def run() -> tuple[int, list[str]]:
        violations: list[str] = []
        reader = FramedReader(
            _Stream(publish_packet("t", b"p", qos=2, pid=1000)),
            max_payload=1000,
            abort=lambda: None,
            on_violation=lambda reason, _topic: violations.append(reason),
        )
        reader.hold_unreleased(range(1, MAX_INFLIGHT_QOS2 + 1))
        held = reader.unreleased_qos2
        await reader.first_packet()
        return held, violations

    held, violations = asyncio.run(run())
    assert held == MAX_INFLIGHT_QOS2 and len(violations) == 1
