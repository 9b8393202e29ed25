"""What is stored: only a thing's own telemetry and events, with bounded retention per thing."""

from __future__ import annotations

import pytest

from thingward.broker.base import InboundMessage
from thingward.ingest.store import classify, count_messages, recent_messages, store_messages
from thingward.platform import Platform
from thingward.registry import things
from thingward.registry.audit_log import Actor

pytestmark = pytest.mark.both_databases


def _msg(thing: str, topic: str, payload: bytes = b"{}") -> InboundMessage:
    return InboundMessage(thing=thing, topic=topic, payload=payload, qos=1, retain=False)


@pytest.mark.parametrize(
    ("thing", "topic", "kind"),
    [
        ("cam1", "things/cam1/telemetry", "telemetry"),
        ("cam1", "things/cam1/events/motion", "event"),
        ("cam1", "things/cam2/telemetry", None),  # a topic naming another thing never becomes its history
        ("cam1", "things/cam1/state", "state"),
        ("cam1", "things/cam2/state", None),  # nor its state report
        ("cam1", "things/cam1/events/a/b", None),
        ("cam1", "things/cam1/telemetry/extra", None),
    ],
)
def test_classification(thing: str, topic: str, kind: str | None) -> None:
    stored = classify(_msg(thing, topic))
    assert (stored.kind if stored else None) == kind


def test_retention_keeps_the_newest_per_thing(platform: Platform) -> None:
    actor = Actor("test", "pytest")
    with platform.db.session() as session:
        things.add_thing(session, actor, "cam1")
        things.add_thing(session, actor, "cam2")
    batch = [classify(_msg("cam1", "things/cam1/telemetry", str(i).encode())) for i in range(15)]
    batch.append(classify(_msg("cam2", "things/cam2/telemetry", b"other")))
    with platform.db.session() as session:
        assert store_messages(session, [m for m in batch if m], retention_per_thing=10) == 16
    with platform.db.read() as session:
        cam1 = things.get_thing(session, "cam1")
        assert count_messages(session, cam1) == 10
        assert [m.payload for m in recent_messages(session, cam1, 3)] == [b"14", b"13", b"12"]
        assert count_messages(session, things.get_thing(session, "cam2")) == 1
        assert cam1.last_seen_at is not None


def test_messages_of_unknown_things_are_skipped(platform: Platform) -> None:
    stored = classify(_msg("ghost", "things/ghost/telemetry"))
    assert stored is not None
    with platform.db.session() as session:
        assert store_messages(session, [stored], retention_per_thing=10) == 0


def test_retention_trims_older_batches_and_leaves_other_things_alone(platform: Platform) -> None:
    actor = Actor("test", "pytest")
    with platform.db.session() as session:
        things.add_thing(session, actor, "cam1")
        things.add_thing(session, actor, "cam2")
    for start in (0, 8, 16):  # three batches of 8 for cam1, one message for cam2 in the first
        batch = [classify(_msg("cam1", "things/cam1/telemetry", str(i).encode())) for i in range(start, start + 8)]
        if start == 0:
            batch.append(classify(_msg("cam2", "things/cam2/events/motion", b"kept")))
        with platform.db.session() as session:
            store_messages(session, [m for m in batch if m], retention_per_thing=10)
    with platform.db.read() as session:
        cam1 = things.get_thing(session, "cam1")
        assert [m.payload for m in recent_messages(session, cam1, 20)] == [str(i).encode() for i in range(23, 13, -1)]
        assert [m.payload for m in recent_messages(session, things.get_thing(session, "cam2"))] == [b"kept"]
