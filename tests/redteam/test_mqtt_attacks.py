"""Red-team attacks on the MQTT data plane of the embedded broker.

The attacker holds a valid certificate for thing cam-a (or none at all); the victim is cam-b. Both live
under thingward's real DEFAULT_POLICY in the real PolicyEngine (not a test authorizer), except where a test
grants something on purpose to study what happens when the grant is taken back.

Each test asserts that the attack is REFUSED. Attacks that succeed are kept, marked
`xfail(strict=True, reason="VULN: ...")`, so the suite stays green while documenting the hole.
A negative ("nothing arrived") is proven with a sentinel that the victim receives after the message that
must not arrive, never with a bare sleep.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import ssl
import subprocess
import time
from typing import Any

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from thingward.pki.ca import THING_URI_PREFIX, utcnow

A, B, B2 = "cam-a", "cam-b", "cam-a2"
B_CMD = f"things/{B}/commands/#"
A_CMD = f"things/{A}/commands/#"
B_SENTINEL = f"things/{B}/commands/sentinel"


# -- helpers ---------------------------------------------------------------------------------------------


def victim(broker: Any, pki: Any, raw: Any) -> Any:
    """cam-b, connected and subscribed to its own command topics."""
    client = raw.connect(broker.port, pki.device(B))
    assert client.subscribe(1, B_CMD) == [1]
    return client


def victim_received(client: Any, kit: Any) -> list[tuple[str, bytes, int, bool]]:
    """What the victim got before its own sentinel (the sentinel itself removed)."""
    client.send(kit.publish_packet(B_SENTINEL, b"sentinel", qos=1, pid=999))
    seen = client.publishes_until(B_SENTINEL)
    return [m for m in seen if m[0] != B_SENTINEL]


def grant(thing: str, actions: list[str], resources: list[str]) -> tuple[str, str, str]:
    source = json.dumps({"statements": [{"effect": "allow", "actions": actions, "resources": resources}]})
    return (thing, f"grant-{thing}", source)


# == identity: getting in without a valid identity ===========================================================


def test_client_without_certificate_refused_in_handshake(broker: Any, raw: Any, kit: Any) -> None:
    assert kit.handshake_refused(raw, broker.port, None)
    assert broker.broker.connected_things() == set()


def test_sni_naming_a_thing_gives_no_identity(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    # SNI drives the context switch (_tls.ServerTls._select_context); it must never stand in for a certificate.
    assert kit.handshake_refused(raw, broker.port, None, server_hostname=B)
    a = pki.device(A)
    client = raw.tls(broker.port, a, server_hostname=B)
    client.send(kit.connect_packet(B))
    assert kit.connack_or_close(client) in (None, 5)


def test_platform_server_certificate_refused_as_client_certificate(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    # The platform's own server.crt/server.key (EKU serverAuth, CN "thingward server", SAN DNS/IP, no thing
    # URI) presented as a client certificate: refused in the handshake (OpenSSL's ssl_client purpose check),
    # and it would name no thing anyway.
    server = kit.Creds(name="thingward server", cert=pki.server_cert, key=pki.server_key, serial=pki.server_serial)
    for client_id in ("thingward server", "thingward", "localhost", B):
        try:
            client = raw.tls(broker.port, server)
        except (ssl.SSLError, OSError):
            continue
        client.send(kit.connect_packet(client_id))
        assert kit.connack_or_close(client) in (None, 5)
    assert broker.broker.connected_things() == set()


@pytest.mark.parametrize(
    ("label", "cn", "uris"),
    [
        ("cn-only", B, []),
        ("san-only", None, [THING_URI_PREFIX + B]),
        ("cn-and-san-disagree", A, [THING_URI_PREFIX + B]),
        ("two-thing-uris", B, [THING_URI_PREFIX + B, THING_URI_PREFIX + A]),
        ("uppercase-name", B.upper(), [THING_URI_PREFIX + B.upper()]),
        ("name-with-space", B + " ", [THING_URI_PREFIX + B + " "]),
        ("other-uri-scheme", B, ["urn:thingward:group:" + B]),
        ("empty-name", "", [THING_URI_PREFIX]),
    ],
)
def test_ca_signed_certificate_with_ambiguous_thing_name_refused(
    broker: Any, pki: Any, raw: Any, kit: Any, label: str, cn: str | None, uris: list[str]
) -> None:
    creds = pki.custom(label, cn=cn, uris=uris, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    for client_id in {B, B.upper(), B + " ", ""}:
        try:
            client = raw.tls(broker.port, creds)
        except (ssl.SSLError, OSError):
            continue
        client.send(kit.connect_packet(client_id))
        assert kit.connack_or_close(client) in (None, 5)
    assert broker.broker.connected_things() == set()


def test_ca_signed_certificate_with_server_auth_eku_only_refused(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    # A certificate that names cam-b exactly as a device certificate does, but is a *server* certificate.
    creds = pki.custom("server-eku", cn=B, uris=[THING_URI_PREFIX + B], eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert kit.handshake_refused(raw, broker.port, creds)


def test_certificate_for_a_thing_unknown_to_the_registry_refused(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    ghost = pki.device("ghost")  # CA-signed, well formed, but "ghost" is not in the policy world
    client = raw.tls(broker.port, ghost)
    client.send(kit.connect_packet("ghost"))
    assert kit.connack_or_close(client) == 5


def test_certificate_from_a_foreign_ca_refused(broker: Any, pki: Any, raw: Any, kit: Any, tmp_path: Any) -> None:
    from thingward.pki.ca import build_root_ca

    other = build_root_ca("evil CA")
    forged = pki.device(B, ca=other, label="forged-b")
    assert kit.handshake_refused(raw, broker.port, forged)


def test_tls_renegotiation_refused(broker: Any, pki: Any) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    a = pki.device(A)
    command = (
        f"(sleep 0.7; echo R; sleep 1) | openssl s_client -connect 127.0.0.1:{broker.port} -tls1_2 "
        f"-cert {a.cert} -key {a.key} -CAfile {pki.ca_file}"
    )
    out = subprocess.run(command, shell=True, capture_output=True, timeout=20)
    text = (out.stdout + out.stderr).decode(errors="replace")
    assert "RENEGOTIATING" in text, "s_client never tried, so this test proves nothing"
    assert "no renegotiation" in text


def test_tls12_session_resumption_after_revocation_refused(broker: Any, pki: Any, kit: Any) -> None:
    import socket

    a = pki.device(A)
    context = kit.client_context(pki, a, maximum_version=ssl.TLSVersion.TLSv1_2)

    def attempt(session: Any) -> tuple[int | None, Any, bool]:
        with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as plain:
            try:
                tls = context.wrap_socket(plain, session=session)
            except (ssl.SSLError, OSError):
                return None, None, False
            with tls:
                client = kit.Raw(tls)
                client.send(kit.connect_packet(A))
                code = kit.connack_or_close(client)
                if code == 0:
                    client.send(kit.DISCONNECT)
                    client.is_closed(2.0)
                return code, tls.session, tls.session_reused

    code, session, _ = attempt(None)
    assert code == 0
    code, session, reused = attempt(session)
    assert code == 0 and reused  # control: resumption works
    pki.write_crl(a.serial)
    broker.broker.reload_crl()
    code, _, reused = attempt(session)
    assert code != 0


# == client id and protocol tricks ============================================================================


@pytest.mark.parametrize(
    "client_id",
    [B, "CAM-A", "Cam-a", " cam-a", "cam-a ", "cam-a\x00", "cam-a\n", "cam-a/x", "cam-a" + "a" * 65000, "+", "#"],
)
def test_client_id_other_than_exactly_the_certificates_thing_refused(
    broker: Any, pki: Any, raw: Any, kit: Any, client_id: str
) -> None:
    client = raw.tls(broker.port, pki.device(A))
    client.send(kit.connect_packet(client_id))
    assert kit.connack_or_close(client) in (None, 5)
    assert broker.broker.connected_things() == set()


def test_empty_client_id_refused(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    # amqtt would make up a random id for an empty one with clean session: refused before amqtt sees it.
    client = raw.tls(broker.port, pki.device(A))
    client.send(kit.connect_packet(""))
    assert kit.connack_or_close(client) in (None, 5)


@pytest.mark.parametrize(("name", "level"), [(b"MQTT", 5), (b"MQIsdp", 3), (b"MQTT", 3), (b"MQTT", 255)])
def test_other_protocol_levels_refused(broker: Any, pki: Any, raw: Any, kit: Any, name: bytes, level: int) -> None:
    client = raw.tls(broker.port, pki.device(A))
    client.send(kit.connect_packet(A, name=name, level=level))
    assert kit.connack_or_close(client) in (None, 1)
    assert broker.broker.connected_things() == set()


def test_v5_connect_with_properties_then_v5_subscribe_to_victim_refused(
    broker: Any, pki: Any, raw: Any, kit: Any
) -> None:
    b = victim(broker, pki, raw)
    client = raw.tls(broker.port, pki.device(A))
    client.send(kit.connect_packet(A, level=5) + kit.subscribe_packet(2, B_CMD, v5=True))
    assert kit.connack_or_close(client) in (None, 1)
    assert client.is_closed()
    assert victim_received(b, kit) == []


def test_first_packet_not_connect_gets_nothing(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    client = raw.tls(broker.port, pki.device(A))
    client.send(kit.subscribe_packet(1, B_CMD) + kit.connect_packet(A))
    assert client.is_closed()


def test_pipelined_connect_subscribe_publish_to_victim_refused(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    # CONNECT, SUBSCRIBE and PUBLISH in one TLS record: each is still checked after admission.
    b = victim(broker, pki, raw)
    b.publish(f"things/{B}/commands/door", b"B-secret", retain=True, pid=2)
    victim_received(b, kit)  # drain B's own echo
    client = raw.tls(broker.port, pki.device(A))
    client.send(
        kit.connect_packet(A)
        + kit.subscribe_packet(1, B_CMD, "#", "things/+/commands/#")
        + kit.publish_packet(f"things/{B}/commands/open", b"evil", qos=1, pid=3)
        + kit.publish_packet(f"things/{B}/commands/door", b"", qos=1, retain=True, pid=4)
    )
    assert client.expect(2).connack_code == 0
    suback = client.expect(9)
    assert list(suback.body[2:]) == [0x80, 0x80, 0x80]
    assert victim_received(b, kit) == []
    assert ("things/cam-b/commands/door") in broker.run(lambda: list(broker.core._retained_messages))


def test_pipelined_refused_connect_with_victims_id_leaves_victims_session(
    broker: Any, pki: Any, raw: Any, kit: Any
) -> None:
    b = raw.connect(broker.port, pki.device(B), clean=False)
    assert b.subscribe(1, B_CMD) == [1]
    b.send(kit.DISCONNECT)
    assert broker.wait_until(lambda: broker.broker.connected_things() == set())
    attacker = raw.tls(broker.port, pki.device(A))
    attacker.send(
        kit.connect_packet(B, clean=True, will=(B_SENTINEL, b"x", 1, True))
        + kit.unsubscribe_packet(1, B_CMD)
        + kit.DISCONNECT
    )
    assert kit.connack_or_close(attacker) in (None, 5)
    b = raw.connect(broker.port, pki.device(B, label="b2"), clean=False)
    assert victim_received(b, kit) == []  # its old subscription still delivers its own sentinel


def test_second_connect_inside_a_session_cannot_switch_identity(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    b = victim(broker, pki, raw)
    a = raw.connect(broker.port, pki.device(A))
    a.send(kit.connect_packet(B, clean=True) + kit.subscribe_packet(5, B_CMD))
    assert a.is_closed()
    assert broker.wait_until(lambda: broker.broker.connected_things() == {B})
    assert victim_received(b, kit) == []


def test_huge_remaining_length_closes_the_connection(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    a = raw.connect(broker.port, pki.device(A))
    a.send(b"\x30\xff\xff\xff\x7f" + b"\x00\x05thing")  # a 256 MB PUBLISH announced
    assert a.is_closed(3.0)
    a = raw.connect(broker.port, pki.device(A, label="a2"))
    a.send(b"\x82\xff\xff\xff\xff\x01")  # five length bytes
    assert a.is_closed(3.0)


def test_publish_whose_topic_length_runs_into_the_next_packet_closed(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    # Framing desync: the topic length claims bytes of the following packet, which hides a PUBLISH to B.
    b = victim(broker, pki, raw)
    a = raw.connect(broker.port, pki.device(A))
    hidden = kit.publish_packet(f"things/{B}/commands/open", b"evil")
    topic = f"things/{A}/x".encode()
    lying = bytes([0x30, 2 + len(topic)]) + (len(topic) + len(hidden)).to_bytes(2, "big") + topic
    a.send(lying + hidden)
    assert a.is_closed(3.0)
    assert victim_received(b, kit) == []


# == topic tricks ============================================================================================


@pytest.mark.parametrize(
    "topic",
    [
        f"things/{B}/commands/open",
        f"things/{B}/commands",
        f"things/{B}/commands/",
        f"things/{B}//commands/open",
        f"things/{B}",
        f"things/{A}/../{B}/commands/open",
        f"Things/{B}/commands/open",
        f"things/{B2}/commands/open",
        f"things/{A}-evil/commands/open",
        "$SYS/broker/clients",
        f"$share/g/things/{B}/commands/open",
        f"things/{B}/commands/" + "x" * 60000,
    ],
)
def test_publish_to_foreign_or_reserved_topic_not_delivered(
    broker: Any, pki: Any, raw: Any, kit: Any, topic: str
) -> None:
    b = victim(broker, pki, raw)
    other = raw.connect(broker.port, pki.device(B2))
    assert other.subscribe(1, f"things/{B2}/commands/#") == [1]
    a = raw.connect(broker.port, pki.device(A))
    a.send(kit.publish_packet(topic, b"evil", qos=1, pid=7))
    a.send(kit.publish_packet(topic, b"evil2", qos=2, pid=8) + kit.pubrel_packet(8))
    a.send(kit.publish_packet(topic, b"evil0", qos=0))
    assert victim_received(b, kit) == []
    other.send(kit.publish_packet(f"things/{B2}/commands/s", b"s", qos=1, pid=9))
    assert [m[0] for m in other.publishes_until(f"things/{B2}/commands/s")] == [f"things/{B2}/commands/s"]
    stored = list(broker.messages.queue)  # what the ingest sink was handed
    assert all(m.thing != A or m.topic.startswith(f"things/{A}/") for m in stored)


@pytest.mark.parametrize(
    "topic",
    [
        f"things/{B}/commands/+".encode(),
        f"things/{B}/commands/#".encode(),
        f"things/{A}/x\x00/../../{B}/commands/open".encode(),
        f"things/{B}/commands/\xff".encode("latin-1"),
        b"things/cam-b/commands/\xc0\xaf",  # overlong '/'
        b"things/cam-\xed\xa0\x80b",  # a UTF-8-encoded surrogate
        b"",
    ],
)
def test_invalid_publish_topic_delivers_nothing(broker: Any, pki: Any, raw: Any, kit: Any, topic: bytes) -> None:
    # amqtt turns an invalid UTF-8 topic into str(bytes) ("b'things/...'"), which matches no policy; '+'/'#'
    # raise inside amqtt's parser (packet discarded); NUL and empty close the connection.
    b = victim(broker, pki, raw)
    a = raw.connect(broker.port, pki.device(A))
    try:
        for qos in (0, 1, 2):
            a.send(kit.publish_packet(topic, b"evil", qos=qos, pid=3 + qos, retain=True))
        a.send(kit.pubrel_packet(5))
    except OSError:
        pass  # the broker closed the connection on the first bad packet: also a refusal (ssl.SSLError is an OSError)
    assert victim_received(b, kit) == []
    retained = broker.run(lambda: list(broker.core._retained_messages))
    assert retained == []


def test_packets_hidden_in_a_discarded_publish_payload_are_not_processed(
    broker: Any, pki: Any, raw: Any, kit: Any
) -> None:
    b = victim(broker, pki, raw)
    a = raw.connect(broker.port, pki.device(A))
    hidden = (
        kit.PINGREQ
        + kit.subscribe_packet(77, A_CMD, B_CMD)
        + kit.publish_packet(f"things/{B}/commands/open", b"smuggled", qos=1, pid=5)
    )
    a.send(kit.publish_packet(f"things/{A}/+", hidden, qos=0))
    a.send(kit.publish_packet(f"things/{A}/x", b"s", qos=1, pid=6))
    seen: list[int] = []
    try:
        while 4 not in seen or seen[-1] != 4:
            pkt = a.read(3.0)
            seen.append(pkt.type)
            if pkt.type == 4 and pkt.packet_id == 6:
                break
    except (kit.Closed, TimeoutError):
        pass
    assert victim_received(b, kit) == []  # the smuggled PUBLISH is still refused by policy
    assert 13 not in seen and 9 not in seen, f"smuggled packets answered: {seen}"


@pytest.mark.parametrize(
    "topic_filter",
    [
        "#",
        "+",
        "+/#",
        "things/#",
        "things/+/commands/#",
        "things/+/+/+",
        B_CMD,
        f"things/{B}/#",
        f"things/{B}/commands/+",
        f"things/{B2}/commands/#",
        f"things/{A}/#",  # own topics, but the default policy lets it read only its commands
        "$SYS/#",
        f"$share/g/{B_CMD}",
        f"things/{A}/commands/#/x",
        f"things/{A}/commands/a+",
        f"things/{A}/commands/x\x00",
    ],
)
def test_subscribe_to_foreign_wildcard_or_reserved_filter_refused(
    broker: Any, pki: Any, raw: Any, kit: Any, topic_filter: str
) -> None:
    b = victim(broker, pki, raw)
    a = raw.connect(broker.port, pki.device(A))
    a.send(kit.subscribe_packet(1, topic_filter))
    try:
        suback = a.expect(9, 3.0)
        assert list(suback.body[2:]) == [0x80]
    except kit.Closed:
        pass
    b.publish(f"things/{B}/commands/open", b"B-secret", pid=3)
    assert victim_received(b, kit) == [(f"things/{B}/commands/open", b"B-secret", 1, False)]
    with pytest.raises((TimeoutError, kit.Closed)):
        while True:
            pkt = a.read(0.3)
            assert pkt.type != 3, f"attacker received {pkt.publish()}"


def test_own_filter_with_regex_metacharacters_receives_nothing_foreign(
    broker: Any, pki: Any, raw: Any, kit: Any
) -> None:
    b = victim(broker, pki, raw)
    a = raw.connect(broker.port, pki.device(A))
    filters = [
        A_CMD,
        f"things/{A}/commands/.*",
        f"things/{A}/commands/x|things/{B}/commands/open/#",
        f"things/{A}/commands//",
    ]
    assert a.subscribe(1, *filters) == [1, 1, 1, 1]
    b.publish(f"things/{B}/commands/open", b"B-secret", pid=3)
    a.send(kit.publish_packet(f"things/{A}/commands/s", b"s", qos=1, pid=4))
    assert [m[0] for m in a.publishes_until(f"things/{A}/commands/s")] == [f"things/{A}/commands/s"]


# == retained messages =======================================================================================


def test_retained_message_of_victim_not_replayed_to_attacker(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    b = victim(broker, pki, raw)
    b.publish(f"things/{B}/commands/secret", b"B-retained", retain=True, pid=2)
    b.publish(f"things/{B}/state", b"B-state", retain=True, pid=3)
    # amqtt replays retained messages for every filter in the broker at CONNECT: connect after B subscribed.
    a = raw.connect(broker.port, pki.device(A), clean=False)
    assert a.subscribe(1, A_CMD, "#", "things/+/state") == [1, 0x80, 0x80]
    a.send(kit.publish_packet(f"things/{A}/commands/s", b"s", qos=1, pid=4))
    assert [m[0] for m in a.publishes_until(f"things/{A}/commands/s")] == [f"things/{A}/commands/s"]


def test_retained_message_of_victim_cannot_be_overwritten_or_erased(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    b = victim(broker, pki, raw)
    b.publish(f"things/{B}/commands/door", b"B-retained", retain=True, pid=2)
    victim_received(b, kit)  # drain B's own echo
    a = raw.connect(broker.port, pki.device(A))
    for qos in (0, 1, 2):
        a.send(kit.publish_packet(f"things/{B}/commands/door", b"", qos=qos, retain=True, pid=10 + qos))
        a.send(kit.publish_packet(f"things/{B}/commands/door", b"overwritten", qos=qos, retain=True, pid=20 + qos))
    a.send(kit.pubrel_packet(12) + kit.pubrel_packet(22))
    assert victim_received(b, kit) == []
    retained = broker.run(lambda: {t: bytes(m.data) for t, m in broker.core._retained_messages.items()})
    assert retained == {f"things/{B}/commands/door": b"B-retained"}


# == QoS flows ===============================================================================================


def test_pubrel_for_foreign_packet_id_delivers_nothing(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    b = victim(broker, pki, raw)
    # B starts a QoS 2 publish to its own topic and holds back its PUBREL.
    b.send(kit.publish_packet(f"things/{B}/commands/held", b"held", qos=2, pid=42))
    assert b.expect(5).packet_id == 42  # PUBREC
    a = raw.connect(broker.port, pki.device(A))
    for pid in (42, 1, 999, 65535):
        a.send(kit.pubrel_packet(pid))
    a.send(kit.publish_packet(f"things/{A}/x", b"s", qos=1, pid=7))
    assert a.expect(4).packet_id == 7
    assert victim_received(b, kit) == []  # A's PUBREL 42 did not release B's message
    b.send(kit.pubrel_packet(42))
    assert [m[1] for m in b.publishes_until(f"things/{B}/commands/held")] == [b"held"]


def test_duplicate_packet_id_swap_to_foreign_topic_delivers_nothing(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    # QoS 2 PUBLISH to its own topic, then the same packet id to B's topic, then PUBREL: checked at release.
    b = victim(broker, pki, raw)
    a = raw.connect(broker.port, pki.device(A))
    a.send(kit.publish_packet(f"things/{A}/x", b"ok", qos=2, pid=9))
    a.send(kit.publish_packet(f"things/{B}/commands/open", b"evil", qos=2, pid=9, dup=True))
    a.send(kit.pubrel_packet(9))
    a.send(kit.publish_packet(f"things/{A}/y", b"s", qos=1, pid=10))
    a.expect(4)
    assert victim_received(b, kit) == []


def test_unsubscribe_of_victims_filter_leaves_victim_subscribed(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    b = victim(broker, pki, raw)
    a = raw.connect(broker.port, pki.device(A))
    a.send(kit.unsubscribe_packet(3, B_CMD, "#", f"things/{B}/commands/+"))
    assert a.expect(11).packet_id == 3
    b.publish(f"things/{B}/commands/ping", b"still subscribed", pid=5)
    assert victim_received(b, kit) == [(f"things/{B}/commands/ping", b"still subscribed", 1, False)]


def test_puback_spoofing_does_not_touch_victims_inflight(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    b = victim(broker, pki, raw)
    b.auto_ack = False
    b.publish(f"things/{B}/commands/q1", b"q1", pid=2)  # B gets it back as QoS 1 and does not ack
    a = raw.connect(broker.port, pki.device(A))
    for pid in range(1, 6):
        a.send(kit.puback_packet(pid))
    a.send(kit.publish_packet(f"things/{A}/x", b"s", qos=1, pid=7))
    a.expect(4)
    # B's delivery is still in flight in B's own session (A's PUBACKs went to A's session).
    inflight = broker.run(lambda: len(broker.core._sessions[B][0].inflight_out))
    assert inflight >= 1


# == wills ===================================================================================================


@pytest.mark.parametrize(
    ("topic", "qos", "retain"),
    [
        (f"things/{B}/commands/reboot", 1, True),
        (f"things/{B}/commands/reboot", 0, False),
        ("$SYS/x", 0, True),
        (f"things/{B}/commands/+", 0, False),
        (f"things/{A}/x\x00", 0, False),
    ],
)
def test_will_to_foreign_or_invalid_topic_refused_at_connect(
    broker: Any, pki: Any, raw: Any, kit: Any, topic: str, qos: int, retain: bool
) -> None:
    client = raw.tls(broker.port, pki.device(A))
    client.send(kit.connect_packet(A, will=(topic, b"WILL", qos, retain)))
    assert kit.connack_or_close(client) in (None, 5)


def test_will_qos_3_refused(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    client = raw.tls(broker.port, pki.device(A))
    client.send(kit.connect_packet(A, will=(f"things/{A}/x", b"WILL", 3, False)))
    assert kit.connack_or_close(client) in (None, 5)


def test_will_not_published_after_policy_takes_the_right_away(
    broker: Any, pki: Any, raw: Any, kit: Any, engine: Any
) -> None:
    # An operator lets cam-a command cam-b for a while (a thing policy), then takes it back.
    engine.replace_world(kit.default_world(grant(A, ["publish"], [B_CMD])))
    b = victim(broker, pki, raw)
    a = raw.connect(broker.port, pki.device(A), will=(f"things/{B}/commands/unlock", b"WILL", 1, True))
    engine.replace_world(kit.default_world())  # the grant is gone
    broker.broker.set_authorizer(engine)  # what the server does on a policy change
    a.publish(f"things/{A}/x", b"x", pid=2)  # cam-a may still connect: it stays connected
    a.send(kit.publish_packet(f"things/{B}/commands/unlock", b"direct", qos=1, pid=3))  # refused, as it should be
    a.expect(4)
    a.close()  # drop without DISCONNECT: the will fires
    assert broker.wait_until(lambda: broker.broker.connected_things() == {B})
    got = victim_received(b, kit)
    retained = broker.run(lambda: list(broker.core._retained_messages))
    assert got == [] and f"things/{B}/commands/unlock" not in retained


# == sessions ================================================================================================


def test_persistent_session_of_victim_not_resumable_with_attackers_certificate(
    broker: Any, pki: Any, raw: Any, kit: Any
) -> None:
    b = raw.connect(broker.port, pki.device(B), clean=False)
    assert b.subscribe(1, B_CMD) == [1]
    b.send(kit.DISCONNECT)
    assert broker.wait_until(lambda: broker.broker.connected_things() == set())
    for client_id in (B, B.upper()):
        client = raw.tls(broker.port, pki.device(A, label=f"a-{client_id}"))
        client.send(kit.connect_packet(client_id, clean=False))
        assert kit.connack_or_close(client) in (None, 5)
    sub = broker.run(lambda: [s.client_id for s, _ in broker.core._subscriptions.get(B_CMD, [])])
    assert sub == [B]


def test_two_connections_with_one_certificate_leave_one_live(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    a_creds = pki.device(A)
    b = victim(broker, pki, raw)
    first = raw.connect(broker.port, a_creds)
    second = raw.tls(broker.port, a_creds)
    third = raw.tls(broker.port, a_creds)
    second.send(kit.connect_packet(A))
    third.send(kit.connect_packet(A))
    codes = [kit.connack_or_close(second), kit.connack_or_close(third)]
    assert 0 in codes
    assert first.is_closed(3.0)
    assert broker.wait_until(lambda: len([c for c in broker.broker._connections.get(A, ()) if c.live]) == 1)
    assert victim_received(b, kit) == []


def test_policy_change_stops_an_open_subscription_and_the_offline_queue(
    broker: Any, pki: Any, raw: Any, kit: Any, engine: Any
) -> None:
    engine.replace_world(kit.default_world(grant(A, ["subscribe", "receive"], [f"things/{B}/telemetry"])))
    b = victim(broker, pki, raw)
    a = raw.connect(broker.port, pki.device(A), clean=False)
    assert a.subscribe(1, f"things/{B}/telemetry") == [1]
    b.publish(f"things/{B}/telemetry", b"granted", pid=2)
    assert a.publishes_until(f"things/{B}/telemetry")[-1][1] == b"granted"  # control
    a.send(kit.DISCONNECT)
    assert broker.wait_until(lambda: broker.broker.connected_things() == {B})
    b.publish(f"things/{B}/telemetry", b"queued-while-offline", pid=3)
    engine.replace_world(kit.default_world())  # grant taken back while cam-a is offline
    a = raw.connect(broker.port, pki.device(A, label="a-again"), clean=False)
    b.publish(f"things/{B}/telemetry", b"live-after-change", pid=4)
    a.send(kit.publish_packet(f"things/{A}/commands/s", b"s", qos=1, pid=5))
    assert a.subscribe(6, A_CMD) == [1]
    a.send(kit.publish_packet(f"things/{A}/commands/s", b"s", qos=1, pid=7))
    assert [m[1] for m in a.publishes_until(f"things/{A}/commands/s")] == [b"s"]


# == revocation and expiry timing (the whole server: registry, watcher, CRL) ==================================


def test_revoked_live_device_dropped_within_a_second_without_its_will(served: Any, served_raw: Any, kit: Any) -> None:
    a = served.enroll(A)
    client = served_raw.connect(served.port, a, will=(f"things/{A}/status", b"offline", 1, True))
    assert client.subscribe(1, A_CMD) == [1]
    started = time.monotonic()
    served.revoke(A)  # another process (the CLI) writes the registry; the watcher notices within 0.25 s
    assert client.is_closed(1.5)
    elapsed = time.monotonic() - started
    print(f"revoked live device dropped after {elapsed * 1000:.0f} ms")
    assert elapsed < 1.5
    assert kit.handshake_refused(served_raw, served.port, a)
    core = served.server.broker._core
    assert f"things/{A}/status" not in served.call(_retained_topics(core))


async def _retained_topics(core: Any) -> list[str]:
    return list(core._retained_messages)


def test_disabled_device_cannot_connect_through_a_handshake_made_before_disable(
    served: Any, served_raw: Any, kit: Any
) -> None:
    from thingward.platform import cli_actor

    a = served.enroll(A)
    pending = served_raw.tls(served.port, a)
    served.platform.set_disabled(cli_actor(), A, True)  # `thingward device disable cam-a`
    served.sync()
    pending.send(kit.connect_packet(A))
    assert kit.connack_or_close(pending) in (None, 5)


def test_revoked_device_cannot_connect_through_a_handshake_made_before_revocation(
    served: Any, served_raw: Any, kit: Any
) -> None:
    a = served.enroll(A)
    pending = served_raw.tls(served.port, a)  # handshake done (certificate valid), CONNECT held back
    served.revoke(A)
    served.sync()  # the watcher's work, done now: CRL reloaded, live sessions of cam-a dropped
    time.sleep(0.5)  # and a couple more watcher ticks
    pending.send(kit.connect_packet(A))
    code = kit.connack_or_close(pending)
    if code == 0:  # show what the revoked device can still do
        assert pending.subscribe(1, A_CMD) == [1]
        served.sync()
        pending.send(kit.publish_packet(f"things/{A}/commands/x", b"still here", qos=1, pid=2))
        pending.publishes_until(f"things/{A}/commands/x")
    assert code != 0


def test_device_dropped_when_its_certificate_expires(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    # A certificate valid for one day that ends 1.5 s from now.
    a = pki.device(A, now=utcnow() - dt.timedelta(days=1) + dt.timedelta(seconds=1.5))
    client = raw.connect(broker.port, a)
    assert client.subscribe(1, A_CMD) == [1]
    time.sleep(2.0)
    try:
        client.send(kit.publish_packet(f"things/{A}/commands/after-expiry", b"x", qos=1, pid=2))
        client.publishes_until(f"things/{A}/commands/after-expiry", timeout=2.0)
        still_working = True
    except (kit.Closed, TimeoutError, OSError):
        still_working = False
    assert not still_working


# == resource exhaustion from one identity ====================================================================


def test_one_identity_cannot_hold_tens_of_thousands_of_subscriptions(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    b = victim(broker, pki, raw)

    def round_trip() -> float:
        started = time.monotonic()
        victim_received(b, kit)
        return time.monotonic() - started

    before = min(round_trip() for _ in range(3))
    a = raw.connect(broker.port, pki.device(A))
    granted = 0
    for packet_number in range(20):  # 20 SUBSCRIBE packets of 2000 filters each (each under 64 KB)
        filters = [f"things/{A}/commands/{packet_number}/{i}" for i in range(2000)]
        granted += sum(code != 0x80 for code in a.subscribe(packet_number + 1, *filters))
    after = min(round_trip() for _ in range(3))
    print(f"victim round trip {before * 1000:.1f} ms -> {after * 1000:.1f} ms with {granted} attacker filters")
    assert granted < 40_000


def test_one_identity_cannot_hold_unbounded_retained_messages(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    a = raw.connect(broker.port, pki.device(A))
    burst = b"".join(kit.publish_packet(f"things/{A}/r/{i}", b"x" * 64, retain=True) for i in range(990))
    a.send(burst)
    a.publish(f"things/{A}/r/last", b"x", retain=True, pid=1)
    broker.wait_until(lambda: broker.run(lambda: len(broker.core._retained_messages)) >= 991, 3.0)
    held = broker.run(lambda: sum(1 for t in broker.core._retained_messages if t.startswith(f"things/{A}/")))
    print(f"retained messages held for cam-a: {held}")
    assert held < 991


def test_unreleased_qos2_messages_bounded_per_client(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    a = raw.connect(broker.port, pki.device(A))
    payload = b"x" * 200_000
    closed = False
    try:
        for pid in range(1, 301):
            a.send(kit.publish_packet(f"things/{A}/q2", payload, qos=2, pid=pid))
        pubrecs = 0
        while pubrecs < 300:
            if a.read(5.0).type == 5:
                pubrecs += 1
    except (kit.Closed, OSError, TimeoutError):
        closed = True
    held = broker.run(lambda: sum(len(m.data) for m in broker.core._sessions[A][0].inflight_in.values()))
    print(f"unreleased QoS 2 bytes held for cam-a: {held / 1e6:.0f} MB")
    assert closed or held < 32_000_000


def test_one_identity_cannot_hold_many_connections_before_connect(broker: Any, pki: Any, raw: Any, kit: Any) -> None:
    a = pki.device(A)
    for _ in range(25):
        try:
            raw.tls(broker.port, a)
        except (ssl.SSLError, OSError):
            break
    assert broker.wait_until(lambda: len(broker.broker._connections.get(A, ())) >= 1)
    time.sleep(0.3)
    pending = len(broker.broker._connections.get(A, ()))
    print(f"connections of cam-a held before CONNECT: {pending}")
    assert pending <= 5
