"""Who may see and control which things: user groups, and things shared with them with a role.

Things are shared with groups (a household, a support team), never with one person, so adding someone
to a household gives them its devices and removing them takes the devices away. Admins see everything.
For everyone else a thing not shared with one of their groups does not exist: `get_visible_thing`
raises the very same NotFoundError as for a thing that is missing, so a door answers 404 to both.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from enum import StrEnum

from sqlalchemy import Select, delete, false, select
from sqlalchemy.orm import Session

from thingward.errors import ConflictError, InvalidInputError, NotFoundError
from thingward.names import validate_name
from thingward.registry.audit_log import Actor, record_event
from thingward.registry.models import Thing, ThingShare, User, UserGroup, UserGroupMember
from thingward.registry.things import get_thing


class Role(StrEnum):
    OWNER = "owner"  # sees and controls the thing
    VIEWER = "viewer"  # sees it and its messages


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def get_user_group(session: Session, name: str) -> UserGroup:
    group = session.execute(select(UserGroup).where(UserGroup.name == name)).scalar_one_or_none()
    if group is None:
        raise NotFoundError(f"no user group named {name!r}: see 'thingward user group list'")
    return group


def add_user_group(session: Session, actor: Actor, name: str, description: str = "") -> UserGroup:
    validate_name(name, "user group")
    if session.execute(select(UserGroup.id).where(UserGroup.name == name)).first():
        raise ConflictError(f"user group {name!r} exists already")
    group = UserGroup(name=name, description=description, created_at=_now())
    session.add(group)
    session.flush()
    record_event(session, actor, "user_group.add", f"user_group:{name}", {"description": description})
    return group


def list_user_groups(session: Session) -> Sequence[UserGroup]:
    return session.execute(select(UserGroup).order_by(UserGroup.name)).scalars().all()


def add_member(session: Session, actor: Actor, group_name: str, user: User) -> None:
    group = get_user_group(session, group_name)
    exists = session.get(UserGroupMember, (group.id, user.id))
    if exists is not None:
        raise ConflictError(f"{user.email} is in user group {group_name!r} already")
    session.add(UserGroupMember(group_id=group.id, user_id=user.id))
    session.flush()
    record_event(session, actor, "user_group.member_add", f"user_group:{group_name}", {"user": user.email})


def remove_member(session: Session, actor: Actor, group_name: str, user: User) -> None:
    group = get_user_group(session, group_name)
    member = session.get(UserGroupMember, (group.id, user.id))
    if member is None:
        raise NotFoundError(f"{user.email} is not in user group {group_name!r}")
    session.delete(member)
    session.flush()
    record_event(session, actor, "user_group.member_remove", f"user_group:{group_name}", {"user": user.email})


def group_members(session: Session, group_name: str) -> list[str]:
    group = get_user_group(session, group_name)
    query = (
        select(User.email)
        .join(UserGroupMember, UserGroupMember.user_id == User.id)
        .where(UserGroupMember.group_id == group.id)
        .order_by(User.email)
    )
    return list(session.execute(query).scalars())


def groups_of(session: Session, user: User) -> list[str]:
    query = (
        select(UserGroup.name)
        .join(UserGroupMember, UserGroupMember.group_id == UserGroup.id)
        .where(UserGroupMember.user_id == user.id)
        .order_by(UserGroup.name)
    )
    return list(session.execute(query).scalars())


def share_thing(session: Session, actor: Actor, thing_name: str, group_name: str, role: str) -> ThingShare:
    """Share a thing with a user group, or change the role it has; one row per (thing, group)."""
    try:
        chosen = Role(role)
    except ValueError as e:
        raise InvalidInputError(f"role must be one of {', '.join(r.value for r in Role)}, not {role!r}") from e
    thing = get_thing(session, thing_name)
    group = get_user_group(session, group_name)
    share = session.execute(
        select(ThingShare).where(ThingShare.thing_id == thing.id, ThingShare.user_group_id == group.id)
    ).scalar_one_or_none()
    if share is None:
        share = ThingShare(thing_id=thing.id, user_group_id=group.id, role=chosen.value)
        session.add(share)
    else:
        share.role = chosen.value
    session.flush()
    record_event(session, actor, "thing.share", f"thing:{thing_name}", {"user_group": group_name, "role": chosen})
    return share


def unshare_thing(session: Session, actor: Actor, thing_name: str, group_name: str) -> None:
    thing = get_thing(session, thing_name)
    group = get_user_group(session, group_name)
    result = session.execute(
        delete(ThingShare).where(ThingShare.thing_id == thing.id, ThingShare.user_group_id == group.id)
    )
    if not getattr(result, "rowcount", 0):
        raise NotFoundError(f"thing {thing_name!r} is not shared with user group {group_name!r}")
    record_event(session, actor, "thing.unshare", f"thing:{thing_name}", {"user_group": group_name})


def shares_of(session: Session, thing: Thing) -> list[tuple[str, str]]:
    query = (
        select(UserGroup.name, ThingShare.role)
        .join(ThingShare, ThingShare.user_group_id == UserGroup.id)
        .where(ThingShare.thing_id == thing.id)
        .order_by(UserGroup.name)
    )
    return [(name, role) for name, role in session.execute(query)]


def _roles_query(user: User, thing_id: int) -> Select[str]:
    return (
        select(ThingShare.role)
        .join(UserGroupMember, UserGroupMember.group_id == ThingShare.user_group_id)
        .where(UserGroupMember.user_id == user.id, ThingShare.thing_id == thing_id)
    )


def _usable(user: User) -> bool:
    return not user.disabled


def can_view(session: Session, user: User, thing: Thing) -> bool:
    if not _usable(user):
        return False
    if user.is_admin:
        return True
    return session.execute(_roles_query(user, thing.id).limit(1)).first() is not None


def can_control(session: Session, user: User, thing: Thing) -> bool:
    if not _usable(user):
        return False
    if user.is_admin:
        return True
    roles = set(session.execute(_roles_query(user, thing.id)).scalars())
    return Role.OWNER.value in roles


def visible_things_query(user: User) -> Select[Thing]:
    """The things `user` may see, as a query a door can page or filter further."""
    query = select(Thing).order_by(Thing.name)
    if user.disabled:
        return query.where(false())
    if user.is_admin:
        return query
    shared = (
        select(ThingShare.thing_id)
        .join(UserGroupMember, UserGroupMember.group_id == ThingShare.user_group_id)
        .where(UserGroupMember.user_id == user.id)
    )
    return query.where(Thing.id.in_(shared))


def visible_things(session: Session, user: User) -> Sequence[Thing]:
    return session.execute(visible_things_query(user)).scalars().all()


def get_visible_thing(session: Session, user: User, name: str, *, control: bool = False) -> Thing:
    """The thing if `user` may see it (and control it, if asked); otherwise the same error as a missing one."""
    try:
        thing = get_thing(session, name)
    except NotFoundError:
        thing = None
    allowed = thing is not None and (can_control(session, user, thing) if control else can_view(session, user, thing))
    if thing is None or not allowed:
        raise NotFoundError(f"no thing named {name!r}: see 'thingward device list'")
    return thing
