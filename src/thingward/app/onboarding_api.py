"""Onboarding doors of the REST API: claim tokens for signed-in people, claim enrollment for devices.

`POST /api/v1/claims` takes a Bearer API token with the `things:control` scope, or the session cookie
(CSRF for cookie requests is the web app's middleware). `POST /api/v1/claims/enroll` is the device's:
it holds only the claim token the app handed it, and a CSR.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from thingward.accounts.errors import InvalidTokenError, PermissionDeniedError
from thingward.accounts.service import UserInfo
from thingward.app.session import accounts_of, require_user
from thingward.app.throttle import FailureThrottle
from thingward.errors import ConflictError, EnrollmentRefusedError, InvalidInputError
from thingward.onboarding.claims import Claims
from thingward.pki.ca import certificate_pem
from thingward.pki.csr import MAX_CSR_BYTES
from thingward.platform import Platform

logger = logging.getLogger(__name__)

CLAIM_SCOPE = "things:control"


class ClaimRequest(BaseModel):
    device_id: str | None = Field(default=None, max_length=64, description="the device id on the label, if known")


class ClaimResponse(BaseModel):
    id: int
    token: str = Field(description="the claim token: hand it to the device inside the provisioning session")
    device_id: str | None
    expires_at: str


class ClaimStatusResponse(BaseModel):
    id: int
    state: str = Field(description="pending, enrolled or expired")
    device_id: str | None
    thing: str | None
    online: bool
    expires_at: str


class ClaimEnrollRequest(BaseModel):
    claim_token: str = Field(min_length=1, max_length=256)
    device_id: str = Field(min_length=1, max_length=64)
    csr: str = Field(min_length=1, max_length=MAX_CSR_BYTES, description="PEM CSR whose CN is the device id")


class ClaimEnrollResponse(BaseModel):
    name: str
    certificate: str
    ca_certificate: str
    not_after: str


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def claiming_user(request: Request) -> UserInfo:
    """A Bearer API token with the `things:control` scope, else the signed-in session (401/403 otherwise)."""
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise HTTPException(status_code=401, detail="use 'Authorization: Bearer <API token>'")
        try:
            return accounts_of(request).authenticate_api_token(raw.strip(), CLAIM_SCOPE)
        except InvalidTokenError as e:
            raise HTTPException(status_code=401, detail=str(e)) from None
        except PermissionDeniedError as e:
            raise HTTPException(status_code=403, detail=str(e)) from None
    return require_user(request).user


ClaimingUser = Annotated[UserInfo, Depends(claiming_user)]
ClaimId = Annotated[int, Path(ge=1, le=2**62)]  # within every database's integers: a 400, not a 500


def onboarding_router(platform: Platform, after_enroll: Callable[[], None] | None = None) -> APIRouter:
    router = APIRouter()
    claims = Claims(platform)
    throttle = FailureThrottle()

    @router.post("/api/v1/claims", status_code=201, response_model=ClaimResponse)
    def create_claim(body: ClaimRequest, user: ClaimingUser, request: Request) -> Any:
        """A single-use claim token for a device you are setting up, valid for minutes."""
        claim = claims.mint(user.id, body.device_id, f"ip:{_client(request)}")
        return ClaimResponse(id=claim.id, token=claim.token, device_id=claim.device_id,
                             expires_at=claim.expires_at.isoformat())  # fmt: skip

    @router.get("/api/v1/claims/{claim_id}", response_model=ClaimStatusResponse)
    def claim_status(claim_id: ClaimId, user: ClaimingUser, request: Request) -> Any:
        """Whether the device took the claim, enrolled, and reported in; only for the claim's owner."""
        status = claims.status(user.id, claim_id, f"ip:{_client(request)}")
        return ClaimStatusResponse(
            id=status.id,
            state=status.state,
            device_id=status.device_id,
            thing=status.thing,
            online=status.online,
            expires_at=status.expires_at.isoformat(),
        )

    @router.post("/api/v1/claims/enroll", status_code=201, response_model=ClaimEnrollResponse)
    def claim_enroll(body: ClaimEnrollRequest, request: Request) -> Any:
        """The device's half: a claim token and a CSR for a certificate; the thing becomes the claimer's."""
        client = _client(request)
        ticket = throttle.try_acquire(client)
        if ticket is None:
            return JSONResponse(
                {"error": "too many failed claim attempts from this address: wait and try again"}, status_code=429
            )
        try:
            result = claims.enroll(body.claim_token, body.device_id, body.csr, f"ip:{client}")
        except (EnrollmentRefusedError, InvalidInputError, ConflictError) as e:
            logger.info("claim enrollment from %s refused: %s", client, getattr(e, "reason", "") or e)
            raise
        throttle.release(client, ticket)
        if after_enroll is not None:
            after_enroll()
        logger.info("device %s claimed by %s from %s", result.thing, result.owner, client)
        cert = result.enrollment.certificate
        return ClaimEnrollResponse(
            name=result.thing,
            certificate=certificate_pem(cert).decode(),
            ca_certificate=certificate_pem(platform.ca.certificate).decode(),
            not_after=cert.not_valid_after_utc.isoformat(),
        )

    return router
