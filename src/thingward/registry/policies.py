"""Policy documents in the registry, their attachments, and the snapshot the policy engine compiles."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from thingward.errors import ConflictError, NotFoundError
from thingward.names import validate_name
from thingward.policy.document import PolicyDocument, parse_policy_document
from thingward.policy.world import GroupFacts, PolicyWorld, ThingFacts
from thingward.registry.audit_log import Actor, record_event
from thingward.registry.models import GroupMember, Policy, PolicyAttachment, Thing, ThingAttribute, ThingGroup
from thingward.registry.things import get_group, get_thing


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def get_policy(session: Session, name: str) -> Policy:
    policy = session.execute(select(Policy).where(Policy.name == name)).scalar_one_or_none()
    if policy is None:
        raise NotFoundError(f"no policy named {name!r}: see 'thingward policy list'")
    return policy


def add_policy(session: Session, actor: Actor, name: str, text: str | bytes) -> Policy:
    validate_name(name, "policy")
    document = parse_policy_document(text)  # PolicyDocumentError says what is wrong; nothing is stored
    if session.execute(select(Policy.id).where(Policy.name == name)).first():
        raise ConflictError(f"policy {name!r} exists already: use 'thingward policy update'")
    now = _now()
    policy = Policy(name=name, document=document.to_json(), version=1, created_at=now, updated_at=now)
    session.add(policy)
    session.flush()
    record_event(session, actor, "policy.add", f"policy:{name}", {"document": document.to_json()})
    return policy


def update_policy(session: Session, actor: Actor, name: str, text: str | bytes) -> Policy:
    document = parse_policy_document(text)
    policy = get_policy(session, name)
    policy.document = document.to_json()
    policy.version += 1
    policy.updated_at = _now()
    record_event(
        session,
        actor,
        "policy.update",
        f"policy:{name}",
        {"version": policy.version, "document": policy.document},
    )
    return policy


def list_policies(session: Session) -> Sequence[Policy]:
    return session.execute(select(Policy).order_by(Policy.name)).scalars().all()


def attach_policy(
    session: Session, actor: Actor, policy_name: str, *, group: str | None = None, thing: str | None = None
) -> None:
    """Attach a policy to a group (the normal way) or to a single thing (possible, reported by lint)."""
    if (group is None) == (thing is None):
        raise ConflictError("attach a policy to exactly one group or one thing")
    policy = get_policy(session, policy_name)
    target_group = get_group(session, group) if group else None
    target_thing = get_thing(session, thing) if thing else None
    query = select(PolicyAttachment.id).where(PolicyAttachment.policy_id == policy.id)
    if target_group is not None:
        query = query.where(PolicyAttachment.group_id == target_group.id)
    elif target_thing is not None:
        query = query.where(PolicyAttachment.thing_id == target_thing.id)
    exists = session.execute(query).first()
    target = f"group:{group}" if group else f"thing:{thing}"
    if exists:
        raise ConflictError(f"policy {policy_name!r} is attached to {target} already")
    session.add(PolicyAttachment(policy=policy, group=target_group, thing=target_thing))
    record_event(session, actor, "policy.attach", f"policy:{policy_name}", {"target": target})


def detach_policy(
    session: Session, actor: Actor, policy_name: str, *, group: str | None = None, thing: str | None = None
) -> None:
    policy = get_policy(session, policy_name)
    query = select(PolicyAttachment).where(PolicyAttachment.policy_id == policy.id)
    if group:
        query = query.where(PolicyAttachment.group_id == get_group(session, group).id)
    elif thing:
        query = query.where(PolicyAttachment.thing_id == get_thing(session, thing).id)
    else:
        raise ConflictError("detach a policy from exactly one group or one thing")
    attachment = session.execute(query).scalar_one_or_none()
    target = f"group:{group}" if group else f"thing:{thing}"
    if attachment is None:
        raise NotFoundError(f"policy {policy_name!r} is not attached to {target}")
    session.delete(attachment)
    record_event(session, actor, "policy.detach", f"policy:{policy_name}", {"target": target})


def load_policy_world(session: Session) -> PolicyWorld:
    """Everything the policy engine needs, read in a few queries. Disabled things are left out: denied all."""
    groups = session.execute(select(ThingGroup.id, ThingGroup.name, ThingGroup.parent_id)).all()
    group_name = {gid: name for gid, name, _ in groups}
    group_facts = {
        name: GroupFacts(name=name, parent=group_name.get(parent_id) if parent_id else None)
        for _gid, name, parent_id in groups
    }
    # Plain Core rows for what grows with the fleet: ORM objects cost seconds at 100k things, on every reload.
    connection = session.connection()
    memberships: dict[int, list[str]] = defaultdict(list)
    for group_id, thing_id in connection.execute(select(GroupMember.group_id, GroupMember.thing_id)).all():
        memberships[thing_id].append(group_name[group_id])
    attributes: dict[int, dict[str, str]] = defaultdict(dict)
    for thing_id, key, value in connection.execute(
        select(ThingAttribute.thing_id, ThingAttribute.key, ThingAttribute.value)
    ).all():
        attributes[thing_id][key] = value
    thing_facts = {
        name: ThingFacts(
            name=name,
            attributes=attributes.get(thing_id, {}),
            groups=tuple(sorted(memberships.get(thing_id, []))),
        )
        for thing_id, name in connection.execute(select(Thing.id, Thing.name).where(Thing.disabled.is_(False))).all()
    }
    policies: dict[str, PolicyDocument] = {}
    policy_name: dict[int, str] = {}
    for pid, name, document in session.execute(select(Policy.id, Policy.name, Policy.document)).all():
        policies[name] = parse_policy_document(document)
        policy_name[pid] = name
    thing_name = {tid: name for tid, name in connection.execute(select(Thing.id, Thing.name)).all()}
    group_policies: dict[str, list[str]] = defaultdict(list)
    thing_policies: dict[str, list[str]] = defaultdict(list)
    for pid, gid, tid in session.execute(
        select(PolicyAttachment.policy_id, PolicyAttachment.group_id, PolicyAttachment.thing_id)
    ).all():
        if gid is not None:
            group_policies[group_name[gid]].append(policy_name[pid])
        elif tid is not None:
            thing_policies[thing_name[tid]].append(policy_name[pid])
    return PolicyWorld(
        things=thing_facts,
        groups=group_facts,
        policies=policies,
        group_policies={k: tuple(sorted(v)) for k, v in group_policies.items()},
        thing_policies={k: tuple(sorted(v)) for k, v in thing_policies.items()},
    )
