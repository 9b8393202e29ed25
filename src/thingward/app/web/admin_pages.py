"""Admin pages: things, thing groups, policies (with explain), certificates, users, user groups and
sharing, the audit log. Anyone but an admin gets the 404 of a page that does not exist."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from thingward.accounts import sharing
from thingward.accounts.service import user_by_email
from thingward.app.session import accounts_of
from thingward.app.web.render import Page, admin_page, client_ip, form_of, redirect, render
from thingward.broker.base import ACTIONS
from thingward.errors import ThingwardError
from thingward.policy.engine import PolicyEngine
from thingward.registry import certificates as certs
from thingward.registry import policies, things
from thingward.registry.audit_log import Actor, list_events

router = APIRouter(prefix="/admin", include_in_schema=False)
Admin = Annotated[Page, Depends(admin_page)]
Form = Annotated[dict[str, str], Depends(form_of)]

AUDIT_PAGE = 200


def _actor(request: Request, page: Page) -> Actor:
    return Actor(page.session.user.email, f"web:{client_ip(request)}")


@router.get("")
def index(request: Request, page: Admin) -> Response:
    return render(request, "admin/index.j2", page=page)


@router.get("/things")
def things_page(request: Request, page: Admin) -> Response:
    with accounts_of(request).db.read() as session:
        rows = [
            {
                "name": t.name,
                "disabled": t.disabled,
                "last_seen_at": t.last_seen_at,
                "groups": sorted(g.name for g in t.groups),
                "shared_with": sharing.shares_of(session, t),
            }
            for t in things.list_things(session)
        ]
    return render(request, "admin/things.j2", page=page, things=rows)


@router.get("/groups")
def groups_page(request: Request, page: Admin) -> Response:
    with accounts_of(request).db.read() as session:
        rows = [
            {
                "name": g.name,
                "parent": g.parent.name if g.parent else "",
                "description": g.description,
                "things": sorted(t.name for t in g.things),
            }
            for g in things.list_groups(session)
        ]
    return render(request, "admin/groups.j2", page=page, groups=rows)


@router.get("/policies")
def policies_page(request: Request, page: Admin, thing: str = "", action: str = "", topic: str = "") -> Response:
    with accounts_of(request).db.read() as session:
        rows = [
            {"name": p.name, "version": p.version, "document": json.dumps(json.loads(p.document), indent=2)}
            for p in policies.list_policies(session)
        ]
        world = policies.load_policy_world(session)
    explained = None
    problem = ""
    if thing or topic:
        if action not in ACTIONS:
            problem = f"choose an action: {', '.join(ACTIONS)}"
        else:
            try:
                explained = PolicyEngine(world).explain(thing[:64], action, topic[:512]).to_dict()
            except ThingwardError as e:
                problem = str(e)
    return render(
        request,
        "admin/policies.j2",
        page=page,
        policies=rows,
        actions=ACTIONS,
        query={"thing": thing, "action": action, "topic": topic},
        explained=explained,
        problem=problem,
    )


@router.get("/certificates")
def certificates_page(request: Request, page: Admin) -> Response:
    with accounts_of(request).db.read() as session:
        rows = [
            {
                "serial": c.serial,
                "thing": c.thing.name,
                "status": c.status,
                "not_after": c.not_after,
                "key_type": c.key_type,
                "fingerprint": c.fingerprint_sha256[:16],
            }
            for c in certs.list_certificates(session)
        ]
    return render(request, "admin/certificates.j2", page=page, certificates=rows)


@router.get("/users")
def users_page(request: Request, page: Admin) -> Response:
    return render(request, "admin/users.j2", page=page, users=accounts_of(request).list_users())


def _user_groups(request: Request, page: Admin, status: int = 200, problem: str = "") -> Response:
    with accounts_of(request).db.read() as session:
        rows = []
        for group in sharing.list_user_groups(session):
            shared = [
                (name, role)
                for name, role in (
                    (t.name, dict(sharing.shares_of(session, t)).get(group.name)) for t in things.list_things(session)
                )
                if role
            ]
            rows.append(
                {
                    "name": group.name,
                    "description": group.description,
                    "members": sharing.group_members(session, group.name),
                    "things": shared,
                }
            )
        thing_names = [t.name for t in things.list_things(session)]
    return render(
        request,
        "admin/user_groups.j2",
        status=status,
        page=page,
        groups=rows,
        thing_names=thing_names,
        roles=[r.value for r in sharing.Role],
        problem=problem,
    )


@router.get("/user-groups")
def user_groups_page(request: Request, page: Admin) -> Response:
    return _user_groups(request, page)


@router.post("/user-groups")
def add_user_group(request: Request, form: Form, page: Admin) -> Response:
    try:
        with accounts_of(request).db.session() as session:
            sharing.add_user_group(session, _actor(request, page), form.get("name", ""), form.get("description", ""))
    except ThingwardError as e:
        return _user_groups(request, page, 400, str(e))
    return redirect("/admin/user-groups")


@router.post("/user-groups/{group}/members")
def add_member(request: Request, group: str, form: Form, page: Admin) -> Response:
    try:
        with accounts_of(request).db.session() as session:
            user = user_by_email(session, form.get("email", ""))
            sharing.add_member(session, _actor(request, page), group, user)
    except ThingwardError as e:
        return _user_groups(request, page, 400, str(e))
    return redirect("/admin/user-groups")


@router.post("/user-groups/{group}/things")
def share_thing(request: Request, group: str, form: Form, page: Admin) -> Response:
    try:
        with accounts_of(request).db.session() as session:
            sharing.share_thing(session, _actor(request, page), form.get("thing", ""), group, form.get("role", ""))
    except ThingwardError as e:
        return _user_groups(request, page, 400, str(e))
    return redirect("/admin/user-groups")


@router.get("/audit")
def audit_page(request: Request, page: Admin) -> Response:
    with accounts_of(request).db.read() as session:
        events = [
            {
                "id": e.id,
                "at": e.at,
                "actor": e.actor,
                "source": e.source,
                "action": e.action,
                "target": e.target,
                "detail": e.detail,
            }
            for e in list_events(session, limit=AUDIT_PAGE)
        ]
    return render(request, "admin/audit.j2", page=page, events=events, limit=AUDIT_PAGE)
