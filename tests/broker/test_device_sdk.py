"""The device SDK against the embedded broker: it connects as itself, and comes back by itself after a drop."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from thingward.device.client import Device, DeviceConnectError


def _device(pki: Any, broker: Any, name: str, **kwargs: Any) -> Device:
    creds = pki.device(name)
    return Device(name, creds.cert, creds.key, pki.tls.ca_file, host="127.0.0.1", port=broker.port, **kwargs)


def test_device_reconnects_after_being_dropped(broker: Any, pki: Any) -> None:
    device = _device(pki, broker, "cam1", rng=random.Random(7))
    device.connect(timeout=5)
    try:
        dropped = broker.call(broker.broker.disconnect("cam1"))
        assert dropped == 1
        assert broker.wait_until(lambda: not device.connected, 3)
        # Backoff starts at 0.5 to 1.5 s (seeded); the device must be back well within 5 s.
        assert device.wait_connected(5)
        device.publish_telemetry({"after": "reconnect"}).wait_for_publish(5)
        assert broker.next_message().topic == "things/cam1/telemetry"
    finally:
        device.close()


def test_device_receives_its_commands(broker_factory: Any, pki: Any, allow_all: Any, online: Any) -> None:
    broker = broker_factory(authorizer=allow_all)
    got: list[tuple[str, bytes]] = []
    arrived = threading.Event()

    def on_command(topic: str, payload: bytes) -> None:
        got.append((topic, payload))
        arrived.set()

    device = _device(pki, broker, "cam1", on_command=on_command)
    device.connect(timeout=5)
    try:
        # The SDK subscribes to its commands right after CONNACK; wait until the broker has the filter.
        assert broker.wait_until(lambda: "cam1" in broker.broker.connected_things())
        operator = online(pki.device("operator"), broker.port)
        for _ in range(50):  # bounded: the subscription lands within a few round trips
            operator.publish("things/cam1/commands/reboot", b"now")
            if arrived.wait(0.1):
                break
        assert got and got[0] == ("things/cam1/commands/reboot", b"now")
    finally:
        device.close()


def test_refused_device_fails_fast_with_reason(broker_factory: Any, pki: Any) -> None:
    from thingward.broker.base import BrokerLimits

    broker = broker_factory(limits=BrokerLimits(max_connects_per_minute=1))
    first = _device(pki, broker, "cam1")
    first.connect(timeout=5)
    first.close()
    second = _device(pki, broker, "cam1")
    with pytest.raises(DeviceConnectError, match="refused"):
        second.connect(timeout=5)
