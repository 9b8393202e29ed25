"""Admin reads over the REST API (`admin` scope, or an admin's session): users and the audit log."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from thingward.app.devices_api import AUTH_ERRORS
from thingward.app.session import Caller, accounts_of, require_scope
from thingward.registry.audit_log import list_events

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])
AdminCaller = Annotated[Caller, Depends(require_scope("admin"))]


class AdminUser(BaseModel):
    id: int
    email: str
    name: str
    admin: bool
    disabled: bool
    totp_enabled: bool
    must_change_password: bool
    created_at: dt.datetime
    groups: list[str]


class AuditEventItem(BaseModel):
    id: int
    at: dt.datetime
    actor: str
    source: str
    action: str
    target: str
    detail: str = ""


@router.get("/users", response_model=list[AdminUser], responses=AUTH_ERRORS)
def list_users(request: Request, caller: AdminCaller) -> list[AdminUser]:
    return [
        AdminUser(
            id=u.id,
            email=u.email,
            name=u.display_name,
            admin=u.is_admin,
            disabled=u.disabled,
            totp_enabled=u.totp_enabled,
            must_change_password=u.must_change_password,
            created_at=u.created_at,
            groups=list(u.groups),
        )
        for u in accounts_of(request).list_users()
    ]


@router.get("/audit", response_model=list[AuditEventItem], responses=AUTH_ERRORS)
def audit_log(
    request: Request, caller: AdminCaller, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[AuditEventItem]:
    """The newest audit events, newest first (`thingward log verify` checks the whole chain)."""
    with accounts_of(request).db.read() as session:
        return [
            AuditEventItem(
                id=e.id, at=e.at, actor=e.actor, source=e.source, action=e.action, target=e.target, detail=e.detail
            )
            for e in list_events(session, limit=limit)
        ]
