"""Who gets in: mutual TLS with our CA, a live certificate naming a thing, the client id equal to that thing."""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
import warnings
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from thingward.pki.ca import build_root_ca, utcnow

# MQTT 3.1.1 CONNECT for client id "a", clean session, keep-alive 30.
CONNECT_A = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 30, 0, 1]) + b"a"


def test_device_with_own_certificate_publishes_and_receives_its_own_topic(broker: Any, pki: Any, online: Any) -> None:
    cam = online(pki.device("cam1"), broker.port)
    assert cam.subscribe("things/cam1/#") == 1
    cam.publish("things/cam1/telemetry", b'{"t": 21}')
    message = broker.next_message()
    assert (message.thing, message.topic, message.payload, message.qos, message.retain) == (
        "cam1",
        "things/cam1/telemetry",
        b'{"t": 21}',
        1,
        False,
    )
    received = cam.next_message()
    assert (received.topic, received.payload) == ("things/cam1/telemetry", b'{"t": 21}')
    assert broker.broker.connected_things() == {"cam1"}
    assert not broker.broker.denials


def test_mosquitto_clients_publish_and_subscribe_with_device_certificates(
    broker: Any, pki: Any, mosquitto: Any, authorizer: Any
) -> None:
    cam, monitor = pki.device("cam1"), pki.device("monitor")
    subscriber = mosquitto.sub(broker.port, monitor, "things/cam1/#")
    try:
        # The subscription exists once the broker lists the monitor as connected and its SUBSCRIBE was checked.
        assert broker.wait_until(lambda: broker.broker.connected_things() == {"monitor"})
        assert broker.wait_until(lambda: authorizer.called("monitor", "subscribe", "things/cam1/#"))
        result = mosquitto.pub(broker.port, cam, "things/cam1/motion", "zone=garden")
        assert result.returncode == 0, result.stderr
        out, err = subscriber.communicate(timeout=10)
    finally:
        subscriber.kill()
    assert subscriber.returncode == 0, err
    assert out.strip() == "things/cam1/motion zone=garden"
    assert broker.next_message().payload == b"zone=garden"


def test_client_without_certificate_refused_in_handshake(broker: Any, pki: Any, device: Any, mosquitto: Any) -> None:
    result = mosquitto.pub(broker.port, None, "things/cam1/x", "hi", client_id="cam1")
    assert result.returncode != 0
    assert "Connection Refused" not in result.stderr  # never reached MQTT: the TLS handshake failed
    outcome = device(None, broker.port, client_id="cam1").connect()
    assert not outcome.accepted, outcome.detail
    assert broker.broker.connected_things() == set()
    assert broker.messages.empty()


def test_certificate_from_another_ca_refused(broker: Any, pki: Any, device: Any, mosquitto: Any) -> None:
    rogue_ca = build_root_ca("rogue CA")
    forged = pki.device("cam1", ca=rogue_ca, label="forged-cam1")
    result = mosquitto.pub(broker.port, forged, "things/cam1/x", "hi")
    assert result.returncode != 0
    assert not device(forged, broker.port).connect().accepted
    assert broker.broker.connected_things() == set()


def test_expired_certificate_refused(broker: Any, pki: Any, device: Any) -> None:
    expired = pki.device("cam1", now=utcnow() - dt.timedelta(days=3), validity=dt.timedelta(days=1))
    outcome = device(expired, broker.port).connect()
    assert not outcome.accepted, outcome.detail
    assert broker.broker.connected_things() == set()


def test_certificate_revoked_before_start_refused(pki: Any, broker_factory: Any, device: Any, mosquitto: Any) -> None:
    cam = pki.device("cam1")
    pki.write_crl(cam.serial)
    broker = broker_factory()
    assert not device(cam, broker.port).connect().accepted
    assert mosquitto.pub(broker.port, cam, "things/cam1/x", "hi").returncode != 0
    assert broker.broker.connected_things() == set()


def test_client_id_other_than_certificate_thing_refused(
    broker_factory: Any, pki: Any, device: Any, mosquitto: Any, allow_all: Any
) -> None:
    # Enforced by the adapter itself: even a policy that allows everything cannot let cam2 be cam1.
    broker = broker_factory(authorizer=allow_all)
    cam2 = pki.device("cam2")
    outcome = device(cam2, broker.port, client_id="cam1").connect()
    assert not outcome.accepted
    assert "Not authorized" in outcome.detail
    result = mosquitto.pub(broker.port, cam2, "things/cam1/x", "hi", client_id="cam1")
    assert result.returncode != 0
    assert "not authorised" in result.stderr
    assert broker.broker.denials[("cam2", "connect")] == 2
    assert broker.broker.connected_things() == set()


def test_empty_client_id_refused(broker_factory: Any, pki: Any, device: Any, allow_all: Any) -> None:
    broker = broker_factory(authorizer=allow_all)
    outcome = device(pki.device("cam1"), broker.port, client_id="").connect()
    assert not outcome.accepted
    assert broker.broker.denials[("cam1", "connect")] == 1


