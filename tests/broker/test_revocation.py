"""Revocation and policy changes reach devices already connected, and cannot be dodged by resuming TLS."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

# MQTT 3.1.1 CONNECT for client id "cam1", clean session, keep-alive 30; and a DISCONNECT.
CONNECT_CAM1 = bytes([0x10, 16, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 30, 0, 4]) + b"cam1"
DISCONNECT = b"\xe0\x00"
CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


def test_revoked_device_dropped_within_a_second_and_refused_after(
    broker: Any, pki: Any, device: Any, online: Any, mosquitto: Any
) -> None:
    cam1_creds = pki.device("cam1")
    monitor = online(pki.device("monitor"), broker.port)
    assert monitor.subscribe("things/cam1/status") == 1
    assert monitor.subscribe("things/monitor/sentinel") == 1
    cam2 = online(pki.device("cam2"), broker.port)
    cam1 = online(cam1_creds, broker.port, will=("things/cam1/status", b"offline", False))

    pki.write_crl(cam1_creds.serial)
    broker.broker.reload_crl()
    started = time.monotonic()
    assert broker.call(broker.broker.disconnect("cam1")) == 1
    assert cam1.disconnected.wait(1.0), "the revoked device is still connected after a second"
    assert time.monotonic() - started < 1.0
    assert "cam1" not in broker.broker.connected_things()

    assert not device(cam1_creds, broker.port).connect().accepted
    assert mosquitto.pub(broker.port, cam1_creds, "things/cam1/x", "back?").returncode != 0
    # The will was cleared before the drop, and the other devices are untouched.
    monitor.publish("things/monitor/sentinel", b"s")
    assert [m.topic for m in monitor.messages_until("things/monitor/sentinel")] == ["things/monitor/sentinel"]
    assert broker.broker.connected_things() == {"cam2", "monitor"}
    assert cam2.subscribe("things/cam2/#") == 1


def test_disconnect_forgets_the_persistent_session(broker: Any, pki: Any, device: Any, online: Any) -> None:
    creds = pki.device("cam1")
    online(creds, broker.port, clean_session=False).subscribe("things/cam1/cmd")
    assert broker.call(broker.broker.disconnect("cam1")) == 1
    again = device(creds, broker.port, clean_session=False)
    outcome = again.connect()
    assert outcome.accepted and not outcome.session_present


def test_disconnect_of_an_unknown_thing_closes_nothing(broker: Any) -> None:
    assert broker.call(broker.broker.disconnect("nobody")) == 0


def _tls12_client(pki: Any, creds: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(creds.cert, creds.key)
    return context


def _mqtt_connect(context: ssl.SSLContext, port: int, session: ssl.SSLSession | None) -> tuple[bytes, Any, bool]:
    """Handshake (resuming `session` if given), CONNECT; returns (reply, TLS session, whether it was resumed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            tls = context.wrap_socket(raw, server_hostname="localhost", session=session)
        except (ConnectionError, ssl.SSLError):
            return b"", None, False  # refused in the handshake
        with tls:
            reused = tls.session_reused
            new_session = tls.session
            reply = b""
            try:
                tls.sendall(CONNECT_CAM1)
                reply = tls.recv(4)
                if reply == CONNACK_ACCEPTED:
                    tls.sendall(DISCONNECT)
                    # Wait for the server's close: OpenSSL keeps a session resumable only after a
                    # clean TLS shutdown.
                    while tls.recv(64):
                        pass
            except (ConnectionError, ssl.SSLError):
                pass
            return reply, new_session, reused


def test_revoked_device_cannot_come_back_by_resuming_its_tls_session(broker: Any, pki: Any) -> None:
    # A resumed TLS session skips certificate verification (TLS 1.2 session ids cannot be turned off
    # from Python): the broker checks the certificate of every connection against the current CRL.
    creds = pki.device("cam1")
    context = _tls12_client(pki, creds)
    reply, session, _ = _mqtt_connect(context, broker.port, None)
    assert reply == CONNACK_ACCEPTED
    reply, session, reused = _mqtt_connect(context, broker.port, session)
    assert reused and reply == CONNACK_ACCEPTED  # control: resumption works for a valid device
    assert broker.wait_until(lambda: broker.broker.connected_things() == set())

    pki.write_crl(creds.serial)
    broker.broker.reload_crl()
    reply, _, reused = _mqtt_connect(context, broker.port, session)
    assert reused, "the server did not resume the session, so this test proves nothing"
    assert reply != CONNACK_ACCEPTED
    assert broker.broker.denials[("cam1", "connect")] == 1


def test_second_revocation_in_the_same_second_takes_effect(broker: Any, pki: Any, device: Any) -> None:
    # Adding a CRL to a live OpenSSL context is ignored unless its lastUpdate is strictly newer (one
    # second resolution); the broker builds a fresh context on every reload instead.
    cam1, cam2 = pki.device("cam1"), pki.device("cam2")
    pki.write_crl(cam1.serial)
    broker.broker.reload_crl()
    pki.write_crl(cam2.serial)
    broker.broker.reload_crl()
    assert not device(cam1, broker.port).connect().accepted
    assert not device(cam2, broker.port).connect().accepted
    # Refused by OpenSSL in the handshake, before the broker's own certificate recheck counts anything.
    assert broker.broker.denials[("cam1", "connect")] == 0
    assert broker.broker.denials[("cam2", "connect")] == 0
    assert device(pki.device("cam3"), broker.port).connect().accepted


def test_unreadable_crl_on_reload_keeps_the_previous_one(broker: Any, pki: Any, device: Any) -> None:
    from thingward.errors import ConfigError

    cam1 = pki.device("cam1")
    pki.write_crl(cam1.serial)
    broker.broker.reload_crl()
    pki.crl_file.write_text("not a CRL")
    try:
        broker.broker.reload_crl()
    except ConfigError:
        pass
    else:
        raise AssertionError("a broken CRL file was accepted")
    assert not device(cam1, broker.port).connect().accepted


def test_policy_change_applies_to_open_sessions(broker: Any, pki: Any, online: Any) -> None:
    cam1 = online(pki.device("cam1"), broker.port)
    cam2 = online(pki.device("cam2"), broker.port)
    assert cam1.subscribe("things/cam1/#") == 1

    class Tightened:
        """cam2 may no longer connect; nobody may receive things/cam1/secret any more."""

        def authorize(self, thing: str, action: str, topic: str) -> bool:
            if action == "connect":
                return topic == thing and thing != "cam2"
            if action == "receive" and topic == "things/cam1/secret":
                return False
            return topic.startswith(f"things/{thing}/")

    broker.broker.set_authorizer(Tightened())
    assert cam2.disconnected.wait(5)
    cam1.publish("things/cam1/secret", b"s3cret")
    cam1.publish("things/cam1/sentinel", b"s")
    assert [m.topic for m in cam1.messages_until("things/cam1/sentinel")] == ["things/cam1/sentinel"]
    assert broker.broker.connected_things() == {"cam1"}


def test_silent_client_closed_after_one_and_a_half_keepalives(broker: Any, pki: Any) -> None:
    # amqtt never closes a client whose keep-alive expired; the framing layer does [MQTT-3.1.2-24].
    creds = pki.device("cam1")
    connect = bytes([0x10, 16, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 1, 0, 4]) + b"cam1"  # keep-alive 1 s
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(creds.cert, creds.key)
    with (
        socket.create_connection(("127.0.0.1", broker.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(connect)
        assert tls.recv(4) == CONNACK_ACCEPTED
        started = time.monotonic()
        try:
            closed = tls.recv(16) == b""
        except (ConnectionError, ssl.SSLError):
            closed = True
        elapsed = time.monotonic() - started
    assert closed
    assert 1.0 <= elapsed < 4.0, elapsed
