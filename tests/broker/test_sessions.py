"""Session attacks on amqtt's session table, Last Will checks, takeover, and the QoS 0 tail on disconnect."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import Any

import pytest

from thingward.broker.base import BrokerLimits, InboundMessage

WAIT = 5.0


def test_resumed_session_with_another_devices_certificate_refused(
    broker_factory: Any, pki: Any, device: Any, online: Any, allow_all: Any
) -> None:
    # amqtt checks a resumed session (clean_session=0) against the certificate of the connection that
    # created it: a cam2 certificate claiming id cam1 got cam1's session. The gate checks this connection,
    # whatever the policy says (allow-all here).
    broker = broker_factory(authorizer=allow_all)
    cam1_creds, cam2_creds = pki.device("cam1"), pki.device("cam2")
    cam1 = online(cam1_creds, broker.port, clean_session=False)
    assert cam1.subscribe("things/cam1/cmd") == 1
    cam1.close()
    assert broker.wait_until(lambda: broker.broker.connected_things() == set())
    intruder = device(cam2_creds, broker.port, client_id="cam1", clean_session=False)
    outcome = intruder.connect()
    assert not outcome.accepted and "Not authorized" in outcome.detail
    assert broker.broker.denials[("cam2", "connect")] == 1
    # cam1's stored session is intact: it resumes and its old subscription still delivers.
    back = device(cam1_creds, broker.port, clean_session=False)
    resumed = back.connect()
    assert resumed.accepted and resumed.session_present
    back.publish("things/cam1/cmd", b"reboot")
    assert back.next_message().payload == b"reboot"


def test_refused_connect_with_victims_id_leaves_victims_session_and_will_intact(
    broker_factory: Any, pki: Any, device: Any, online: Any, allow_all: Any
) -> None:
    # amqtt changes its session table before authentication: a refused CONNECT with the victim's id
    # deleted the victim's subscriptions (clean session) or overwrote its will. Allow-all policy: the
    # refusal comes from the certificate check alone.
    broker = broker_factory(authorizer=allow_all)
    monitor = online(pki.device("monitor"), broker.port)
    assert monitor.subscribe("things/cam2/status") == 1
    victim = online(pki.device("cam2"), broker.port, will=("things/cam2/status", b"cam2 offline", False))
    assert victim.subscribe("things/cam2/inbox") == 1
    attacker_creds = pki.device("cam1")
    for clean in (True, False):
        attacker = device(
            attacker_creds,
            broker.port,
            client_id="cam2",
            clean_session=clean,
            will=("things/cam2/status", b"forged", False),
        )
        assert not attacker.connect().accepted
    assert broker.broker.connected_things() == {"cam2", "monitor"}
    victim.publish("things/cam2/inbox", b"still subscribed")
    assert victim.next_message().payload == b"still subscribed"
    victim.drop_abruptly()
    will = monitor.next_message()
    assert (will.topic, will.payload) == ("things/cam2/status", b"cam2 offline")


def test_will_to_another_devices_command_topic_refused_at_connect(broker: Any, pki: Any, device: Any) -> None:
    outcome = device(pki.device("cam1"), broker.port, will=("things/cam2/cmd", b"unlock", True)).connect()
    assert not outcome.accepted and "Not authorized" in outcome.detail
    assert broker.broker.denials[("cam1", "connect")] == 1
    assert broker.broker._core.retained_messages == {}


def test_will_to_a_reserved_topic_refused_even_by_an_allow_all_policy(
    broker_factory: Any, pki: Any, device: Any, allow_all: Any
) -> None:
    broker = broker_factory(authorizer=allow_all)
    outcome = device(pki.device("cam1"), broker.port, will=("$SYS/broker/clients", b"0", True)).connect()
    assert not outcome.accepted


def test_will_to_own_topic_published_when_the_device_drops(broker: Any, pki: Any, online: Any) -> None:
    monitor = online(pki.device("monitor"), broker.port)
    assert monitor.subscribe("things/cam1/status") == 1
    cam1 = online(pki.device("cam1"), broker.port, will=("things/cam1/status", b"offline", False))
    cam1.drop_abruptly()
    message = monitor.next_message()
    assert (message.topic, message.payload) == ("things/cam1/status", b"offline")


def test_same_thing_connecting_twice_takes_over_the_older_connection(broker: Any, pki: Any, online: Any) -> None:
    # amqtt deletes the old session on a clean-session reconnect but leaves the old connection open
    # and publishing; the gate closes it [MQTT-3.1.4-2].
    creds = pki.device("cam1")
    first = online(creds, broker.port)
    second = online(creds, broker.port)
    assert first.disconnected.wait(5)
    assert broker.broker.connected_things() == {"cam1"}
    assert second.subscribe("things/cam1/#") == 1
    second.publish("things/cam1/x", b"after takeover")
    assert second.next_message().payload == b"after takeover"


def _raw_burst(pki: Any, creds: Any, port: int, payloads: list[bytes], written: threading.Event) -> None:
    """CONNECT with keep-alive 0, every PUBLISH (QoS 0) and DISCONNECT in one write, then close at once."""
    connect = bytes([0x10, 16, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 0, 0, 4]) + b"cam1"
    topic = b"\x00\x15things/cam1/telemetry"
    publishes = b"".join(bytes([0x30, len(topic) + len(p)]) + topic + p for p in payloads)
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(creds.cert, creds.key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(connect)
        if tls.recv(4) != b"\x20\x02\x00\x00":
            raise AssertionError("CONNECT refused")
        tls.sendall(publishes + b"\xe0\x00")
        # TLS close_notify right behind the data: the broker's TLS layer then hands over the last
        # packets and the end of the stream together, and amqtt's reader meets the end before
        # its packet tasks have run.
        tls.setblocking(False)
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
            tls.unwrap()
    written.set()


@pytest.mark.parametrize("client", ["mosquitto_pub keep-alive 60", "raw client keep-alive 0"])
def test_qos0_burst_then_disconnect_loses_nothing(broker_factory: Any, pki: Any, mosquitto: Any, client: str) -> None:
    # A client sends QoS 0 messages and DISCONNECTs right after the last one. amqtt drops the messages
    # still queued when it handles the DISCONNECT, and cancels the packet tasks its reader created but
    # has not run when the stream ends (with keep-alive 0 its reader never yields between packets).
    release = threading.Event()
    received: list[bytes] = []
    done = threading.Event()
    count = 2000

    def backlogged_sink(message: InboundMessage) -> None:
        # The first message holds the broker's loop until the publisher has sent everything: the whole
        # burst and the DISCONNECT then wait in the buffers, as on a loaded broker.
        if not received:
            release.wait(WAIT)
        received.append(message.payload)
        if len(received) == count:
            done.set()

    broker = broker_factory(limits=BrokerLimits(max_publish_per_second=1_000_000), on_message=backlogged_sink)
    creds = pki.device("cam1")
    payloads = [f"m{i}".encode() for i in range(count)]
    if client.startswith("mosquitto"):
        lines = "".join(f"{p.decode()}\n" for p in payloads)
        result = mosquitto.pub(broker.port, creds, "things/cam1/telemetry", "", stdin=lines)
        release.set()
        assert result.returncode == 0, result.stderr
    else:
        written = threading.Event()
        sender = threading.Thread(target=_raw_burst, args=(pki, creds, broker.port, payloads, written))
        sender.start()
        written.wait(WAIT)  # everything is in the socket buffers, the broker's loop still held
        release.set()
        sender.join(WAIT)
    assert done.wait(WAIT), f"{len(received)} of {count} messages reached the broker"
    assert received == payloads
