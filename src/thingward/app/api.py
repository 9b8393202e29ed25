"""The REST API: device enrollment, OTA metadata and images, health and metrics. Handlers call the core."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from thingward import __version__
from thingward.accounts.errors import AuthenticationError, InvalidTokenError, PermissionDeniedError, SignUpClosedError
from thingward.accounts.mail import Mailer, MailError, QueuedMailer, mailer_from_settings
from thingward.accounts.service import Accounts
from thingward.app.broker_hooks import hooks_router
from thingward.app.camera_api import router as camera_router
from thingward.app.metrics import Metrics
from thingward.app.onboarding_api import onboarding_router
from thingward.app.throttle import FailureThrottle
from thingward.app.web import install_web
from thingward.broker.decisions import HookDecisions
from thingward.camera.service import CameraService
from thingward.config import SmtpSettings
from thingward.errors import (
    ConflictError,
    EnrollmentRefusedError,
    InvalidInputError,
    NotFoundError,
    ThingwardError,
)
from thingward.onboarding.claims import Claims
from thingward.ota.repository import OtaRepository
from thingward.pki.ca import certificate_pem
from thingward.pki.csr import MAX_CSR_BYTES
from thingward.platform import Platform

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


class EnrollRequest(BaseModel):
    token: str = Field(min_length=1, max_length=256, description="the one-time enrollment token")
    csr: str = Field(min_length=1, max_length=MAX_CSR_BYTES, description="PEM certificate signing request")


class EnrollResponse(BaseModel):
    name: str
    certificate: str = Field(description="PEM device certificate")
    ca_certificate: str = Field(description="PEM certificate of the platform CA")
    not_after: str


class ErrorResponse(BaseModel):
    error: str


class BodySizeLimit(BaseHTTPMiddleware):
    """Refuse bodies over the limit before reading them.

    Only a Content-Length body is accepted: with Transfer-Encoding the HTTP parser would follow the chunks
    and Content-Length would be a lie, so any Transfer-Encoding header is refused outright.
    """

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if "transfer-encoding" in request.headers:
            return JSONResponse(
                {"error": "Transfer-Encoding is not accepted: send the body with a Content-Length"}, status_code=411
            )
        if request.method in {"POST", "PUT", "PATCH"}:
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return JSONResponse({"error": "a Content-Length header is required"}, status_code=411)
            if int(length) > MAX_BODY_BYTES:
                return JSONResponse(
                    {"error": f"request body of {length} bytes is over the {MAX_BODY_BYTES} byte limit"},
                    status_code=413,
                )
        return await call_next(request)


def web_mailer(settings: SmtpSettings) -> Mailer:
    """Mail from web requests goes through a queue: an unknown email must not answer faster than a known one."""
    inner = mailer_from_settings(settings)
    return QueuedMailer(inner) if settings.host else inner


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def create_app(
    platform: Platform,
    metrics: Metrics | None = None,
    after_enroll: Callable[[], None] | None = None,
    accounts: Accounts | None = None,
    hook_decisions: HookDecisions | None = None,
    camera: CameraService | None = None,
) -> FastAPI:
    """The API. `after_enroll` runs before a 201 is sent, so the data plane knows the device when it connects.
    `accounts` (default: the platform's, mailing by its [smtp] settings) is at `app.state.accounts`;
    `camera` (default: a new one with its own notification hub) at `app.state.camera`.
    With `hook_decisions` and a `[hooks]` secret, the broker hooks are served under /hooks."""
    metrics = metrics or Metrics()
    throttle = FailureThrottle()
    app = FastAPI(
        title="thingward",
        version=__version__,
        openapi_url="/api/openapi.json",
        docs_url=None,  # the interactive page loads scripts from a CDN; the schema is enough
        redoc_url=None,
    )
    app.state.accounts = accounts or Accounts.for_platform(platform, mailer=web_mailer(platform.settings.smtp))
    # The camera journey (snapshots, notifications); the server passes the one its message path feeds.
    app.state.camera = camera or CameraService.for_platform(platform)
    app.include_router(camera_router)
    app.add_middleware(BodySizeLimit)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "invalid request: " + "; ".join(parts)}, status_code=400)

    @app.exception_handler(ThingwardError)
    async def _domain(_request: Request, exc: ThingwardError) -> JSONResponse:
        status = 500
        if isinstance(exc, InvalidInputError):
            status = 400
        elif isinstance(exc, EnrollmentRefusedError):
            status = 403
        elif isinstance(exc, NotFoundError):
            status = 404
        elif isinstance(exc, ConflictError):
            status = 409
        elif isinstance(exc, PermissionDeniedError | SignUpClosedError):
            status = 403
        elif isinstance(exc, InvalidTokenError | AuthenticationError):
            status = 400
        elif isinstance(exc, MailError):
            status = 503
        return JSONResponse({"error": str(exc)}, status_code=status)

    responses: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorResponse, "description": "malformed request or CSR"},
        403: {"model": ErrorResponse, "description": "token unknown, used, expired, or not for this device"},
        429: {"model": ErrorResponse, "description": "too many failed attempts from this address"},
    }

    @app.post("/api/v1/enroll", status_code=201, response_model=EnrollResponse, responses=responses)
    def enroll(body: EnrollRequest, request: Request) -> Any:
        """Exchange a one-time token and a CSR for a device certificate. The private key never travels."""
        client = _client(request)
        ticket = throttle.try_acquire(client)
        if ticket is None:
            metrics.enrollments.labels("throttled").inc()
            return JSONResponse(
                {"error": "too many failed enrollment attempts from this address: wait and try again"},
                status_code=429,
            )
        try:
            result = platform.enroll(body.token, body.csr, source=f"ip:{client}")
        except (EnrollmentRefusedError, InvalidInputError) as e:
            metrics.enrollments.labels("refused" if isinstance(e, EnrollmentRefusedError) else "bad_csr").inc()
            logger.info("enrollment from %s refused: %s", client, getattr(e, "reason", "") or e)
            raise
        throttle.release(client, ticket)
        metrics.enrollments.labels("issued").inc()
        if after_enroll is not None:
            after_enroll()
        logger.info("enrolled thing %s from %s", result.thing, client)
        return EnrollResponse(
            name=result.thing,
            certificate=certificate_pem(result.certificate).decode(),
            ca_certificate=certificate_pem(platform.ca.certificate).decode(),
            not_after=result.certificate.not_valid_after_utc.isoformat(),
        )

    @app.get("/api/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    ota_repository = OtaRepository.for_data_dir(platform.settings.data_dir)
    not_found: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "no such file"}}

    @app.get("/ota/metadata/{name}", responses=not_found)
    def ota_metadata(name: str) -> Response:
        """TUF metadata (`N.root.json`, `timestamp.json`, `N.snapshot.json`, `N.targets.json`), signed."""
        path = ota_repository.metadata_file(name)
        if path is None:
            return JSONResponse({"error": f"no OTA metadata named {name!r}"}, status_code=404)
        # Read whole (metadata is small and bounded by the client): timestamp.json is replaced while served.
        return Response(path.read_bytes(), media_type="application/json", headers={"Cache-Control": "no-store"})

    @app.get("/ota/targets/{model}/{name}", responses=not_found)
    def ota_target(model: str, name: str) -> Response:
        """A firmware image by its content address (`MODEL/SHA256.VERSION.img`); Range requests resume."""
        path = ota_repository.target_file(model, name)
        if path is None:
            return JSONResponse({"error": f"no OTA image {model}/{name}"}, status_code=404)
        return FileResponse(path, media_type="application/octet-stream")

    hooks = platform.settings.hooks
    hooks_secret = hooks.secret()
    if hook_decisions is not None and hooks_secret is not None:
        app.include_router(
            hooks_router(
                hook_decisions,
                hooks_secret,
                hooks.allowed_networks,
                rabbitmq_vhost=hooks.rabbitmq_vhost,
                rabbitmq_exchange=hooks.rabbitmq_exchange,
            )
        )
    app.include_router(onboarding_router(platform, after_enroll))
    app.state.claims = Claims(platform)  # the "Add a device" page mints claims too
    install_web(app)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