def test_connect_denied_by_policy_refused(broker: Any, pki: Any, device: Any) -> None:
    class NoConnect:
        def authorize(self, thing: str, action: str, topic: str) -> bool:
            return action != "connect"

    broker.broker.set_authorizer(NoConnect())
    outcome = device(pki.device("cam1"), broker.port).connect()
    assert not outcome.accepted and "Not authorized" in outcome.detail


def test_ca_signed_certificate_naming_no_thing_refused(broker: Any, pki: Any, device: Any) -> None:
    # A client certificate from our own CA but without the thing URI: it names no identity.
    key = ec.generate_private_key(ec.SECP256R1())
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam1")]))
        .issuer_name(pki.ca.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.ca.key.public_key()), critical=False)
        .sign(pki.ca.key, hashes.SHA256())
    )
    creds = pki.save("cam1", cert, key, label="nameless")
    outcome = device(creds, broker.port).connect()
    assert not outcome.accepted
    assert broker.broker.denials[("<unknown>", "connect")] == 1


def test_plaintext_mqtt_to_tls_port_refused(broker: Any, pki: Any, mosquitto: Any) -> None:
    result = mosquitto.pub(broker.port, None, "things/cam1/x", "hi", client_id="cam1", tls=False)
    assert result.returncode != 0
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        sock.sendall(CONNECT_A)
        # The server answers a plaintext CONNECT with a TLS alert or nothing, never a CONNACK.
        reply = sock.recv(64)
        assert not reply.startswith(b"\x20\x02")
    assert broker.broker.connected_things() == set()


def _tls_client(pki: Any, creds: Any, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.ca_file)
    context.load_cert_chain(creds.cert, creds.key)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated versions are the point here
        context.minimum_version = version
        context.maximum_version = version
    return context


def _handshake(context: ssl.SSLContext, port: int) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        return str(tls.version())


def test_tls_1_1_refused(broker: Any, pki: Any) -> None:
    creds = pki.device("cam1")
    try:
        old = _tls_client(pki, creds, ssl.TLSVersion.TLSv1_1)
    except (ValueError, ssl.SSLError) as e:
        pytest.skip(f"the local OpenSSL cannot configure a TLS 1.1 client: {e}")
    # Control: the same client settings at TLS 1.2 complete the handshake.
    assert _handshake(_tls_client(pki, creds, ssl.TLSVersion.TLSv1_2), broker.port) == "TLSv1.2"
    try:
        version = _handshake(old, broker.port)
    except ssl.SSLError as e:
        if "NO_PROTOCOLS_AVAILABLE" in str(e).upper() or "NO PROTOCOLS AVAILABLE" in str(e).upper():
            pytest.skip(f"the local OpenSSL refuses to send a TLS 1.1 ClientHello: {e}")
        return  # the server ended the handshake (asyncio closes without flushing the alert)
    pytest.fail(f"a TLS 1.1 handshake succeeded ({version})")


def test_first_packet_not_connect_closed_without_connack(broker: Any, pki: Any) -> None:
    creds = pki.device("cam1")
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(creds.cert, creds.key)
    with (
        socket.create_connection(("127.0.0.1", broker.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(bytes([0x82, 8, 0, 1, 0, 3]) + b"a/#" + b"\x00")  # a SUBSCRIBE first
        assert tls.recv(16) == b""
    assert broker.broker.denials[("cam1", "connect")] == 1


def test_connect_with_trailing_bytes_refused(broker: Any, pki: Any) -> None:
    # amqtt's CONNECT parser stops at its last field and would read trailing bytes as a next packet:
    # a smuggled packet. The gate refuses a CONNECT whose fields do not fill it exactly.
    creds = pki.device("a")
    smuggled = bytes([0x30, 7, 0, 3]) + b"x/y" + b"hi"
    body = CONNECT_A[2:] + smuggled
    packet = bytes([0x10, len(body)]) + body
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(creds.cert, creds.key)
    with (
        socket.create_connection(("127.0.0.1", broker.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(packet)
        assert tls.recv(16) == b""
    assert broker.broker.denials[("a", "connect")] == 1
    assert broker.messages.empty()


def test_plaintext_listener_refuses_every_connect_and_warns_at_start(
    pki: Any, broker_factory: Any, mosquitto: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="thingward.broker.embedded"):
        broker = broker_factory(plaintext_port=0)
    assert any(r.levelno == logging.WARNING and "plaintext" in r.getMessage() for r in caplog.records)
    plain_port = broker.broker.plaintext_port
    assert plain_port is not None and plain_port != broker.port
    result = mosquitto.pub(plain_port, None, "things/cam1/x", "hi", client_id="cam1", tls=False)
    assert result.returncode != 0
    assert "not authorised" in result.stderr
    assert broker.broker.denials[("<plaintext>", "connect")] == 1
    assert broker.messages.empty()


def test_no_plaintext_listener_unless_asked(broker: Any) -> None:
    assert broker.broker.plaintext_port is None
