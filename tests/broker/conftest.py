"""Fixtures for broker tests: a throwaway CA in tmp_path, the broker on its own loop in a thread, real clients.

Everything is real: TLS on loopback on a free port, paho-mqtt 2.x clients and mosquitto_pub/sub
processes. Waits are on events with timeouts; a negative ("nothing arrived") is proven with a sentinel
the same client receives after the message that must not arrive, never with a sleep.
"""

from __future__ import annotations

import queue
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from lab.mqtt import WAIT, BrokerHarness, Creds, Pki, broker_harnesses

# -- PKI ---------------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


# -- the authorizer under test -----------------------------------------------------------------------


class TopicAuthorizer:
    """Each thing owns `things/<name>/...` and may connect only as itself.

    `wide_filters` may be subscribed by anyone, so that delivery checks (not the subscribe check) must
    stop foreign messages; `monitors` may read every `things/...` topic. Calls are recorded.
    """

    def __init__(
        self,
        wide_filters: frozenset[str] = frozenset({"#", "things/#", "things/+/telemetry", "things/+/state"}),
        monitors: frozenset[str] = frozenset({"monitor"}),
    ) -> None:
        self.wide_filters = wide_filters
        self.monitors = monitors
        self.calls: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def authorize(self, thing: str, action: str, topic: str) -> bool:
        with self._lock:
            self.calls.append((thing, action, topic))
        own = topic.startswith(f"things/{thing}/")
        if action == "connect":
            return topic == thing
        if action == "publish":
            return own
        if action == "subscribe":
            return own or topic in self.wide_filters or (thing in self.monitors and topic.startswith("things/"))
        if action == "receive":
            return own or (thing in self.monitors and topic.startswith("things/"))
        return False

    def called(self, thing: str, action: str, topic: str) -> bool:
        with self._lock:
            return (thing, action, topic) in self.calls


class AllowAll:
    """Allows everything: proves what the adapter refuses on its own, whatever the policy says."""

    def authorize(self, thing: str, action: str, topic: str) -> bool:
        return True


@pytest.fixture
def authorizer() -> TopicAuthorizer:
    return TopicAuthorizer()


@pytest.fixture
def allow_all() -> AllowAll:
    return AllowAll()


# -- the broker in its own thread --------------------------------------------------------------------


@pytest.fixture
def broker_factory(pki: Pki, authorizer: TopicAuthorizer) -> Iterator[Callable[..., BrokerHarness]]:
    with broker_harnesses(pki, authorizer) as start:
        yield start


@pytest.fixture
def broker(broker_factory: Callable[..., BrokerHarness]) -> BrokerHarness:
    return broker_factory()


# -- paho clients ------------------------------------------------------------------------------------


@dataclass
class ConnectOutcome:
    accepted: bool
    detail: str
    session_present: bool = False


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class MqttDevice:
    """A paho-mqtt 2.x client over TLS with the device's certificate; callbacks become waitable events."""

    port: int
    ca_file: Path
    creds: Creds | None
    client_id: str
    clean_session: bool = True
    will: tuple[str, bytes, bool] | None = None  # topic, payload, retain
    max_tls: ssl.TLSVersion | None = None
    keepalive: int = 30
    messages: queue.Queue[Received] = field(default_factory=queue.Queue)
    disconnected: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._connected = threading.Event()
        self._outcome: ConnectOutcome | None = None
        self._subacks: dict[int, list[int]] = {}
        self._suback_cond = threading.Condition()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=self.clean_session,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if self.creds is not None:
            context.load_cert_chain(self.creds.cert, self.creds.key)
        if self.max_tls is not None:
            context.maximum_version = self.max_tls
        client.tls_set_context(context)
        if self.will is not None:
            topic, payload, retain = self.will
            client.will_set(topic, payload, qos=1, retain=retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self.client = client
        self._loop_running = False

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._outcome = ConnectOutcome(not reason.is_failure, f"CONNACK {reason}", bool(flags.session_present))
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self._outcome is None:
            self._outcome = ConnectOutcome(False, f"closed before CONNACK ({reason})")
            self._connected.set()
        self.disconnected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(Received(message.topic, message.payload, bool(message.retain)))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        with self._suback_cond:
            self._subacks[mid] = [int(r.value) for r in reasons]
            self._suback_cond.notify_all()

    def connect(self, timeout: float = WAIT) -> ConnectOutcome:
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=self.keepalive)
        except (ssl.SSLError, OSError) as e:
            return ConnectOutcome(False, f"TLS/socket error: {e!r}")
        self.client.loop_start()
        self._loop_running = True
        if not self._connected.wait(timeout):
            return ConnectOutcome(False, "no CONNACK within the timeout")
        if self._outcome is None:
            return ConnectOutcome(False, "no outcome")
        return self._outcome

    def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        """Subscribe and wait for the SUBACK; returns the granted QoS or 128 (refused)."""
        result, mid = self.client.subscribe(topic_filter, qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise AssertionError(f"subscribe failed locally: {result}")
        with self._suback_cond:
            if not self._suback_cond.wait_for(lambda: mid in self._subacks, WAIT):
                raise AssertionError("no SUBACK")
            return self._subacks[mid][0]

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0:
            info.wait_for_publish(WAIT)
            if not info.is_published():
                raise AssertionError(f"publish to {topic} not acknowledged")

    def next_message(self, timeout: float = WAIT) -> Received:
        return self.messages.get(timeout=timeout)

    def messages_until(self, sentinel_topic: str, timeout: float = WAIT) -> list[Received]:
        """Every message received up to and including the first on `sentinel_topic`."""
        seen: list[Received] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"sentinel on {sentinel_topic} never arrived; got {seen}")
            message = self.messages.get(timeout=remaining)
            seen.append(message)
            if message.topic == sentinel_topic:
                return seen

    def drop_abruptly(self) -> None:
        """Close the socket without DISCONNECT, as a device losing power does (its will is published)."""
        self.client.loop_stop()
        self._loop_running = False
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        if self._loop_running:
            self.client.disconnect()
            self.client.loop_stop()
            self._loop_running = False


