"""`Device`: one device's MQTT connection over mutual TLS, with its own topics and jittered reconnects."""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from thingward.device.enroll import CA_FILE, CERT_FILE, KEY_FILE
from thingward.device.state import DeviceState, state_topic
from thingward.errors import ThingwardError

logger = logging.getLogger(__name__)

CommandHandler = Callable[[str, bytes], None]


class DeviceConnectError(ThingwardError):
    """The broker refused or never answered the connection."""


def telemetry_topic(name: str) -> str:
    return f"things/{name}/telemetry"


def event_topic(name: str, event_type: str) -> str:
    return f"things/{name}/events/{event_type}"


def commands_filter(name: str) -> str:
    return f"things/{name}/commands/#"


def client_tls_context(ca_certificate: Path, certificate: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_certificate))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certificate), str(key))
    return context


class Device:
    """A device connected to the broker; reconnects with exponential backoff and per-device jitter."""

    def __init__(
        self,
        name: str,
        certificate: Path,
        key: Path,
        ca_certificate: Path,
        host: str = "127.0.0.1",
        port: int = 8883,
        on_command: CommandHandler | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.host, self.port = host, port
        self.on_command = on_command
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self._connected = threading.Event()
        # Set when the first attempt ends either way, so a refused device fails fast instead of timing out.
        self._attempt_over = threading.Event()
        self._refused: ReasonCode | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=name, clean_session=True, reconnect_on_failure=True
        )
        self._client.tls_set_context(client_tls_context(ca_certificate, certificate, key))
        self._jitter_reconnect_delay()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @classmethod
    def from_dir(cls, directory: Path, name: str, **kwargs: Any) -> Device:
        return cls(name, directory / CERT_FILE, directory / KEY_FILE, directory / CA_FILE, **kwargs)

    def _jitter_reconnect_delay(self) -> None:
        # Each device starts its backoff at a random point in [0.5, 1.5) s and doubles up to 60 s, so a
        # fleet cut off at once does not come back at once.
        self._client.reconnect_delay_set(min_delay=self._rng.uniform(0.5, 1.5), max_delay=60)  # type: ignore[arg-type]

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any) -> None:
        if reason.is_failure:
            self._refused = reason
            logger.warning("device %s: broker refused the connection: %s", self.name, reason)
            self._attempt_over.set()
            return
        self._refused = None
        client.subscribe(commands_filter(self.name), qos=1)
        self._connected.set()
        self._attempt_over.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self._connected.clear()
        self._attempt_over.set()
        self._jitter_reconnect_delay()
        logger.info("device %s disconnected: %s", self.name, reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self.on_command is not None:
            try:
                self.on_command(message.topic, bytes(message.payload))
            except Exception:
                logger.exception("device %s: command handler failed", self.name)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def connect(self, timeout: float = 10.0) -> None:
        """Connect and wait until the broker accepts; raises DeviceConnectError otherwise."""
        self._attempt_over.clear()
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            raise DeviceConnectError(f"device {self.name}: cannot connect to {self.host}:{self.port}: {e}") from e
        self._client.loop_start()
        self._attempt_over.wait(timeout)
        if not self._connected.is_set():
            reason = self._refused
            self.close()
            raise DeviceConnectError(
                f"device {self.name}: not connected"
                + (f": refused ({reason})" if reason else f" within {timeout:.0f} s (closed during TLS or CONNECT)")
            )

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def publish_telemetry(self, values: dict[str, Any], qos: int = 1) -> mqtt.MQTTMessageInfo:
        return self.publish(telemetry_topic(self.name), json.dumps(values, separators=(",", ":")), qos=qos)

    def publish_event(self, event_type: str, values: dict[str, Any], qos: int = 1) -> mqtt.MQTTMessageInfo:
        return self.publish(event_topic(self.name, event_type), json.dumps(values, separators=(",", ":")), qos=qos)

    def publish_state(self, state: DeviceState, qos: int = 1) -> mqtt.MQTTMessageInfo:
        """Report firmware, listening ports and onboarding state; the platform keeps the latest."""
        return self.publish(state_topic(self.name), state.to_payload(), qos=qos)

    def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        self._client.subscribe(topic_filter, qos=qos)

    @property
    def mqtt_client(self) -> mqtt.Client:
        """The underlying paho client, for tests and advanced use."""
        return self._client

    def close(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            self._connected.clear()
