"""Which messages are stored, and how: `things/NAME/telemetry` and `things/NAME/events/TYPE` are kept as
history; `things/NAME/state` is the device's report about itself, of which only the latest is kept."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from thingward.broker.base import InboundMessage
from thingward.errors import InvalidInputError
from thingward.registry.device_state import parse_state_report, store_report
from thingward.registry.models import Message, Thing

logger = logging.getLogger(__name__)

_STORED_TOPIC = re.compile(
    r"things/(?P<thing>[a-z0-9_-]{1,64})/"
    r"(?:(?P<telemetry>telemetry)|(?P<state>state)|events/(?P<event>[A-Za-z0-9_.-]{1,64}))"
)


@dataclass(frozen=True)
class StoredMessage:
    thing: str
    topic: str
    kind: str
    event_type: str | None
    payload: bytes
    received_at: dt.datetime


def classify(message: InboundMessage) -> StoredMessage | None:
    """The stored form of an accepted message, or None when its topic is not one we keep.

    The broker has already checked the publish against the policy; the topic must also name the
    sender, so a policy that lets one thing publish under another's prefix cannot forge its history.
    """
    match = _STORED_TOPIC.fullmatch(message.topic)
    if match is None or match["thing"] != message.thing:
        return None
    kind = "telemetry" if match["telemetry"] else "state" if match["state"] else "event"
    return StoredMessage(
        thing=message.thing,
        topic=message.topic,
        kind=kind,
        event_type=match["event"],
        payload=message.payload,
        received_at=dt.datetime.now(dt.UTC),
    )


def _store_reports(session: Session, reports: Sequence[StoredMessage], ids: dict[str, int]) -> None:
    """Keep each thing's newest valid report. A malformed one is logged and dropped; the last good one stays."""
    for message in reports:
        if message.thing not in ids:
            continue
        try:
            report = parse_state_report(message.payload)
        except InvalidInputError as e:
            logger.warning("thing %r sent a state report we cannot use: %s", message.thing, e)
            continue
        store_report(session, ids[message.thing], report, message.received_at)


def store_messages(session: Session, messages: Sequence[StoredMessage], retention_per_thing: int) -> int:
    """Insert a batch and trim each thing touched to its newest `retention_per_thing` messages.

    State reports in the batch update the things' latest reports instead. Returns the messages stored.
    """
    if not messages:
        return 0
    names = sorted({m.thing for m in messages})
    ids: dict[str, int] = {
        name: tid for name, tid in session.execute(select(Thing.name, Thing.id).where(Thing.name.in_(names)))
    }
    last_seen = max(m.received_at for m in messages)
    _store_reports(session, [m for m in messages if m.kind == "state"], ids)
    messages = [m for m in messages if m.kind != "state"]
    rows = [
        {
            "thing_id": ids[m.thing],
            "topic": m.topic,
            "kind": m.kind,
            "event_type": m.event_type,
            "payload": m.payload,
            "received_at": m.received_at,
        }
        for m in messages
        if m.thing in ids
    ]
    if rows:
        # Set-based: a few statements per batch whatever the number of things, since every statement is a
        # round trip to a PostgreSQL server (SQLite gains too).
        session.execute(insert(Message), rows)
        touched = sorted({ids[m.thing] for m in messages if m.thing in ids})
        newest_first = (
            select(
                Message.id, func.row_number().over(partition_by=Message.thing_id, order_by=Message.id.desc()).label("n")
            )
            .where(Message.thing_id.in_(touched))
            .subquery()
        )
        session.execute(
            delete(Message).where(
                Message.id.in_(select(newest_first.c.id).where(newest_first.c.n > retention_per_thing))
            )
        )
    seen = sorted(ids[name] for name in names if name in ids)
    if seen:
        session.execute(update(Thing).where(Thing.id.in_(seen)).values(last_seen_at=last_seen))
    return len(rows)


def recent_messages(session: Session, thing: Thing, limit: int = 20) -> Sequence[Message]:
    return (
        session.execute(select(Message).where(Message.thing_id == thing.id).order_by(Message.id.desc()).limit(limit))
        .scalars()
        .all()
    )


def count_messages(session: Session, thing: Thing) -> int:
    return session.execute(select(func.count(Message.id)).where(Message.thing_id == thing.id)).scalar_one()
