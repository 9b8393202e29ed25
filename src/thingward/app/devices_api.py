"""Devices as their people see them: the things shared with the caller's groups, with the latest state
each reported. Another household's device is a 404 with the very body of a missing one."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from thingward.accounts.sharing import can_control, get_visible_thing, shares_of, visible_things
from thingward.app.session import Caller, accounts_of, require_scope
from thingward.errors import NotFoundError
from thingward.registry.device_state import LatestReport, latest_report
from thingward.registry.models import Thing, User


class ErrorBody(BaseModel):
    error: str


class ReportedState(BaseModel):
    received_at: dt.datetime
    model: str | None = None
    firmware_version: str | None = None
    tcp_ports: list[int] = Field(default_factory=list)
    udp_ports: list[int] = Field(default_factory=list)
    onboarding: str = ""


class Device(BaseModel):
    name: str
    disabled: bool
    role: str = Field(description="owner (see and control), viewer (see), or admin")
    last_seen_at: dt.datetime | None = None
    state: ReportedState | None = None


class DeviceList(BaseModel):
    devices: list[Device]


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no session cookie or API token, or not a valid one"},
    403: {"model": ErrorBody, "description": "the token lacks the scope, or the account has set-up pending"},
}


def _state(found: LatestReport | None) -> ReportedState | None:
    if found is None:
        return None
    report = found.report
    return ReportedState(
        received_at=found.received_at,
        model=found.model,
        firmware_version=report.firmware_version,
        tcp_ports=list(report.tcp_ports),
        udp_ports=list(report.udp_ports),
        onboarding=report.onboarding_state,
    )


def _device(session: Session, user: User, thing: Thing, with_state: bool) -> Device:
    role = "admin" if user.is_admin else ("owner" if can_control(session, user, thing) else "viewer")
    return Device(
        name=thing.name,
        disabled=thing.disabled,
        role=role,
        last_seen_at=thing.last_seen_at,
        state=_state(latest_report(session, thing.name)) if with_state else None,
    )


def devices_of(request: Request, user_id: int) -> list[Device]:
    """Every device the person may see, with its latest reported state."""
    with accounts_of(request).db.read() as session:
        user = session.execute(select(User).where(User.id == user_id)).scalar_one()
        return [_device(session, user, thing, True) for thing in visible_things(session, user)]


def device_of(request: Request, user_id: int, name: str) -> tuple[Device, list[tuple[str, str]]]:
    """One device the person may see, and whom it is shared with; NotFoundError for any other name."""
    with accounts_of(request).db.read() as session:
        user = session.execute(select(User).where(User.id == user_id)).scalar_one()
        thing = get_visible_thing(session, user, name)
        return _device(session, user, thing, True), shares_of(session, thing)


router = APIRouter(prefix="/api/v1", tags=["devices"])
ThingsReader = Annotated[Caller, Depends(require_scope("things:read"))]


@router.get("/devices", response_model=DeviceList, responses=AUTH_ERRORS)
def list_devices(request: Request, caller: ThingsReader) -> DeviceList:
    """The things shared with the caller's user groups (all of them for an admin)."""
    return DeviceList(devices=devices_of(request, caller.user.id))


@router.get(
    "/devices/{name}",
    response_model=Device,
    responses={**AUTH_ERRORS, 404: {"model": ErrorBody, "description": "no such device, or not shared with you"}},
)
def get_device(request: Request, name: str, caller: ThingsReader) -> Device:
    """One device and its latest reported state. Another household's device is a 404 like a missing one."""
    if len(name) > 128:
        raise NotFoundError(f"no thing named {name!r}: see 'thingward device list'")
    device, _shares = device_of(request, caller.user.id, name)
    return device
