"""Red-team fixtures: a throwaway CA, the embedded broker with the REAL policy engine, and a raw MQTT client.

Copied (not imported) from tests/broker/conftest.py where useful: pytest runs with --import-mode=importlib.
The raw client speaks MQTT byte by byte over TLS so that malformed, pipelined and out-of-order packets can
be sent exactly as an attacker would. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lab.mqtt import WAIT, BrokerHarness, Creds, Pki, broker_harnesses

# Re-exported: the tests reach the packet builders through the `kit` fixture (this module).
from lab.mqtt_packets import (  # noqa: F401
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
    packet,
    puback_packet,
    publish_packet,
    pubrel_packet,
    subscribe_packet,
    unsubscribe_packet,
)
from thingward.pki.ca import (
    certificate_pem,
    private_key_pem,
)
from thingward.pki.files import write_atomic, write_secret
from thingward.policy.document import DEFAULT_POLICY, parse_policy_document
from thingward.policy.engine import PolicyEngine
from thingward.policy.world import GroupFacts, PolicyWorld, ThingFacts

A = "cam-a"  # the attacker's thing
B = "cam-b"  # the victim
B2 = "cam-a2"  # a name that shares a prefix with the attacker's


# -- PKI ---------------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


# -- the real policy engine ----------------------------------------------------------------------------


def default_world(*extra_thing_policies: tuple[str, str, str]) -> PolicyWorld:
    """cam-a, cam-b and cam-a2 in group "default" with thingward's DEFAULT_POLICY; extra (thing, name, json)."""
    things = [ThingFacts(name, groups=("default",)) for name in (A, B, B2)]
    policies = {"default-device": DEFAULT_POLICY}
    thing_policies: dict[str, list[str]] = {}
    for thing, name, source in extra_thing_policies:
        policies[name] = parse_policy_document(source)
        thing_policies.setdefault(thing, []).append(name)
    return PolicyWorld.from_facts(
        things=things,
        groups=[GroupFacts("default")],
        policies=policies,
        group_policies={"default": ["default-device"]},
        thing_policies=thing_policies,
    )


@pytest.fixture
def engine() -> PolicyEngine:
    return PolicyEngine(default_world())


# -- the broker on its own loop --------------------------------------------------------------------------


@pytest.fixture
def broker_factory(pki: Pki, engine: PolicyEngine) -> Iterator[Callable[..., BrokerHarness]]:
    with broker_harnesses(pki, engine) as start:
        yield start


@pytest.fixture
def broker(broker_factory: Callable[..., BrokerHarness]) -> BrokerHarness:
    return broker_factory()


# -- a raw MQTT 3.1.1 / 5 client ----------------------------------------------------------------------------