@pytest.fixture
def device(pki: Pki) -> Iterator[Callable[..., MqttDevice]]:
    """device(creds, port, client_id=creds.name, ...) -> an unconnected MqttDevice, closed at teardown."""
    made: list[MqttDevice] = []

    def make(creds: Creds | None, port: int, client_id: str | None = None, **options: Any) -> MqttDevice:
        if client_id is None:
            client_id = creds.name if creds is not None else "anonymous"
        made.append(MqttDevice(port=port, ca_file=pki.ca_file, creds=creds, client_id=client_id, **options))
        return made[-1]

    yield make
    for item in made:
        item.close()


def connected(device_factory: Callable[..., MqttDevice], creds: Creds, port: int, **options: Any) -> MqttDevice:
    """A device that must connect; fails the test otherwise."""
    client = device_factory(creds, port, **options)
    outcome = client.connect()
    if not outcome.accepted:
        raise AssertionError(f"{creds.name} could not connect: {outcome.detail}")
    return client


@pytest.fixture
def online(device: Callable[..., MqttDevice]) -> Callable[..., MqttDevice]:
    """online(creds, port, **options) -> a connected MqttDevice."""
    return lambda creds, port, **options: connected(device, creds, port, **options)


# -- mosquitto clients -------------------------------------------------------------------------------


@dataclass
class Mosquitto:
    """mosquitto_pub / mosquitto_sub processes (Debian's mosquitto-clients)."""

    ca_file: Path

    def args(self, port: int, creds: Creds | None, client_id: str | None, tls: bool = True) -> list[str]:
        args = ["-h", "127.0.0.1", "-p", str(port), "-V", "mqttv311"]
        if client_id is not None:
            args += ["-i", client_id]
        if tls:
            args += ["--cafile", str(self.ca_file)]
            if creds is not None:
                args += ["--cert", str(creds.cert), "--key", str(creds.key)]
        return args

    def pub(
        self,
        port: int,
        creds: Creds | None,
        topic: str,
        message: str,
        *,
        client_id: str | None = None,
        tls: bool = True,
        extra: tuple[str, ...] = (),
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        if client_id is None and creds is not None:
            client_id = creds.name
        command = ["mosquitto_pub", *self.args(port, creds, client_id, tls), "-t", topic, *extra]
        command += ["-l"] if stdin is not None else ["-m", message]
        return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=30)

    def sub(
        self, port: int, creds: Creds, topic: str, *, count: int = 1, wait_seconds: int = 5
    ) -> subprocess.Popen[str]:
        command = ["mosquitto_sub", *self.args(port, creds, creds.name), "-t", topic, "-C", str(count)]
        command += ["-W", str(wait_seconds), "-v"]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def mosquitto(pki: Pki) -> Mosquitto:
    if shutil.which("mosquitto_pub") is None or shutil.which("mosquitto_sub") is None:
        pytest.skip("mosquitto-clients (mosquitto_pub, mosquitto_sub) are not installed")
    return Mosquitto(ca_file=pki.ca_file)
