"""Per-identity limits: connect flapping, payload size, publish rate; live through real clients."""

from __future__ import annotations

from typing import Any

from thingward.broker.base import BrokerLimits


def test_connect_flapping_refused(broker_factory: Any, pki: Any, device: Any) -> None:
    broker = broker_factory(limits=BrokerLimits(max_connects_per_minute=3))
    creds = pki.device("cam1")
    for _ in range(3):
        client = device(creds, broker.port)
        assert client.connect().accepted
        client.close()
    outcome = device(creds, broker.port).connect()
    assert not outcome.accepted and "Not authorized" in outcome.detail
    assert broker.broker.denials[("cam1", "connect")] == 1
    # The limit is per identity: another device is not affected.
    assert device(pki.device("cam2"), broker.port).connect().accepted


def test_payload_over_the_limit_dropped_and_connection_closed(broker_factory: Any, pki: Any, online: Any) -> None:
    broker = broker_factory(limits=BrokerLimits(max_payload_bytes=1024))
    cam1 = online(pki.device("cam1"), broker.port)
    cam1.publish("things/cam1/blob", b"x" * 1024)
    assert len(broker.next_message().payload) == 1024
    cam1.client.publish("things/cam1/blob", b"x" * 1025, qos=0)
    assert cam1.disconnected.wait(5)
    assert broker.messages.empty()
    assert broker.broker.denials[("cam1", "publish")] == 1


def test_huge_payload_refused_from_its_header(broker_factory: Any, pki: Any, online: Any) -> None:
    # The length in the fixed header is enough to refuse: the broker does not buffer 8 MB first.
    broker = broker_factory(limits=BrokerLimits(max_payload_bytes=1024))
    cam1 = online(pki.device("cam1"), broker.port)
    cam1.client.publish("things/cam1/blob", b"x" * (8 * 1024 * 1024), qos=0)
    assert cam1.disconnected.wait(5)
    assert broker.broker.denials[("cam1", "publish")] == 1
    assert broker.messages.empty()


def test_will_payload_over_the_limit_refused(broker_factory: Any, pki: Any, device: Any) -> None:
    broker = broker_factory(limits=BrokerLimits(max_payload_bytes=16))
    outcome = device(pki.device("cam1"), broker.port, will=("things/cam1/status", b"x" * 17, False)).connect()
    assert not outcome.accepted


def test_publish_rate_over_the_limit_dropped(broker_factory: Any, pki: Any, online: Any) -> None:
    broker = broker_factory(limits=BrokerLimits(max_publish_per_second=5))
    cam1 = online(pki.device("cam1"), broker.port)
    sent = 30
    for i in range(sent):
        cam1.publish("things/cam1/telemetry", str(i).encode())
    core = broker.broker
    assert broker.wait_until(lambda: broker.messages.qsize() + core.denials[("cam1", "publish")] == sent)
    accepted = broker.messages.qsize()
    # A burst of 5 plus what refills while 30 QoS 1 round trips take on loopback (well under 2 s).
    assert 5 <= accepted <= 15, accepted
    assert core.denials[("cam1", "publish")] == sent - accepted


def test_connections_over_the_global_cap_closed_at_once(broker_factory: Any, pki: Any, device: Any) -> None:
    broker = broker_factory(limits=BrokerLimits(max_connections=2))
    first = device(pki.device("cam1"), broker.port)
    second = device(pki.device("cam2"), broker.port)
    assert first.connect().accepted and second.connect().accepted
    assert not device(pki.device("cam3"), broker.port).connect().accepted
    assert broker.broker.refused_over_capacity == 1
    first.close()
    assert broker.wait_until(lambda: broker.broker.open_connections == 1)
    assert device(pki.device("cam3"), broker.port).connect().accepted