def client_context(pki: Pki, creds: Creds | None, **kw: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.check_hostname = False
    if creds is not None:
        ctx.load_cert_chain(creds.cert, creds.key)
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


@dataclass
class Raw:
    """A blocking TLS socket speaking raw MQTT; auto-acks QoS 1 deliveries unless told not to."""

    sock: ssl.SSLSocket
    auto_ack: bool = True
    buf: bytearray = field(default_factory=bytearray)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise
        except (ssl.SSLError, OSError) as e:
            raise Closed(repr(e)) from e
        if not chunk:
            raise Closed("eof")
        self.buf += chunk

    def read(self, timeout: float = WAIT) -> Packet:
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                mult, rem, i = 1, 0, 1
                complete = False
                while i < len(self.buf):
                    b = self.buf[i]
                    rem += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        complete = True
                        break
                if complete and len(self.buf) >= i + rem:
                    first = self.buf[0]
                    body = bytes(self.buf[i : i + rem])
                    del self.buf[: i + rem]
                    pkt = Packet(first >> 4, first & 0x0F, body)
                    if pkt.type == 3 and self.auto_ack and (pkt.flags >> 1) & 3 == 1:
                        self.send(puback_packet(pkt.packet_id))
                    return pkt
            self._fill(deadline)

    def expect(self, ptype: int, timeout: float = WAIT) -> Packet:
        """The next packet of type `ptype`, skipping others (PUBLISHes are kept in `skipped`)."""
        deadline = time.monotonic() + timeout
        while True:
            pkt = self.read(max(0.0, deadline - time.monotonic()))
            if pkt.type == ptype:
                return pkt

    def publishes_until(self, sentinel_topic: str, timeout: float = WAIT) -> list[tuple[str, bytes, int, bool]]:
        """Every PUBLISH received up to and including the first on `sentinel_topic`."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            pkt = self.read(max(0.0, deadline - time.monotonic()))
            if pkt.type != 3:
                continue
            seen.append(pkt.publish())
            if seen[-1][0] == sentinel_topic:
                return seen

    def is_closed(self, timeout: float = 2.0) -> bool:
        """True if the server closes the connection within `timeout` (packets before that are discarded)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.read(max(0.0, deadline - time.monotonic()))
        except Closed:
            return True
        except TimeoutError:
            return False

    def subscribe(self, pid: int, *filters: str, qos: int = 1) -> list[int]:
        self.send(subscribe_packet(pid, *filters, qos=qos))
        suback = self.expect(9)
        assert suback.packet_id == pid
        return list(suback.body[2:])

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, pid: int = 1) -> None:
        self.send(publish_packet(topic, payload, qos=qos, retain=retain, pid=pid))
        if qos == 1:
            ack = self.expect(4)
            assert ack.packet_id == pid

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class RawFactory:
    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.made: list[Raw] = []

    def tls(
        self,
        port: int,
        creds: Creds | None,
        *,
        server_hostname: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> Raw:
        ctx = context or client_context(self.pki, creds)
        plain = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        try:
            sock = ctx.wrap_socket(plain, server_hostname=server_hostname)
        except BaseException:
            plain.close()
            raise
        raw = Raw(sock)
        self.made.append(raw)
        return raw

    def connect(
        self, port: int, creds: Creds, client_id: str | None = None, *, expect_ok: bool = True, **kw: Any
    ) -> Raw:
        raw = self.tls(port, creds)
        raw.send(connect_packet(creds.name if client_id is None else client_id, **kw))
        if expect_ok:
            ack = raw.expect(2)
            assert ack.connack_code == 0, f"CONNACK {ack.connack_code}"
        return raw

    def close_all(self) -> None:
        for raw in self.made:
            raw.close()


@pytest.fixture
def raw(pki: Pki) -> Iterator[RawFactory]:
    factory = RawFactory(pki)
    yield factory
    factory.close_all()


def connack_or_close(client: Raw, timeout: float = WAIT) -> int | None:
    """The CONNACK return code, or None if the server closed the connection (or the handshake failed)."""
    try:
        return client.expect(2, timeout).connack_code
    except Closed:
        return None


def handshake_refused(factory: RawFactory, port: int, creds: Creds | None, **kw: Any) -> bool:
    """True if the TLS handshake fails or the server closes the connection before any CONNACK 0."""
    try:
        client = factory.tls(port, creds, **kw)
    except (ssl.SSLError, OSError):
        return True
    client.send(connect_packet(creds.name if creds is not None and creds.name else "x"))
    try:
        code = connack_or_close(client)
    except (TimeoutError, ssl.SSLError, OSError):
        return True
    return code != 0


@pytest.fixture
def kit() -> Any:
    """This module, for its packet builders and helpers (conftest modules cannot be imported by name)."""
    import sys

    return sys.modules[__name__]


# -- the whole server (registry, watcher, CRL) in-process ---------------------------------------------------


class ServerHarness:
    """`thingward serve` in this process: ThingwardServer on its own loop thread, over a fresh data dir."""

    def __init__(self, data_dir: Path) -> None:
        from thingward.platform import Platform, init_data_dir
        from thingward.server import ThingwardServer

        init_data_dir(data_dir)
        self.platform = Platform.open(data_dir)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="redteam-server-loop", daemon=True)
        self.thread.start()
        self.server = ThingwardServer(self.platform, "127.0.0.1", 0, 0)
        self.call(self.server.start(), timeout=30)
        self.ca_file = self.platform.ca_certificate_path
        self.dir = data_dir.parent / "devices"
        self.dir.mkdir(exist_ok=True)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def port(self) -> int:
        return self.server.broker.port

    def enroll(self, name: str) -> Creds:
        """`thingward device add NAME` + `thingward device enroll`, through the same service functions."""
        from thingward.platform import cli_actor
        from thingward.registry import things

        with self.platform.db.session() as session:
            things.add_thing(session, cli_actor(), name)
            token = things.create_enrollment_token(session, cli_actor(), name, dt.timedelta(hours=1)).token
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .sign(key, hashes.SHA256())
        )
        from cryptography.hazmat.primitives import serialization

        enrollment = self.platform.enroll(token, csr.public_bytes(serialization.Encoding.PEM), "test")
        cert_path, key_path = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        write_atomic(cert_path, certificate_pem(enrollment.certificate))
        write_secret(key_path, private_key_pem(key))
        self.sync()
        return Creds(name=name, cert=cert_path, key=key_path, serial=enrollment.certificate.serial_number)

    def sync(self) -> None:
        """What the 0.25 s watcher does, now (so a test need not sleep for it)."""
        self.call(self.server.apply_changes(force=True))

    def revoke(self, name: str) -> None:
        """`thingward device revoke NAME` (as another process would: registry + CRL file; the watcher reacts)."""
        from thingward.platform import cli_actor

        self.platform.revoke(cli_actor(), name, "key compromise")

    def close(self) -> None:
        try:
            self.call(self.server.stop(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
            if not self.thread.is_alive():
                self.loop.close()
            self.platform.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerHarness]:
    harness = ServerHarness(tmp_path / "data")
    yield harness
    harness.close()


class ServedPki:
    """Quacks like Pki for RawFactory: the served platform's CA file."""

    def __init__(self, ca_file: Path) -> None:
        self.ca_file = ca_file


@pytest.fixture
def served_raw(served: ServerHarness) -> Iterator[RawFactory]:
    factory = RawFactory(ServedPki(served.ca_file))  # type: ignore[arg-type]
    yield factory
    factory.close_all()
