"""The camera journey's doors: the device listener's upload API, and the people's notifications and snapshots.

Devices (`create_device_app`, served only by the device listener, see camera/listener.py): a camera asks
`POST /device/v1/uploads` for an upload URL and `PUT`s its snapshot there; who it is comes from the
certificate of its connection. People (`router`, included in the public app): the live stream of their
notifications (server-sent events), the recent list, their preferences, and the snapshots of things they
may see; anything else is a 404, the same as a snapshot that does not exist.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import html
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path as PathLib
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.types import ASGIApp, Receive, Scope, Send

from thingward import __version__
from thingward.accounts.service import AuthenticatedSession
from thingward.app.security import CONTENT_SECURITY_POLICY
from thingward.app.session import accounts_of, require_user, session_token
from thingward.broker.base import Authorizer
from thingward.camera.analysis import CONTENT_TYPES, ImageRejectedError
from thingward.camera.hub import TooManyStreamsError
from thingward.camera.listener import DEVICE_SCOPE_KEY, DeviceIdentity
from thingward.camera.notify import EVENT_TYPES, Preference
from thingward.camera.service import CameraService, DeviceRefusedError
from thingward.camera.uploads import UploadRefusedError, check_upload
from thingward.errors import InvalidInputError, NotFoundError
from thingward.registry.models import User, UserSession

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0
RESUME_LIMIT = 20


class ErrorResponse(BaseModel):
    error: str


# --- devices ---


class UploadRequest(BaseModel):
    content_type: str = Field(default="image/jpeg", max_length=32, description=" or ".join(CONTENT_TYPES))
    max_bytes: int = Field(default=0, ge=0, description="the largest upload wanted; 0 for the server's limit")


class UploadGrantResponse(BaseModel):
    upload_id: str = Field(description='name it in the motion event: {"upload_id": ...}')
    url: str = Field(description="PUT the image here, once, before expires_at")
    method: str = "PUT"
    content_type: str
    max_bytes: int
    expires_at: str


class SnapshotStored(BaseModel):
    snapshot_id: int
    thing: str
    upload_id: str
    content_type: str
    width: int
    height: int
    size_bytes: int
    sha256: str


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


MAX_GRANT_REQUEST_BYTES = 4096


class DeviceRequestLimits:
    """Before any handler reads a body: no Transfer-Encoding (a body needs a Content-Length), and a grant
    request's JSON is small. An upload's own limit is its grant's, checked by the route before it reads."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = None
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            length = headers.get(b"content-length", b"")
            if b"transfer-encoding" in headers:
                refusal = _error("Transfer-Encoding is not accepted: send the body with a Content-Length", 411)
            elif scope["method"] == "POST" and not length.isdigit():
                refusal = _error("a Content-Length header is required", 411)
            elif scope["method"] == "POST" and int(length) > MAX_GRANT_REQUEST_BYTES:
                refusal = _error(f"a request body over {MAX_GRANT_REQUEST_BYTES} bytes is refused", 413)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _device(request: Request) -> DeviceIdentity:
    """The device of this request's connection, checked against the registry and the policy now."""
    identity = request.scope.get(DEVICE_SCOPE_KEY)
    if not isinstance(identity, DeviceIdentity):
        # Only reachable if this app were served without the device listener's protocol: fail closed.
        raise DeviceRefusedError("a device certificate from the platform CA is required")
    camera: CameraService = request.app.state.camera
    authorizer: Authorizer = request.app.state.authorizer
    await asyncio.to_thread(camera.check_device, identity.thing, identity.serial, authorizer)
    return identity


Device = Annotated[DeviceIdentity, Depends(_device)]


