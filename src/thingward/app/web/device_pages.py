"""The device pages: the things shared with the signed-in person, and one thing's latest state."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from thingward.app.devices_api import device_of, devices_of
from thingward.app.web.render import Page, PageNotFound, render, signed_in
from thingward.errors import NotFoundError

router = APIRouter(include_in_schema=False)
SignedIn = Annotated[Page, Depends(signed_in)]


@router.get("/devices")
def devices(request: Request, page: SignedIn) -> Response:
    return render(request, "devices.j2", page=page, devices=devices_of(request, page.user_id))


@router.get("/devices/{name}")
def device(request: Request, name: str, page: SignedIn) -> Response:
    try:
        found, shares = device_of(request, page.user_id, name[:128])
    except NotFoundError as e:
        raise PageNotFound() from e
    return render(request, "device.j2", page=page, device=found, shares=shares)
