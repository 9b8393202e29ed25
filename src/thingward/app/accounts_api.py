"""The accounts REST API under /api/v1: sign-in, sign-up, password reset, the live password check, and
the signed-in person's account, sessions and API tokens. The same service calls as the pages.

Changing the account (password, 2FA, tokens, sessions) needs a signed-in session and its CSRF token; an
API token can read the account (`account:read`) but not change it.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from thingward.accounts.errors import AuthenticationError, PermissionDeniedError
from thingward.accounts.mail import MailError
from thingward.accounts.service import SCOPES, LoginOutcome, UserInfo
from thingward.app.devices_api import AUTH_ERRORS, ErrorBody
from thingward.app.session import (
    BROWSER_COOKIE,
    SESSION_COOKIE,
    accounts_of,
    bearer_token,
    current_session,
    require_scope,
    require_session,
    require_session_pending,
    session_token,
)
from thingward.app.web.render import clear_cookie, client_ip, set_browser_cookie, set_session_cookie, user_agent
from thingward.errors import InvalidInputError

router = APIRouter(prefix="/api/v1", tags=["accounts"])

Email = Field(min_length=3, max_length=254)
Password = Field(min_length=1, max_length=1024)
Code = Field(min_length=1, max_length=64)


class Account(BaseModel):
    id: int
    email: str
    name: str
    admin: bool
    totp_enabled: bool
    must_change_password: bool
    created_at: dt.datetime
    groups: list[str]
    requirements: list[str] = Field(default_factory=list, description="what must happen before anything else")


def _account(user: UserInfo, requirements: tuple[str, ...] = ()) -> Account:
    return Account(
        id=user.id,
        email=user.email,
        name=user.display_name,
        admin=user.is_admin,
        totp_enabled=user.totp_enabled,
        must_change_password=user.must_change_password,
        created_at=user.created_at,
        groups=list(user.groups),
        requirements=list(requirements),
    )


class LoginRequest(BaseModel):
    email: str = Field(max_length=254)
    password: str = Password
    code: str | None = Field(default=None, max_length=64, description="TOTP, recovery or mailed code")


class LoginAnswer(BaseModel):
    outcome: str = Field(description="ok, need_second_factor or need_email_code")
    message: str = ""
    requirements: list[str] = Field(default_factory=list)
    csrf_token: str | None = Field(default=None, description="send as X-CSRF-Token with the session cookie")


class SignUpRequest(BaseModel):
    email: str = Email
    password: str = Password
    name: str = Field(default="", max_length=128)
    invite: str | None = Field(default=None, max_length=128)


class ResetRequest(BaseModel):
    email: str = Field(max_length=254)


class ResetConfirm(BaseModel):
    token: str = Field(min_length=1, max_length=128)
    password: str = Password


class Accepted(BaseModel):
    message: str


class PasswordCheckRequest(BaseModel):
    password: str = Field(max_length=1024)
    email: str = Field(default="", max_length=254)
    name: str = Field(default="", max_length=128)


class PasswordVerdict(BaseModel):
    ok: bool
    problems: list[str]
    rules: list[str]


class ChangePassword(BaseModel):
    current_password: str = Password
    new_password: str = Password


class CodeRequest(BaseModel):
    code: str = Code


class PasswordAndCode(BaseModel):
    password: str = Password
    code: str = Code


class TotpStart(BaseModel):
    secret: str
    uri: str
    qr_svg: str


class RecoveryCodes(BaseModel):
    recovery_codes: list[str]


class SessionItem(BaseModel):
    id: int
    created_at: dt.datetime
    last_seen_at: dt.datetime
    expires_at: dt.datetime
    ip: str
    user_agent: str
    current: bool


class TokenItem(BaseModel):
    id: int
    name: str
    scopes: list[str]
    created_at: dt.datetime
    expires_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked: bool


class NewToken(BaseModel):
    token: str = Field(description="shown once: store it now")
    info: TokenItem


class TokenRequest(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    scopes: list[str] = Field(min_length=1, max_length=len(SCOPES), description=", ".join(SCOPES))
    days: int = Field(default=90, ge=1, le=3650)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "the request is malformed or refused (the message says why)",
        401: "not signed in, or the credentials are wrong",
        403: "not allowed (CSRF token missing, an API token where a session is needed, set-up pending)",
        404: "no such item of yours",
        409: "taken already",
        429: "too many attempts: wait",
        503: "mail is not set up on this server",
    }
    return {code: {"model": ErrorBody, "description": described[code]} for code in codes}


RowId = Annotated[int, Path(ge=1, le=2**62)]
Session = Annotated[Any, Depends(require_session)]
PendingSession = Annotated[Any, Depends(require_session_pending)]


# --- public ---------------------------------------------------------------------------------------------


@router.post("/auth/login", response_model=LoginAnswer, responses=_errors(400, 401, 429, 503))
def login(body: LoginRequest, request: Request) -> Response:
    """Sign in. An unknown email and a wrong password get the same answer. With `ok` the session cookie
    is set; `need_second_factor` / `need_email_code`: send the same request again with `code`."""
    accounts = accounts_of(request)
    try:
        result = accounts.login(
            body.email,
            body.password,
            second_factor=body.code,
            ip=client_ip(request),
            user_agent=user_agent(request),
            browser_token=request.cookies.get(BROWSER_COOKIE) or None,
        )
    except MailError:
        return JSONResponse({"error": "the sign-in code could not be mailed: ask an admin"}, status_code=503)
    if result.outcome == LoginOutcome.LOCKED or result.retry_after:
        return JSONResponse({"error": result.message}, status_code=429)
    if result.outcome == LoginOutcome.REFUSED:
        return JSONResponse({"error": result.message}, status_code=401)
    csrf = accounts.csrf_token(result.session_token) if result.session_token else None
    answer = LoginAnswer(
        outcome=result.outcome.value, message=result.message, requirements=list(result.requirements), csrf_token=csrf
    )
    response = JSONResponse(answer.model_dump())
    if result.session_token:
        set_session_cookie(response, result.session_token)
    if result.browser_token:
        set_browser_cookie(response, result.browser_token)
    return response


@router.post("/auth/logout", status_code=204, responses=_errors(403))
def logout(request: Request) -> Response:
    """End this session (nothing happens without one)."""
    token = session_token(request)
    if token:
        accounts_of(request).logout(token)
    response = Response(status_code=204)
    clear_cookie(response, SESSION_COOKIE)
    return response


@router.post("/auth/signup", status_code=201, response_model=Account, responses=_errors(400, 403, 409))
def signup(body: SignUpRequest, request: Request) -> Account:
    """Open sign-up, or sign-up with an invitation (by `[accounts] signup`)."""
    user = accounts_of(request).sign_up(
        body.email, body.password, name=body.name, invite_token=body.invite, ip=client_ip(request)
    )
    return _account(user)


@router.post("/auth/password-reset", status_code=202, response_model=Accepted, responses=_errors(400))
def request_reset(body: ResetRequest, request: Request, background: BackgroundTasks) -> Accepted:
    """Mail a single-use reset link if the account exists: the same answer, in the same time, either way
    (the request is handled after the answer was sent)."""
    background.add_task(accounts_of(request).request_password_reset, body.email, ip=client_ip(request))
    return Accepted(message="if an account has this email, a reset link was mailed to it")


@router.post("/auth/password-reset/confirm", response_model=Account, responses=_errors(400))
def confirm_reset(body: ResetConfirm, request: Request) -> Account:
    """Set a new password with the mailed token; every session ends and API tokens are revoked."""
    return _account(accounts_of(request).reset_password(body.token, body.password, ip=client_ip(request)))


@router.post("/password/check", response_model=PasswordVerdict, responses=_errors(400, 403))
def check_password(body: PasswordCheckRequest, request: Request) -> PasswordVerdict:
    """The verdict the server will give on this password (the pages show it live while typing). A
    signed-in person's own email and name count as context."""
    accounts = accounts_of(request)
    found = current_session(request)
    email, name = (found.user.email, found.user.display_name) if found else (body.email, body.name)
    verdict = accounts.password_feedback(body.password, email, name)
    return PasswordVerdict(ok=verdict.ok, problems=list(verdict.problems), rules=accounts.password_rules())


