"""Things, thing groups and their attributes: the functions every door calls to change them."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from thingward.errors import ConflictError, InvalidInputError, NotFoundError
from thingward.names import validate_name
from thingward.registry.audit_log import Actor, record_event
from thingward.registry.models import (
    Certificate,
    EnrollmentToken,
    GroupMember,
    Thing,
    ThingAttribute,
    ThingGroup,
)

MAX_GROUP_DEPTH = 7
MAX_ATTRIBUTES = 50
MAX_DESCRIPTION_LENGTH = 512  # the column's length: PostgreSQL enforces it, so it is checked first everywhere
DEFAULT_GROUP = "default"
# An enrollment token is "<thing name>.<secret>": the device learns its name from it; only the hash is stored.
TOKEN_SECRET_BYTES = 32


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def token_digest(token: str) -> str:
    # The secret has 256 bits of entropy, so a plain SHA-256 is enough: no dictionary to slow down.
    return hashlib.sha256(token.encode()).hexdigest()


def get_thing(session: Session, name: str) -> Thing:
    thing = session.execute(select(Thing).where(Thing.name == name)).scalar_one_or_none()
    if thing is None:
        raise NotFoundError(f"no thing named {name!r}: see 'thingward device list'")
    return thing


def get_group(session: Session, name: str) -> ThingGroup:
    group = session.execute(select(ThingGroup).where(ThingGroup.name == name)).scalar_one_or_none()
    if group is None:
        raise NotFoundError(f"no thing group named {name!r}: see 'thingward group list'")
    return group


def group_depth(group: ThingGroup) -> int:
    """1 for a root group, 2 for its child, and so on."""
    depth, seen, node = 1, {group.id}, group
    while node.parent is not None:
        node = node.parent
        if node.id in seen:
            raise ConflictError(f"group {group.name!r} is part of a cycle")
        seen.add(node.id)
        depth += 1
    return depth


def add_group(
    session: Session, actor: Actor, name: str, parent: str | None = None, description: str = ""
) -> ThingGroup:
    validate_name(name, "group")
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidInputError(
            f"the group description is {len(description)} characters long; the limit is {MAX_DESCRIPTION_LENGTH}"
        )
    if session.execute(select(ThingGroup.id).where(ThingGroup.name == name)).first():
        raise ConflictError(f"thing group {name!r} exists already")
    parent_group = get_group(session, parent) if parent else None
    group = ThingGroup(name=name, parent=parent_group, description=description, created_at=_now())
    if parent_group is not None and group_depth(parent_group) + 1 > MAX_GROUP_DEPTH:
        raise ConflictError(
            f"group {name!r} would be {MAX_GROUP_DEPTH + 1} levels deep; the limit is {MAX_GROUP_DEPTH}"
        )
    session.add(group)
    session.flush()
    record_event(session, actor, "group.add", f"group:{name}", {"parent": parent})
    return group


def _subtree_height(session: Session, group: ThingGroup) -> int:
    children = session.execute(select(ThingGroup).where(ThingGroup.parent_id == group.id)).scalars().all()
    return 1 + max((_subtree_height(session, c) for c in children), default=0)


def set_group_parent(session: Session, actor: Actor, name: str, parent: str | None) -> ThingGroup:
    group = get_group(session, name)
    new_parent = get_group(session, parent) if parent else None
    node = new_parent
    while node is not None:
        if node.id == group.id:
            raise ConflictError(f"making {parent!r} the parent of {name!r} would make a cycle")
        node = node.parent
    depth = (group_depth(new_parent) if new_parent else 0) + _subtree_height(session, group)
    if depth > MAX_GROUP_DEPTH:
        raise ConflictError(f"the group tree would be {depth} levels deep; the limit is {MAX_GROUP_DEPTH}")
    group.parent = new_parent
    record_event(session, actor, "group.set_parent", f"group:{name}", {"parent": parent})
    return group


def list_groups(session: Session) -> Sequence[ThingGroup]:
    return session.execute(select(ThingGroup).order_by(ThingGroup.name)).scalars().all()


def add_thing(
    session: Session,
    actor: Actor,
    name: str,
    groups: Sequence[str] = (),
    attributes: Mapping[str, str] | None = None,
) -> Thing:
    validate_name(name, "thing")
    if session.execute(select(Thing.id).where(Thing.name == name)).first():
        raise ConflictError(f"thing {name!r} exists already: use 'thingward device token {name}' to re-enroll it")
    thing = Thing(name=name, disabled=False, created_at=_now())
    thing.groups = [get_group(session, g) for g in (groups or [DEFAULT_GROUP])]
    session.add(thing)
    session.flush()
    for key, value in (attributes or {}).items():
        _set_attribute(session, thing, key, value)
    record_event(
        session,
        actor,
        "thing.add",
        f"thing:{name}",
        {"groups": [g.name for g in thing.groups], "attributes": dict(attributes or {})},
    )
    return thing


def _set_attribute(session: Session, thing: Thing, key: str, value: str) -> None:
    validate_name(key, "attribute")
    if len(value) > 256:
        raise InvalidInputError(f"attribute {key!r} is {len(value)} characters long; the limit is 256")
    existing = {a.key: a for a in thing.attributes}
    if key in existing:
        existing[key].value = value
        return
    if len(existing) >= MAX_ATTRIBUTES:
        raise InvalidInputError(f"thing {thing.name!r} has {MAX_ATTRIBUTES} attributes already; the limit")
    thing.attributes.append(ThingAttribute(key=key, value=value))


def set_attribute(session: Session, actor: Actor, name: str, key: str, value: str) -> Thing:
    thing = get_thing(session, name)
    _set_attribute(session, thing, key, value)
    record_event(session, actor, "thing.set_attribute", f"thing:{name}", {"key": key, "value": value})
    return thing


def add_to_group(session: Session, actor: Actor, thing_name: str, group_name: str) -> None:
    thing, group = get_thing(session, thing_name), get_group(session, group_name)
    if group in thing.groups:
        raise ConflictError(f"thing {thing_name!r} is in group {group_name!r} already")
    thing.groups.append(group)
    record_event(session, actor, "group.add_thing", f"group:{group_name}", {"thing": thing_name})


def remove_from_group(session: Session, actor: Actor, thing_name: str, group_name: str) -> None:
    thing, group = get_thing(session, thing_name), get_group(session, group_name)
    result = session.execute(
        delete(GroupMember).where(GroupMember.thing_id == thing.id, GroupMember.group_id == group.id)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFoundError(f"thing {thing_name!r} is not in group {group_name!r}")
    session.expire(thing, ["groups"])
    record_event(session, actor, "group.remove_thing", f"group:{group_name}", {"thing": thing_name})


def list_things(session: Session) -> Sequence[Thing]:
    return session.execute(select(Thing).order_by(Thing.name)).scalars().all()


@dataclass(frozen=True)
class IssuedToken:
    thing: str
    token: str
    expires_at: dt.datetime


def create_enrollment_token(session: Session, actor: Actor, name: str, ttl: dt.timedelta) -> IssuedToken:
    """A single-use token for `name`; only its hash is stored, the token itself is shown once."""
    thing = get_thing(session, name)
    if thing.disabled:
        raise ConflictError(f"thing {name!r} is disabled: enable it before issuing an enrollment token")
    token = f"{name}.{secrets.token_urlsafe(TOKEN_SECRET_BYTES)}"
    now = _now()
    session.add(EnrollmentToken(thing=thing, token_sha256=token_digest(token), created_at=now, expires_at=now + ttl))
    record_event(session, actor, "thing.enrollment_token", f"thing:{name}", {"expires_at": (now + ttl).isoformat()})
    return IssuedToken(thing=name, token=token, expires_at=now + ttl)


def thing_certificates(session: Session, thing: Thing) -> Sequence[Certificate]:
    return (
        session.execute(select(Certificate).where(Certificate.thing_id == thing.id).order_by(Certificate.id))
        .scalars()
        .all()
    )
