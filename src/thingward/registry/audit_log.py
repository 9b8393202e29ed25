"""The tamper-evident audit log: every change is an event chained to the one before it by HMAC-SHA-256.

The database refuses UPDATE and DELETE on the table and any insert that does not follow the newest event
(triggers from the migrations). The chain is keyed with a secret kept outside the database (`audit.key`
in the data dir, 0600), so someone who can write the database file but not read the key cannot forge a
consistent history; `verify_audit_chain` finds any edit. Dropping the newest events leaves a valid,
shorter chain: export the chain head elsewhere (`thingward log verify --json` prints it) to catch that.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from thingward.errors import ConfigError, InvalidInputError
from thingward.registry.models import AuditEvent

GENESIS = "0" * 64
# The hashed body is the compact JSON array of seven strings: json.dumps(parts, separators=(",", ":")).
# Built here from the same C string encoder json.dumps uses, byte for byte the same (a test compares
# them), without the encoder set-up that json.dumps pays on every call: most of the cost of a long chain.
_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii


@dataclass(frozen=True)
class Actor:
    """Who made a change and from where (a CLI user on a host, an API client address, the server itself)."""

    name: str
    source: str


SYSTEM = Actor(name="thingward", source="server")


def _audit_key(session: Session) -> bytes:
    key = session.info.get("audit_key")
    if not key:
        raise ConfigError("no audit log key: open the data dir through thingward.platform.Platform")
    return bytes(key)


def _event_hash(
    key: bytes, prev_hash: str, at: dt.datetime, actor: str, source: str, action: str, target: str, detail: str
) -> str:
    parts = (prev_hash, at.isoformat(), actor, source, action, target, detail)
    body = "[" + ",".join(map(_json_string, parts)) + "]"
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def record_event(
    session: Session, actor: Actor, action: str, target: str, detail: Mapping[str, Any] | None = None
) -> AuditEvent:
    """Append an event in the caller's transaction, so the change and its record commit together."""
    for field_name, value, limit in (
        ("actor", actor.name, 128),
        ("source", actor.source, 128),
        ("action", action, 64),
        ("target", target, 256),
    ):
        # The columns' lengths: PostgreSQL enforces them, so they are checked here on every database.
        if len(value) > limit:
            raise InvalidInputError(f"audit event {field_name} is {len(value)} characters long; the limit is {limit}")
    if session.get_bind().dialect.name == "postgresql":
        # Read the head and append under one lock, held to the commit: two writers never link to the same
        # head. The insert guard trigger takes the same lock; taking it first here avoids a lock upgrade.
        session.execute(text("LOCK TABLE audit_events IN SHARE ROW EXCLUSIVE MODE"))
    last = session.execute(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)).scalar()
    prev_hash = last or GENESIS
    at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    detail_json = json.dumps(dict(detail or {}), sort_keys=True, separators=(",", ":"), default=str)
    event = AuditEvent(
        at=at,
        actor=actor.name,
        source=actor.source,
        action=action,
        target=target,
        detail=detail_json,
        prev_hash=prev_hash,
        hash=_event_hash(_audit_key(session), prev_hash, at, actor.name, actor.source, action, target, detail_json),
    )
    session.add(event)
    session.flush()
    return event


def list_events(session: Session, limit: int = 100, target: str | None = None) -> Sequence[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if target is not None:
        query = query.where(AuditEvent.target == target)
    return session.execute(query).scalars().all()


def latest_event_id(session: Session) -> int:
    return session.execute(select(AuditEvent.id).order_by(AuditEvent.id.desc()).limit(1)).scalar() or 0


def verify_audit_chain(session: Session) -> int | None:
    """The id of the first event whose hash or link is wrong, or None when the whole chain holds."""
    key = _audit_key(session)
    prev_hash = GENESIS
    columns = (
        AuditEvent.id,
        AuditEvent.at,
        AuditEvent.actor,
        AuditEvent.source,
        AuditEvent.action,
        AuditEvent.target,
        AuditEvent.detail,
        AuditEvent.prev_hash,
        AuditEvent.hash,
    )
    # Rows, not ORM objects, streamed: the chain of a large fleet has hundreds of thousands of events.
    # Closed on every way out: an early return must not leave a server-side cursor open on PostgreSQL.
    with session.connection().execute(
        select(*columns).order_by(AuditEvent.id).execution_options(yield_per=10_000)
    ) as rows:
        for event_id, at, actor, source, action, target, detail, event_prev, event_hash in rows:
            expected = _event_hash(key, prev_hash, at, actor, source, action, target, detail)
            if event_prev != prev_hash or event_hash != expected:
                return int(event_id)
            prev_hash = event_hash
    return None


def event_to_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "actor": event.actor,
        "source": event.source,
        "action": event.action,
        "target": event.target,
        "detail": json.loads(event.detail),
        "hash": event.hash,
    }
