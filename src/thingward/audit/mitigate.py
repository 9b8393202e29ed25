"""Mitigation of a finding on a thing: quarantine, revoke or disable, each recorded in the audit log.

Quarantine moves the thing into the `quarantine` group, whose policy lets it connect, receive its commands
and updates, and report update status, and nothing else: its other groups and the policies attached to it
alone are taken away and remembered, so undoing the quarantine gives them back. Disable is undone by
enabling (the device then needs a new enrollment: disabling revoked its certificates). A revocation
cannot be undone.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from thingward.audit.service import resolve_finding
from thingward.errors import ConflictError, InvalidInputError, NotFoundError
from thingward.platform import Platform
from thingward.policy.document import parse_policy_document
from thingward.registry import certificates, policies, things
from thingward.registry.audit_log import Actor, record_event
from thingward.registry.models import AuditMitigation, Policy, PolicyAttachment, ThingGroup

Action = Literal["quarantine", "revoke", "disable"]
ACTIONS: tuple[Action, ...] = ("quarantine", "revoke", "disable")

QUARANTINE_GROUP = "quarantine"
QUARANTINE_POLICY = "quarantine"
QUARANTINE_POLICY_DOCUMENT = parse_policy_document(
    {
        "description": "thingward quarantine: connect, receive commands and updates, report update status",
        "statements": [
            {"sid": "connect-as-self", "effect": "allow", "actions": ["connect"], "resources": ["${thing.name}"]},
            {
                "sid": "receive-commands-and-updates",
                "effect": "allow",
                "actions": ["subscribe", "receive"],
                "resources": ["things/${thing.name}/commands/#", "things/${thing.name}/update/#"],
            },
            {
                "sid": "report-update-status",
                "effect": "allow",
                "actions": ["publish"],
                "resources": ["things/${thing.name}/update/status"],
            },
        ],
    }
)


@dataclass(frozen=True)
class MitigationResult:
    finding: str
    thing: str
    action: Action
    undone: bool
    groups: list[str]  # the groups taken away (quarantine) or given back (undo)
    policies: list[str]  # the thing-attached policies taken away or given back
    revoked_serials: list[str]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "finding": self.finding,
            "thing": self.thing,
            "action": self.action,
            "undone": self.undone,
            "groups": self.groups,
            "policies": self.policies,
            "revoked_serials": self.revoked_serials,
            "note": self.note,
        }


def parse_action(value: str) -> Action:
    for action in ACTIONS:
        if value == action:
            return action
    raise InvalidInputError(f"unknown action {value!r}: use one of {', '.join(ACTIONS)}")


def _thing_of(check_id: str, resource: str, fid: str) -> str:
    kind, _, name = resource.partition(":")
    if kind != "thing" or not name:
        raise InvalidInputError(
            f"finding {fid} ({check_id}) is about {resource}, not a thing: mitigation acts on things; "
            "fix it as its remediation says, or suppress it with a reason"
        )
    return name


def _ensure_quarantine(session: Session, actor: Actor) -> None:
    """The quarantine group and policy, made on first use; a policy edited by hand is put back."""
    group = session.execute(select(ThingGroup).where(ThingGroup.name == QUARANTINE_GROUP)).scalar_one_or_none()
    if group is None:
        group = things.add_group(
            session, actor, QUARANTINE_GROUP, description="things quarantined by 'thingward audit mitigate'"
        )
    policy = session.execute(select(Policy).where(Policy.name == QUARANTINE_POLICY)).scalar_one_or_none()
    if policy is None:
        policy = policies.add_policy(session, actor, QUARANTINE_POLICY, QUARANTINE_POLICY_DOCUMENT.to_json())
    elif policy.document != QUARANTINE_POLICY_DOCUMENT.to_json():
        policies.update_policy(session, actor, QUARANTINE_POLICY, QUARANTINE_POLICY_DOCUMENT.to_json())
    if group.parent is not None:
        # A parent's policies are inherited: the quarantine group stays at the top of the tree.
        things.set_group_parent(session, actor, QUARANTINE_GROUP, None)
    attachments = session.execute(select(PolicyAttachment).where(PolicyAttachment.group_id == group.id)).scalars()
    attached = {a.policy.name for a in attachments}
    if QUARANTINE_POLICY not in attached:
        policies.attach_policy(session, actor, QUARANTINE_POLICY, group=QUARANTINE_GROUP)
    for extra in sorted(attached - {QUARANTINE_POLICY}):
        # Anything else on the group would widen the quarantine.
        policies.detach_policy(session, actor, extra, group=QUARANTINE_GROUP)


def _active(session: Session, thing: str, action: Action) -> AuditMitigation | None:
    return session.execute(
        select(AuditMitigation)
        .where(AuditMitigation.thing == thing, AuditMitigation.action == action, AuditMitigation.undone_at.is_(None))
        .order_by(AuditMitigation.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def _quarantine(session: Session, actor: Actor, fid: str, name: str) -> MitigationResult:
    if _active(session, name, "quarantine") is not None:
        raise ConflictError(f"thing {name!r} is in quarantine already: undo it first with --undo")
    _ensure_quarantine(session, actor)
    thing = things.get_thing(session, name)
    groups = sorted(g.name for g in thing.groups if g.name != QUARANTINE_GROUP)
    attached = sorted(
        a.policy.name
        for a in session.execute(select(PolicyAttachment).where(PolicyAttachment.thing_id == thing.id)).scalars()
    )
    for group in groups:
        things.remove_from_group(session, actor, name, group)
    for policy in attached:
        policies.detach_policy(session, actor, policy, thing=name)
    if QUARANTINE_GROUP not in {g.name for g in things.get_thing(session, name).groups}:
        things.add_to_group(session, actor, name, QUARANTINE_GROUP)
    session.add(
        AuditMitigation(
            finding_id=fid,
            thing=name,
            action="quarantine",
            previous_groups=json.dumps(groups),
            previous_policies=json.dumps(attached),
            created_at=dt.datetime.now(dt.UTC),
            created_by=actor.name,
        )
    )
    record_event(
        session,
        actor,
        "audit.mitigate",
        f"thing:{name}",
        {"finding": fid, "action": "quarantine", "groups": groups, "policies": attached},
    )
    return MitigationResult(fid, name, "quarantine", False, groups, attached, [])


def _undo_quarantine(session: Session, actor: Actor, fid: str, row: AuditMitigation) -> MitigationResult:
    name = row.thing
    existing_groups = {g.name for g in things.list_groups(session)}
    groups = [g for g in json.loads(row.previous_groups) if g in existing_groups]
    existing_policies = {p.name for p in policies.list_policies(session)}
    attached = [p for p in json.loads(row.previous_policies) if p in existing_policies]
    current = {g.name for g in things.get_thing(session, name).groups}
    for group in groups:
        if group not in current:
            things.add_to_group(session, actor, name, group)
    for policy in attached:
        policies.attach_policy(session, actor, policy, thing=name)
    if QUARANTINE_GROUP in current:
        things.remove_from_group(session, actor, name, QUARANTINE_GROUP)
    row.undone_at = dt.datetime.now(dt.UTC)
    lost = sorted(set(json.loads(row.previous_groups)) - set(groups)) + sorted(
        set(json.loads(row.previous_policies)) - set(attached)
    )
    record_event(
        session,
        actor,
        "audit.mitigate.undo",
        f"thing:{name}",
        {"finding": fid, "action": "quarantine", "groups": groups, "policies": attached, "gone": lost},
    )
    note = f"no longer exist, not restored: {', '.join(lost)}" if lost else ""
    return MitigationResult(fid, name, "quarantine", True, groups, attached, [], note)


def mitigate(platform: Platform, actor: Actor, fid: str, action: Action) -> MitigationResult:
    """Apply `action` to the thing the finding `fid` is about."""
    check_id, resource = resolve_finding(platform, fid)
    name = _thing_of(check_id, resource, fid)
    with platform.db.session() as session:
        if action == "quarantine":
            return _quarantine(session, actor, fid, name)
        if action == "disable":
            if things.get_thing(session, name).disabled:
                raise ConflictError(f"thing {name!r} is disabled already")
            serials = certificates.set_thing_disabled(session, actor, name, True)
        else:
            serials = certificates.revoke_thing_certificates(session, actor, name, reason=f"audit finding {fid}")
        session.add(
            AuditMitigation(
                finding_id=fid, thing=name, action=action, created_at=dt.datetime.now(dt.UTC), created_by=actor.name
            )
        )
        record_event(
            session, actor, "audit.mitigate", f"thing:{name}", {"finding": fid, "action": action, "serials": serials}
        )
    if serials:
        platform.write_crl()
    note = "the device needs a new enrollment token to come back" if serials else ""
    return MitigationResult(fid, name, action, False, [], [], serials, note)


def undo_mitigation(platform: Platform, actor: Actor, fid: str, action: Action) -> MitigationResult:
    """Reverse the newest `action` applied for finding `fid` (quarantine, disable; never a revocation)."""
    if action == "revoke":
        raise InvalidInputError(
            "a revoked certificate cannot be made valid again: issue a new enrollment token "
            "('thingward device token NAME') and re-enroll the device"
        )
    with platform.db.session() as session:
        row = session.execute(
            select(AuditMitigation)
            .where(
                AuditMitigation.finding_id == fid, AuditMitigation.action == action, AuditMitigation.undone_at.is_(None)
            )
            .order_by(AuditMitigation.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        if row is None:
            raise NotFoundError(f"no {action} applied for finding {fid!r} is in force: nothing to undo")
        if action == "quarantine":
            return _undo_quarantine(session, actor, fid, row)
        certificates.set_thing_disabled(session, actor, row.thing, False)
        row.undone_at = dt.datetime.now(dt.UTC)
        record_event(session, actor, "audit.mitigate.undo", f"thing:{row.thing}", {"finding": fid, "action": action})
        return MitigationResult(
            fid, row.thing, action, True, [], [], [], "enabled; it needs a new enrollment token to connect again"
        )
