"""Adding a device from the browser: the page mints a claim for the signed-in person and the label's
device id, shows the command that hands it to the device over its access point, and follows the claim.

A browser cannot open the provisioning session (raw TCP on the device's own network), so the command does
that part (`thingward onboard --claim-token-file`). The label's secret code never reaches the server:
`onboard.js` keeps it in the browser and sends the device id alone; a form that carries a whole label
anyway is refused without echoing it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from thingward.app.web.render import Page, client_ip, form_of, render, signed_in
from thingward.errors import ConflictError, InvalidInputError
from thingward.names import validate_name
from thingward.onboarding.claims import Claims

router = APIRouter(include_in_schema=False)
SignedIn = Annotated[Page, Depends(signed_in)]

ADD_PATH = "/devices/add"
LABEL_SENT = (
    "that is the whole label: send only the device id (the part between 'TW1:' and the second ':'). The "
    "label's code stays with you and the device; paste the label into the first box and the page keeps "
    "the code in your browser"
)


def _claims(request: Request) -> Claims:
    claims: Claims = request.app.state.claims
    return claims


def _form(request: Request, page: Page, status: int = 200, **context: object) -> Response:
    return render(request, "add_device.j2", status=status, page=page, **context)


@router.get(ADD_PATH)
def add_device(request: Request, page: SignedIn) -> Response:
    return _form(request, page)


@router.post(ADD_PATH)
async def mint_claim(request: Request, page: SignedIn) -> Response:
    device_id = (await form_of(request)).get("device_id", "").strip()
    if ":" in device_id:  # a label's code, or part of it: refuse, and never send it back in the page
        return await run_in_threadpool(_form, request, page, 400, problems=[LABEL_SENT])
    try:
        validate_name(device_id, "device id")
        claim = await run_in_threadpool(_claims(request).mint, page.user_id, device_id, f"ip:{client_ip(request)}")
    except InvalidInputError as e:
        problem = f"{e}: it is the part of the label between 'TW1:' and the second ':'"
        return await run_in_threadpool(_form, request, page, 400, problems=[problem], device_id=device_id[:64])
    except ConflictError as e:
        return await run_in_threadpool(_form, request, page, 409, problems=[str(e)], device_id=device_id)
    url = str(request.base_url).rstrip("/")
    return await run_in_threadpool(_form, request, page, 201, claim=claim, url=url)
