"""What a device can touch: its own topics only, whatever wildcard or retained path it tries.

Negatives use a sentinel: the same client receives an allowed message sent after the forbidden one; the
broker routes in order, so a forbidden message that got through would have arrived before it.
"""

from __future__ import annotations

from typing import Any


def test_publish_to_another_devices_topic_dropped_counted_and_not_delivered(
    broker: Any, pki: Any, online: Any, authorizer: Any
) -> None:
    cam2 = online(pki.device("cam2"), broker.port)
    assert cam2.subscribe("things/cam2/#") == 1
    cam1 = online(pki.device("cam1"), broker.port)
    cam1.publish("things/cam2/cmd", b"unlock")
    cam2.publish("things/cam2/sentinel", b"s")
    assert [m.topic for m in cam2.messages_until("things/cam2/sentinel")] == ["things/cam2/sentinel"]
    assert broker.broker.denials[("cam1", "publish")] == 1
    assert authorizer.called("cam1", "publish", "things/cam2/cmd")
    assert [broker.next_message().topic] == ["things/cam2/sentinel"]  # the sink never saw the denied one
    assert broker.messages.empty()


def test_subscribe_to_another_devices_topic_refused_with_0x80(broker: Any, pki: Any, online: Any) -> None:
    cam1 = online(pki.device("cam1"), broker.port)
    assert cam1.subscribe("things/cam2/#") == 0x80
    assert cam1.subscribe("things/cam2/cmd") == 0x80
    assert cam1.subscribe("things/cam1/#") == 1
    assert broker.broker.denials[("cam1", "subscribe")] == 2


def test_wildcard_subscriber_receives_nothing_of_other_devices(
    broker: Any, pki: Any, online: Any, authorizer: Any
) -> None:
    # The policy lets anyone subscribe to these wide filters: only the delivery check stands in the way.
    cam1 = online(pki.device("cam1"), broker.port)
    for topic_filter in ("#", "things/#", "things/+/telemetry"):
        assert cam1.subscribe(topic_filter) == 1
    cam2 = online(pki.device("cam2"), broker.port)
    cam2.publish("things/cam2/telemetry", b"secret")
    cam1.publish("things/cam1/telemetry", b"mine")
    received = cam1.messages_until("things/cam1/telemetry")
    assert {m.topic for m in received} == {"things/cam1/telemetry"}
    assert authorizer.called("cam1", "receive", "things/cam2/telemetry")
    assert broker.broker.denials[("cam1", "receive")] >= 1


def test_monitor_with_rights_receives_through_wildcards(broker: Any, pki: Any, online: Any) -> None:
    # The same path delivers when the policy allows it: the checks are policy, not a blanket block.
    monitor = online(pki.device("monitor"), broker.port)
    assert monitor.subscribe("things/+/telemetry") == 1
    online(pki.device("cam2"), broker.port).publish("things/cam2/telemetry", b"21C")
    message = monitor.next_message()
    assert (message.topic, message.payload) == ("things/cam2/telemetry", b"21C")


def test_retained_message_of_another_device_not_replayed_on_wildcard_subscribe(
    broker: Any, pki: Any, online: Any
) -> None:
    cam2 = online(pki.device("cam2"), broker.port)
    cam2.publish("things/cam2/state", b"door=open", retain=True)
    cam1 = online(pki.device("cam1"), broker.port)
    cam1.publish("things/cam1/state", b"sentinel", retain=True)  # stored after cam2's: replayed after it
    assert cam1.subscribe("#") == 1
    received = cam1.messages_until("things/cam1/state")
    assert [(m.topic, m.retain) for m in received] == [("things/cam1/state", True)]


def test_retained_messages_not_replayed_for_other_clients_filters_at_connect(
    broker: Any, pki: Any, online: Any
) -> None:
    # amqtt replays, at every CONNECT, the retained messages matching every filter in the broker,
    # other clients' filters included: cam1 must not get cam2's retained state through cam2's filter.
    cam2 = online(pki.device("cam2"), broker.port)
    assert cam2.subscribe("things/cam2/#") == 1
    cam2.publish("things/cam2/state", b"door=open", retain=True)
    assert cam2.next_message().topic == "things/cam2/state"
    cam1 = online(pki.device("cam1"), broker.port)
    cam1.publish("things/cam1/state", b"sentinel", retain=True)
    assert cam1.subscribe("things/cam1/#") == 1
    assert [m.topic for m in cam1.messages_until("things/cam1/state")] == ["things/cam1/state"]


def test_persistent_session_with_wide_filter_gets_no_foreign_retained_message_on_reconnect(
    broker: Any, pki: Any, device: Any, online: Any
) -> None:
    # A later CONNECT replays retained messages for the session's own stored filters: still checked.
    cam1_creds = pki.device("cam1")
    first = online(cam1_creds, broker.port, clean_session=False)
    assert first.subscribe("things/+/state") == 1
    first.close()
    assert broker.wait_until(lambda: "cam1" not in broker.broker.connected_things())
    online(pki.device("cam2"), broker.port).publish("things/cam2/state", b"door=open", retain=True)
    again = device(cam1_creds, broker.port, clean_session=False)
    outcome = again.connect()
    assert outcome.accepted and outcome.session_present
    again.publish("things/cam1/state", b"sentinel", retain=True)
    received = again.messages_until("things/cam1/state")
    assert [m.topic for m in received] == ["things/cam1/state"]


def test_sys_topics_closed_even_to_an_allow_all_policy(
    broker_factory: Any, pki: Any, online: Any, allow_all: Any
) -> None:
    broker = broker_factory(authorizer=allow_all)
    # amqtt's $SYS broadcaster is not loaded at all (no plugin of any kind is).
    assert broker.broker._core.plugins_manager.plugins == []
    cam1 = online(pki.device("cam1"), broker.port)
    assert cam1.subscribe("$SYS/#") == 0x80
    assert cam1.subscribe("$SYS/broker/uptime") == 0x80
    assert cam1.subscribe("#") == 1
    cam1.publish("$SYS/broker/uptime", b"forged")
    cam1.publish("things/cam1/sentinel", b"s")
    assert [m.topic for m in cam1.messages_until("things/cam1/sentinel")] == ["things/cam1/sentinel"]
    assert broker.broker.denials[("cam1", "subscribe")] == 2
    assert broker.broker.denials[("cam1", "publish")] == 1


def test_retained_clear_of_another_devices_topic_refused(broker: Any, pki: Any, online: Any) -> None:
    cam2 = online(pki.device("cam2"), broker.port)
    cam2.publish("things/cam2/state", b"door=closed", retain=True)
    cam1 = online(pki.device("cam1"), broker.port)
    cam1.publish("things/cam2/state", b"", retain=True)  # an empty retained publish would erase it
    monitor = online(pki.device("monitor"), broker.port)
    assert monitor.subscribe("things/cam2/state") == 1
    message = monitor.next_message()
    assert (message.topic, message.payload) == ("things/cam2/state", b"door=closed")