# --- the caller's account -------------------------------------------------------------------------------


@router.get("/account", response_model=Account, responses=AUTH_ERRORS)
def get_account(request: Request) -> Account:
    """The caller's account (`account:read` for a token); a session sees what set-up it still needs."""
    if bearer_token(request) is None:
        found = require_session_pending(request)
        return _account(found.user, found.requirements)
    return _account(require_scope("account:read")(request).user)


@router.post("/account/password", response_model=Accepted, responses=_errors(400, 401, 403))
def change_password(body: ChangePassword, request: Request, session: PendingSession) -> Response:
    """Change the password (other sessions end). The session gets a new id (cookie) and CSRF token."""
    accounts = accounts_of(request)
    token = session_token(request)
    try:
        accounts.change_password(session.user.id, body.current_password, body.new_password, token)
    except AuthenticationError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    new = accounts.rotate_session(token)
    response = JSONResponse({"message": "password changed; other sessions ended"})
    if new:
        set_session_cookie(response, new)
    return response


@router.post("/account/2fa/begin", response_model=TotpStart, responses=_errors(400, 401, 403))
def totp_begin(request: Request, session: PendingSession) -> TotpStart:
    """A new TOTP key (secret, otpauth URI, QR code as SVG), pending until confirmed with a first code."""
    if session.user.totp_enabled:
        raise InvalidInputError("2FA is on already: turn it off first to enrol a new phone")
    enrolment = accounts_of(request).begin_totp(session.user.id)
    return TotpStart(secret=enrolment.secret, uri=enrolment.uri, qr_svg=enrolment.qr_svg)


