"""Who is told about a camera's event, what they choose to hear, and what they were told.

Recipients are the people in the user groups a thing is shared with (any role), not disabled, who have
not turned that thing's event type off: notifications are on by default for every thing a person may
see. A preference for a thing the person cannot see is refused as a missing thing (the same 404).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from thingward.accounts.sharing import get_visible_thing, visible_things, visible_things_query
from thingward.errors import InvalidInputError
from thingward.registry.models import (
    CameraSnapshot,
    MotionEvent,
    Notification,
    NotificationPreference,
    Thing,
    ThingShare,
    User,
    UserGroupMember,
)

EVENT_TYPES: tuple[str, ...] = ("motion",)
MAX_LISTED = 100


@dataclass(frozen=True)
class Preference:
    thing: str
    event_type: str
    enabled: bool

    def to_dict(self) -> dict[str, object]:
        return {"thing": self.thing, "event_type": self.event_type, "enabled": self.enabled}


@dataclass(frozen=True)
class NotificationView:
    """One notification as a person's page shows it."""

    id: int
    user_id: int
    thing: str
    event_type: str
    message: str
    created_at: dt.datetime
    snapshot_id: int | None = None
    changed_fraction: float | None = None
    region: dict[str, int | None] | None = None
    image_width: int | None = None
    image_height: int | None = None

    def to_dict(self) -> dict[str, object]:
        snapshot = self.snapshot_id
        return {
            "id": self.id,
            "thing": self.thing,
            "event_type": self.event_type,
            "message": self.message,
            "created_at": self.created_at.isoformat(),
            "snapshot_id": snapshot,
            "snapshot_url": f"/api/v1/snapshots/{snapshot}" if snapshot is not None else None,
            "annotated_url": f"/api/v1/snapshots/{snapshot}/annotated" if snapshot is not None else None,
            "changed_fraction": self.changed_fraction,
            "region": self.region,
            "image": {"width": self.image_width, "height": self.image_height} if self.image_width else None,
        }


def _check_event_type(event_type: str) -> str:
    if event_type not in EVENT_TYPES:
        raise InvalidInputError(f"event_type must be one of {', '.join(EVENT_TYPES)}, not {event_type!r}")
    return event_type


def recipients(session: Session, thing: Thing, event_type: str) -> list[int]:
    """Ids of the people to tell about `event_type` on `thing`."""
    shared_with = (
        select(UserGroupMember.user_id)
        .join(ThingShare, ThingShare.user_group_id == UserGroupMember.group_id)
        .where(ThingShare.thing_id == thing.id)
    )
    turned_off = select(NotificationPreference.user_id).where(
        NotificationPreference.thing_id == thing.id,
        NotificationPreference.event_type == event_type,
        NotificationPreference.enabled.is_(False),
    )
    query = (
        select(User.id)
        .where(User.id.in_(shared_with), User.id.not_in(turned_off), User.disabled.is_(False))
        .order_by(User.id)
    )
    return list(session.execute(query).scalars())


def preferences(session: Session, user: User) -> list[Preference]:
    """The person's effective choice for every thing they see and every event type."""
    stored = {
        (thing_id, event_type): enabled
        for thing_id, event_type, enabled in session.execute(
            select(
                NotificationPreference.thing_id, NotificationPreference.event_type, NotificationPreference.enabled
            ).where(NotificationPreference.user_id == user.id)
        )
    }
    return [
        Preference(thing.name, event_type, stored.get((thing.id, event_type), True))
        for thing in visible_things(session, user)
        for event_type in EVENT_TYPES
    ]


def set_preferences(session: Session, user: User, changes: Sequence[Preference]) -> list[Preference]:
    """Store the person's choices; each thing must be one they may see."""
    for change in changes:
        _check_event_type(change.event_type)
        thing = get_visible_thing(session, user, change.thing)
        row = session.execute(
            select(NotificationPreference).where(
                NotificationPreference.user_id == user.id,
                NotificationPreference.thing_id == thing.id,
                NotificationPreference.event_type == change.event_type,
            )
        ).scalar_one_or_none()
        if row is None:
            session.add(
                NotificationPreference(
                    user_id=user.id, thing_id=thing.id, event_type=change.event_type, enabled=change.enabled
                )
            )
        else:
            row.enabled = change.enabled
    session.flush()
    return preferences(session, user)


def notify(session: Session, thing: Thing, event: MotionEvent, message: str, now: dt.datetime) -> list[Notification]:
    """One notification row per recipient of a motion event."""
    rows = [
        Notification(
            user_id=user_id,
            thing_id=thing.id,
            event_type="motion",
            motion_event_id=event.id,
            message=message[:512],
            created_at=now,
        )
        for user_id in recipients(session, thing, "motion")
    ]
    session.add_all(rows)
    session.flush()
    return rows


def _views(session: Session, *conditions: ColumnElement[bool], limit: int = MAX_LISTED) -> list[NotificationView]:
    rows = session.execute(
        select(Notification, Thing.name, MotionEvent, CameraSnapshot)
        .join(Thing, Thing.id == Notification.thing_id)
        .outerjoin(MotionEvent, MotionEvent.id == Notification.motion_event_id)
        .outerjoin(CameraSnapshot, CameraSnapshot.id == MotionEvent.snapshot_id)
        .where(*conditions)
        .order_by(Notification.id.desc())
        .limit(limit)
    ).all()
    out = []
    for notification, thing_name, event, snapshot in rows:
        region = None
        if event is not None and event.region_x is not None:
            region = {
                "x": event.region_x,
                "y": event.region_y,
                "width": event.region_width,
                "height": event.region_height,
            }
        out.append(
            NotificationView(
                id=notification.id,
                user_id=notification.user_id,
                thing=thing_name,
                event_type=notification.event_type,
                message=notification.message,
                created_at=notification.created_at,
                snapshot_id=snapshot.id if snapshot is not None else None,
                changed_fraction=event.changed_fraction if event is not None else None,
                region=region,
                image_width=snapshot.width if snapshot is not None else None,
                image_height=snapshot.height if snapshot is not None else None,
            )
        )
    return out


def views_by_id(session: Session, ids: Sequence[int]) -> list[NotificationView]:
    return _views(session, Notification.id.in_(list(ids)))


def recent(session: Session, user: User, limit: int = 20, after_id: int = 0) -> list[NotificationView]:
    """The person's newest notifications (at most `MAX_LISTED`), newest first; `after_id` for a resumed stream.

    Only of things they may still see: someone taken out of a household stops seeing what it sent them.
    """
    visible = visible_things_query(user).with_only_columns(Thing.id).order_by(None)
    return _views(
        session,
        Notification.user_id == user.id,
        Notification.id > after_id,
        Notification.thing_id.in_(visible),
        limit=max(1, min(limit, MAX_LISTED)),
    )