def create_device_app(camera: CameraService, authorizer: Authorizer) -> FastAPI:
    """The app of the device listener. Every route needs the connection's device identity."""
    app = FastAPI(
        title="thingward device API",
        version=__version__,
        openapi_url="/device/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors()]
        return _error("invalid request: " + "; ".join(parts), 400)

    @app.exception_handler(UploadRefusedError)
    async def _refused(_request: Request, exc: UploadRefusedError) -> JSONResponse:
        return _error(str(exc), exc.status)

    @app.exception_handler(DeviceRefusedError)
    async def _device_refused(_request: Request, exc: DeviceRefusedError) -> JSONResponse:
        return _error(str(exc), 403)

    @app.exception_handler(InvalidInputError)
    async def _bad_input(_request: Request, exc: InvalidInputError) -> JSONResponse:
        return _error(str(exc), 400)

    @app.exception_handler(NotFoundError)
    async def _missing(_request: Request, exc: NotFoundError) -> JSONResponse:
        return _error(str(exc), 404)

    app.state.camera = camera
    app.state.authorizer = authorizer
    app.add_middleware(DeviceRequestLimits)
    refusals: dict[int | str, dict[str, Any]] = {
        s: {"model": ErrorResponse, "description": d}
        for s, d in {
            400: "malformed request, or not a usable image (corrupt, bomb, wrong format)",
            403: "revoked, disabled or quarantined device, or another device's upload URL",
            404: "unknown upload id or wrong token",
            409: "the upload URL was used already",
            410: "the upload URL expired",
            411: "no Content-Length",
            413: "over the upload's size limit",
            415: "not the content type the URL was issued for",
        }.items()
    }

    @app.post("/device/v1/uploads", status_code=201, response_model=UploadGrantResponse, responses=refusals)
    async def grant_upload(body: UploadRequest, request: Request, who: Device) -> Any:
        """A short-lived, single-use URL to upload one snapshot of this device."""
        issued = await asyncio.to_thread(camera.grant_upload, who.thing, body.content_type, body.max_bytes)
        url = str(request.url_for("put_upload", upload_id=issued.upload_id).include_query_params(token=issued.token))
        return UploadGrantResponse(
            upload_id=issued.upload_id,
            url=url,
            content_type=issued.content_type,
            max_bytes=issued.max_bytes,
            expires_at=issued.expires_at.isoformat(),
        )

    @app.put(
        "/device/v1/uploads/{upload_id}",
        name="put_upload",
        status_code=201,
        response_model=SnapshotStored,
        responses=refusals,
    )
    async def put_upload(
        upload_id: str, request: Request, who: Device, token: Annotated[str, Query(max_length=128)] = ""
    ) -> Any:
        """Upload the snapshot (JPEG or PNG) to the URL the grant gave."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        length_header = request.headers.get("content-length")
        length = int(length_header) if length_header is not None and length_header.isdigit() else None

        def precheck() -> int:
            with camera.db.read() as session:
                grant = check_upload(session, who.thing, upload_id, token, content_type, length, camera.clock())
            return grant.max_bytes

        limit = await asyncio.to_thread(precheck)  # refused before a byte of the body is read
        chunks, received = [], 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                return _error(f"the upload is over this URL's limit of {limit} bytes", 413)
            chunks.append(chunk)
        try:
            stored = await asyncio.to_thread(
                camera.receive_upload, who.thing, upload_id, token, content_type, b"".join(chunks)
            )
        except ImageRejectedError as e:
            logger.info("upload %s of %s refused: %s", upload_id, who.thing, e)
            return _error(f"{e}; nothing was stored", 400)
        return stored.to_dict()

    return app


# --- people ---

router = APIRouter()
Person = Annotated[AuthenticatedSession, Depends(require_user)]
SnapshotId = Annotated[int, Path(ge=1, le=2**31 - 1)]
_not_found: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "no such snapshot"}}


def camera_of(request: Request) -> CameraService:
    camera: CameraService = request.app.state.camera
    return camera


class PreferenceModel(BaseModel):
    thing: str = Field(min_length=1, max_length=64)
    event_type: str = Field(default="motion", description=" or ".join(EVENT_TYPES))
    enabled: bool


class PreferencesBody(BaseModel):
    preferences: list[PreferenceModel] = Field(max_length=500)


class PreferencesResponse(BaseModel):
    preferences: list[PreferenceModel]


class NotificationRegion(BaseModel):
    x: int
    y: int
    width: int
    height: int


class NotificationImage(BaseModel):
    width: int
    height: int


class NotificationModel(BaseModel):
    id: int
    thing: str
    event_type: str
    message: str
    created_at: str
    snapshot_id: int | None
    snapshot_url: str | None
    annotated_url: str | None
    changed_fraction: float | None
    region: NotificationRegion | None
    image: NotificationImage | None


class NotificationsResponse(BaseModel):
    notifications: list[NotificationModel]


@router.get("/api/v1/notifications", response_model=NotificationsResponse)
def list_notifications(
    request: Request, person: Person, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> dict[str, Any]:
    """The newest notifications of the signed-in person, newest first."""
    views = camera_of(request).recent(person.user.id, limit)
    return {"notifications": [v.to_dict() for v in views]}


def _session_alive(camera: CameraService, session_id: int, idle_seconds: int) -> bool:
    """Read-only: the session still exists, is within its lifetime and idle limit, its person enabled.
    (Unlike a request, an open stream does not count as activity: it does not extend the session.)"""
    now = dt.datetime.now(dt.UTC)
    with camera.db.read() as session:
        row = session.execute(
            select(UserSession.expires_at, UserSession.last_seen_at, User.disabled)
            .join(User, User.id == UserSession.user_id)
            .where(UserSession.id == session_id)
        ).first()
    if row is None:
        return False
    expires_at, last_seen_at, disabled = row
    return not disabled and expires_at > now and last_seen_at + dt.timedelta(seconds=idle_seconds) > now


def _sse(item: dict[str, Any]) -> str:
    return f"event: notification\nid: {item['id']}\ndata: {json.dumps(item, separators=(',', ':'))}\n\n"


# Not in the OpenAPI schema: an endless text/event-stream is no request/response a schema (or a fuzzer
# reading whole bodies) can describe; the format is in the docstring and the README.
@router.get("/api/v1/notifications/stream", response_class=StreamingResponse, include_in_schema=False)
async def notification_stream(request: Request, person: Person) -> Response:
    """Live notifications as server-sent events (`event: notification`, `id:`, JSON `data:`); a comment
    line every 15 s keeps proxies from closing it. A reconnect with `Last-Event-ID` gets what it missed.
    The stream ends when the session does."""
    camera = camera_of(request)
    idle_seconds = accounts_of(request).settings.session_idle_seconds
    try:
        subscription = camera.hub.subscribe(person.user.id)
    except TooManyStreamsError as e:
        return _error(str(e), 429)
    last = request.headers.get("last-event-id", "")
    missed = []
    # Only ASCII digits of a size the database compares (isdigit() alone takes "²", which int() refuses, and
    # a 40-digit id overflows SQLite's integers); anything else resumes nothing.
    if last.isascii() and last.isdigit() and len(last) <= 18:
        missed = await asyncio.to_thread(camera.recent, person.user.id, RESUME_LIMIT, int(last))

    async def events() -> AsyncIterator[str]:
        try:
            yield "retry: 3000\n\n"
            for view in reversed(missed):
                yield _sse(view.to_dict())
            while True:
                try:
                    item = await subscription.next(HEARTBEAT_SECONDS)
                except TimeoutError:
                    alive = await asyncio.to_thread(_session_alive, camera, person.session_id, idle_seconds)
                    if not alive:
                        return
                    yield ": heartbeat\n\n"
                    continue
                if item is None:
                    return
                # Checked before each delivery too, not only when idle: a page left open after signing out
                # (elsewhere, or by a session ended from another browser) must not get the next motion.
                alive = await asyncio.to_thread(_session_alive, camera, person.session_id, idle_seconds)
                if not alive:
                    return
                yield _sse(item)
        finally:
            camera.hub.unsubscribe(subscription)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/api/v1/notifications/preferences", response_model=PreferencesResponse)
def get_preferences(request: Request, person: Person) -> dict[str, Any]:
    """For every thing the person sees and every event type: does it notify them (default: yes)."""
    return {"preferences": [p.to_dict() for p in camera_of(request).preferences(person.user.id)]}


@router.put(
    "/api/v1/notifications/preferences",
    response_model=PreferencesResponse,
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
def put_preferences(body: PreferencesBody, request: Request, person: Person) -> dict[str, Any]:
    """Turn a thing's event type on or off for the signed-in person; a thing they cannot see is a 404."""
    changes = [Preference(p.thing, p.event_type, p.enabled) for p in body.preferences]
    return {"preferences": [p.to_dict() for p in camera_of(request).set_preferences(person.user.id, changes)]}


def _image(request: Request, person: AuthenticatedSession, snapshot_id: int, annotated: bool) -> Response:
    path, media_type = camera_of(request).snapshot_file(person.user.id, snapshot_id, annotated)
    if not path.is_file():
        return _error(f"the image of snapshot {snapshot_id} is missing from the data dir", 404)
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=300"})


@router.get(
    "/api/v1/snapshots/{snapshot_id}",
    responses={**_not_found, 200: {"content": {"image/jpeg": {}, "image/png": {}}}},
    response_class=Response,
)
def get_snapshot(snapshot_id: SnapshotId, request: Request, person: Person) -> Response:
    """A snapshot as the camera uploaded it."""
    return _image(request, person, snapshot_id, annotated=False)


@router.get(
    "/api/v1/snapshots/{snapshot_id}/annotated",
    responses={**_not_found, 200: {"content": {"image/jpeg": {}}}},
    response_class=Response,
)
def get_annotated_snapshot(snapshot_id: SnapshotId, request: Request, person: Person) -> Response:
    """The snapshot with the changed region outlined (only for snapshots where motion was found)."""
    return _image(request, person, snapshot_id, annotated=True)


# --- a minimal page of its own: the live notifications alone (the web app's pages include the same partial) ---

_APP_DIR = PathLib(__file__).parent
_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{csrf}">
<title>Notifications · thingward</title></head>
<body>
{partial}
</body>
</html>
"""


# The web app's very policy (a copy here had lost `form-action 'self'`), set by the route itself.
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}


@functools.cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_APP_DIR / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )


@router.get("/notifications", include_in_schema=False, response_class=HTMLResponse)
def notifications_page(request: Request, _person: Person) -> HTMLResponse:
    """The signed-in person's live notifications and their choices, on a page of their own."""
    partial = _templates().get_template("_notifications.j2").render()
    csrf = html.escape(accounts_of(request).csrf_token(session_token(request)), quote=True)
    page = _PAGE.format(partial=partial, csrf=csrf)
    return HTMLResponse(page, headers={"Cache-Control": "no-store", **PAGE_HEADERS})


@router.get("/static/notifications.js", include_in_schema=False)
def notifications_script() -> FileResponse:
    return FileResponse(_APP_DIR / "static" / "notifications.js", media_type="text/javascript")


@router.get("/static/notifications.css", include_in_schema=False)
def notifications_style() -> FileResponse:
    return FileResponse(_APP_DIR / "static" / "notifications.css", media_type="text/css")