@router.post("/account/2fa/confirm", response_model=RecoveryCodes, responses=_errors(400, 401, 403))
def totp_confirm(body: CodeRequest, request: Request, session: PendingSession) -> Response:
    """Turn 2FA on with a first code; returns ten recovery codes, shown once. The session gets a new id."""
    accounts = accounts_of(request)
    try:
        codes, new = accounts.confirm_totp(session.user.id, body.code, session_token(request))
    except AuthenticationError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    response = JSONResponse({"recovery_codes": codes})
    if new:
        set_session_cookie(response, new)
    return response


@router.post("/account/2fa/disable", response_model=Accepted, responses=_errors(400, 401, 403))
def totp_disable(body: PasswordAndCode, request: Request, session: Session) -> Accepted:
    try:
        accounts_of(request).disable_totp(session.user.id, body.password, body.code)
    except AuthenticationError as e:
        raise InvalidInputError(str(e)) from e
    return Accepted(message="two-factor authentication is off")


@router.post("/account/2fa/recovery-codes", response_model=RecoveryCodes, responses=_errors(400, 401, 403))
def renew_recovery_codes(body: PasswordAndCode, request: Request, session: Session) -> RecoveryCodes:
    try:
        codes = accounts_of(request).regenerate_recovery_codes(session.user.id, body.password, body.code)
    except AuthenticationError as e:
        raise InvalidInputError(str(e)) from e
    return RecoveryCodes(recovery_codes=codes)


@router.get("/account/sessions", response_model=list[SessionItem], responses=_errors(401, 403))
def list_sessions(request: Request, session: Session) -> list[SessionItem]:
    listed = accounts_of(request).list_sessions(session.user.id, session_token(request))
    return [SessionItem(**vars(s)) for s in listed]


@router.delete("/account/sessions/{session_id}", status_code=204, responses=_errors(401, 403, 404))
def end_session(session_id: RowId, request: Request, session: Session) -> Response:
    """End one of your sessions (any device); someone else's id is 404 like a missing one."""
    accounts_of(request).end_session(session.user.id, session_id)
    return Response(status_code=204)


def _token_item(info: Any) -> TokenItem:
    return TokenItem(
        id=info.id,
        name=info.name,
        scopes=list(info.scopes),
        created_at=info.created_at,
        expires_at=info.expires_at,
        last_used_at=info.last_used_at,
        revoked=info.revoked,
    )


@router.get("/account/tokens", response_model=list[TokenItem], responses=_errors(401, 403))
def list_tokens(request: Request, session: Session) -> list[TokenItem]:
    return [_token_item(t) for t in accounts_of(request).list_api_tokens(session.user.id)]


@router.post("/account/tokens", status_code=201, response_model=NewToken, responses=_errors(400, 401, 403))
def create_token(body: TokenRequest, request: Request, session: Session) -> NewToken:
    """A token for scripts (`Authorization: Bearer twk_...`), limited to its scopes, expiring; shown once."""
    try:
        created = accounts_of(request).create_api_token(session.user.id, body.name, body.scopes, body.days)
    except PermissionDeniedError as e:
        raise InvalidInputError(str(e)) from e
    return NewToken(token=created.token, info=_token_item(created.info))


@router.delete("/account/tokens/{token_id}", status_code=204, responses=_errors(401, 403, 404))
def revoke_token(token_id: RowId, request: Request, session: Session) -> Response:
    accounts_of(request).revoke_api_token(session.user.id, token_id)
    return Response(status_code=204)
