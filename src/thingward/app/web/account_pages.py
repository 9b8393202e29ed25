"""The account pages: sign-up, sign-in (with its second step), sign-out, password reset, the account
settings (password, 2FA, email), sessions and API tokens. Every page calls the accounts service."""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from thingward.accounts.errors import (
    AuthenticationError,
    InvalidTokenError,
    PermissionDeniedError,
    SignUpClosedError,
    WeakPasswordError,
)
from thingward.accounts.mail import MailError
from thingward.accounts.service import SCOPES, LoginOutcome, LoginResult
from thingward.app.session import BROWSER_COOKIE, SESSION_COOKIE, accounts_of, session_token
from thingward.app.web.pending import PendingSignIns
from thingward.app.web.render import (
    PENDING_COOKIE,
    SETUP_PATH,
    Page,
    clear_cookie,
    client_ip,
    form_lists_of,
    form_of,
    optional_page,
    redirect,
    render,
    set_browser_cookie,
    set_session_cookie,
    signed_in,
    signed_in_pending,
    user_agent,
)
from thingward.errors import ConflictError, InvalidInputError, NotFoundError, ThingwardError

router = APIRouter(include_in_schema=False)


def _pending(request: Request) -> PendingSignIns:
    """This app's sign-ins waiting for their second step (`install_web` puts one on the app)."""
    pending: PendingSignIns = request.app.state.pending_sign_ins
    return pending


Form = Annotated[dict[str, str], Depends(form_of)]
RowId = Annotated[int, Path(ge=1, le=2**62)]
SignedIn = Annotated[Page, Depends(signed_in)]
SignedInPending = Annotated[Page, Depends(signed_in_pending)]
MaybeSignedIn = Annotated[Page | None, Depends(optional_page)]

CODE_REFUSED = "the code is wrong or was used already: type the newest code"


def _problems(error: ThingwardError) -> list[str]:
    if isinstance(error, WeakPasswordError):
        return list(error.problems)
    return [str(error)]


# --- sign-up ------------------------------------------------------------------------------------------


@router.get("/")
def home(page: MaybeSignedIn) -> Response:
    return redirect("/devices" if page else "/login")


@router.get("/signup")
def signup_form(request: Request, invite: str = "") -> Response:
    accounts = accounts_of(request)
    return render(
        request,
        "signup.j2",
        rules=accounts.password_rules(),
        invite=invite[:128],
        invite_only=accounts.settings.signup == "invite",
        form={},
    )


@router.post("/signup")
def signup(request: Request, form: Form) -> Response:
    accounts = accounts_of(request)
    email, name, invite = form.get("email", ""), form.get("name", ""), form.get("invite", "")
    try:
        accounts.sign_up(email, form.get("password", ""), name=name, invite_token=invite or None, ip=client_ip(request))
    except (InvalidInputError, ConflictError, SignUpClosedError) as e:
        return render(
            request,
            "signup.j2",
            status=400,
            rules=accounts.password_rules(),
            invite=invite[:128],
            invite_only=accounts.settings.signup == "invite",
            problems=_problems(e),
            form={"email": email, "name": name},
        )
    return redirect("/login?signed_up=1")


# --- sign-in ------------------------------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request, page: MaybeSignedIn, signed_up: str = "", reset: str = "") -> Response:
    if page is not None:
        return redirect("/")
    notice = ""
    if signed_up:
        notice = "Your account is ready: sign in."
    elif reset:
        notice = "Your password was changed: sign in with the new one."
    return render(request, "login.j2", notice=notice, email="")


def _signed_in(request: Request, result: LoginResult) -> Response:
    previous = session_token(request)
    if previous:  # a sign-in over an older session of this browser ends that one: one live id per browser
        accounts_of(request).logout(previous)
    response = redirect(SETUP_PATH if result.requirements else "/")
    set_session_cookie(response, result.session_token or "")
    if result.browser_token:
        set_browser_cookie(response, result.browser_token)
    clear_cookie(response, PENDING_COOKIE)
    return response


@router.post("/login")
def login(request: Request, form: Form) -> Response:
    accounts = accounts_of(request)
    email, password = form.get("email", ""), form.get("password", "")
    try:
        result = accounts.login(
            email,
            password,
            ip=client_ip(request),
            user_agent=user_agent(request),
            browser_token=request.cookies.get(BROWSER_COOKIE) or None,
        )
    except MailError:
        return render(
            request, "login.j2", status=503, error="the sign-in code could not be mailed: ask an admin", email=email
        )
    if result.outcome == LoginOutcome.OK:
        return _signed_in(request, result)
    if result.outcome in {LoginOutcome.NEED_SECOND_FACTOR, LoginOutcome.NEED_EMAIL_CODE}:
        kind = "totp" if result.outcome == LoginOutcome.NEED_SECOND_FACTOR else "email"
        key = _pending(request).add(email, password, kind)
        response = redirect("/login/verify")
        response.set_cookie(PENDING_COOKIE, key, max_age=600, httponly=True, secure=True, samesite="lax", path="/")
        return response
    # Refused or locked: one page whatever the reason, so it tells nobody which emails exist.
    return render(request, "login.j2", status=401, error=result.message, email=email)


@router.get("/login/verify")
def verify_form(request: Request) -> Response:
    found = _pending(request).peek(request.cookies.get(PENDING_COOKIE, ""))
    if found is None:
        return redirect("/login")
    return render(request, "verify.j2", kind=found.kind)


@router.post("/login/verify")
def verify(request: Request, form: Form) -> Response:
    key = request.cookies.get(PENDING_COOKIE, "")
    found = _pending(request).take_try(key)
    if found is None:
        response = render(request, "login.j2", status=401, error="the sign-in expired: start again", email="")
        clear_cookie(response, PENDING_COOKIE)
        return response
    code = form.get("code", "").strip()
    result = accounts_of(request).login(
        found.email,
        found.password,
        second_factor=code,
        ip=client_ip(request),
        user_agent=user_agent(request),
        browser_token=request.cookies.get(BROWSER_COOKIE) or None,
    )
    if result.outcome == LoginOutcome.OK:
        _pending(request).drop(key)
        return _signed_in(request, result)
    if result.outcome == LoginOutcome.LOCKED or (result.outcome == LoginOutcome.REFUSED and result.retry_after):
        _pending(request).drop(key)
        response = render(request, "login.j2", status=401, error=result.message, email=found.email)
        clear_cookie(response, PENDING_COOKIE)
        return response
    return render(request, "verify.j2", status=401, kind=found.kind, error=CODE_REFUSED)


@router.post("/logout")
def logout(request: Request, page: SignedInPending) -> Response:
    accounts_of(request).logout(page.token)
    response = redirect("/login")
    clear_cookie(response, SESSION_COOKIE)
    return response


# --- password reset -----------------------------------------------------------------------------------


@router.get("/forgot")
def forgot_form(request: Request) -> Response:
    return render(request, "forgot.j2", sent=False)


@router.post("/forgot")
def forgot(request: Request, form: Form) -> Response:
    # The same page, in the same time, whether or not the address has an account: the request is handled
    # after the page was sent (and the look-up and the mail on the mailer's thread after that).
    response = render(request, "forgot.j2", sent=True)
    response.background = BackgroundTask(
        accounts_of(request).request_password_reset, form.get("email", ""), ip=client_ip(request)
    )
    return response


@router.get("/reset")
def reset_form(request: Request, token: str = "") -> Response:
    return render(request, "reset.j2", token=token[:128], rules=accounts_of(request).password_rules())


@router.post("/reset")
def reset(request: Request, form: Form) -> Response:
    accounts = accounts_of(request)
    token = form.get("token", "")
    try:
        accounts.reset_password(token, form.get("password", ""), ip=client_ip(request))
    except (InvalidInputError, InvalidTokenError) as e:
        return render(
            request, "reset.j2", status=400, token=token[:128], rules=accounts.password_rules(), problems=_problems(e)
        )
    return redirect("/login?reset=1")


# --- the account --------------------------------------------------------------------------------------


def _account(request: Request, page: Page, status: int = 200, **context: object) -> Response:
    accounts = accounts_of(request)
    return render(
        request,
        "account.j2",
        status=status,
        page=page,
        rules=accounts.password_rules(),
        codes_left=accounts.recovery_codes_left(page.user_id) if page.session.user.totp_enabled else 0,
        **context,
    )


@router.get("/account")
def account(request: Request, page: SignedIn) -> Response:
    return _account(request, page)


@router.get(SETUP_PATH)
def setup(request: Request, page: SignedInPending) -> Response:
    if not page.session.requirements:
        return redirect("/")
    return render(
        request, "setup.j2", page=page, needs=page.session.requirements, rules=accounts_of(request).password_rules()
    )


def _rotated(request: Request, page: Page, response: Response) -> Response:
    """A new session id after a privilege change (new password, 2FA on or off, new email)."""
    new = accounts_of(request).rotate_session(page.token)
    if new:
        set_session_cookie(response, new)
    return response


@router.post("/account/password")
def change_password(request: Request, form: Form, page: SignedInPending) -> Response:
    accounts = accounts_of(request)
    try:
        accounts.change_password(
            page.user_id, form.get("current_password", ""), form.get("new_password", ""), page.token
        )
    except (InvalidInputError, AuthenticationError) as e:
        if page.session.requirements:
            return render(
                request,
                "setup.j2",
                status=400,
                page=page,
                needs=page.session.requirements,
                rules=accounts.password_rules(),
                problems=_problems(e),
            )
        return _account(request, page, status=400, password_problems=_problems(e))
    return _rotated(
        request, page, redirect("/account?changed=password" if not page.session.requirements else SETUP_PATH)
    )


@router.post("/account/2fa/begin")
def totp_begin(request: Request, page: SignedInPending) -> Response:
    if page.session.user.totp_enabled:
        return redirect("/account")
    enrolment = accounts_of(request).begin_totp(page.user_id)
    return render(request, "totp_enrol.j2", page=page, enrolment=enrolment)


@router.post("/account/2fa/confirm")
def totp_confirm(request: Request, form: Form, page: SignedInPending) -> Response:
    accounts = accounts_of(request)
    try:
        codes, new_token = accounts.confirm_totp(page.user_id, form.get("code", ""), page.token)
    except (InvalidInputError, AuthenticationError) as e:
        return render(request, "totp_enrol.j2", status=400, page=page, enrolment=None, problems=_problems(e))
    response = render(
        request,
        "recovery_codes.j2",
        page=Page(page.session, new_token or page.token, accounts.csrf_token(new_token or page.token)),
        codes=codes,
    )
    if new_token:
        set_session_cookie(response, new_token)
    return response


@router.post("/account/2fa/disable")
def totp_disable(request: Request, form: Form, page: SignedIn) -> Response:
    try:
        accounts_of(request).disable_totp(page.user_id, form.get("password", ""), form.get("code", ""))
    except (InvalidInputError, AuthenticationError) as e:
        return _account(request, page, status=400, totp_problems=_problems(e))
    return _rotated(request, page, redirect("/account?changed=2fa"))


@router.post("/account/2fa/recovery-codes")
def recovery_codes(request: Request, form: Form, page: SignedIn) -> Response:
    try:
        codes = accounts_of(request).regenerate_recovery_codes(
            page.user_id, form.get("password", ""), form.get("code", "")
        )
    except (InvalidInputError, AuthenticationError) as e:
        return _account(request, page, status=400, totp_problems=_problems(e))
    return render(request, "recovery_codes.j2", page=page, codes=codes)


@router.post("/account/email")
def change_email(request: Request, form: Form, page: SignedIn) -> Response:
    try:
        accounts_of(request).change_email(
            page.user_id, form.get("password", ""), form.get("code") or None, form.get("new_email", "")
        )
    except (InvalidInputError, AuthenticationError, ConflictError) as e:
        return _account(request, page, status=400, email_problems=_problems(e))
    return _rotated(request, page, redirect("/account?changed=email"))


# --- sessions -----------------------------------------------------------------------------------------


@router.get("/account/sessions")
def sessions(request: Request, page: SignedIn) -> Response:
    listed = accounts_of(request).list_sessions(page.user_id, page.token)
    return render(request, "sessions.j2", page=page, sessions=listed)


@router.post("/account/sessions/{session_id}/end")
def end_session(request: Request, session_id: RowId, page: SignedIn) -> Response:
    try:
        accounts_of(request).end_session(page.user_id, session_id)
    except NotFoundError:
        return redirect("/account/sessions")
    if session_id == page.session.session_id:
        response = redirect("/login")
        clear_cookie(response, SESSION_COOKIE)
        return response
    return redirect("/account/sessions")


# --- API tokens ---------------------------------------------------------------------------------------


def _tokens(request: Request, page: Page, status: int = 200, **context: object) -> Response:
    accounts = accounts_of(request)
    scopes = {k: v for k, v in SCOPES.items() if k != "admin" or page.session.user.is_admin}
    return render(
        request,
        "tokens.j2",
        status=status,
        page=page,
        tokens=accounts.list_api_tokens(page.user_id),
        scopes=scopes,
        max_days=accounts.settings.api_token_max_days,
        **context,
    )


@router.get("/account/tokens")
def tokens(request: Request, page: SignedIn) -> Response:
    return _tokens(request, page)


@router.post("/account/tokens")
async def create_token(request: Request, page: SignedIn) -> Response:
    fields = await form_lists_of(request)
    values = dict(fields)
    scopes = [value for key, value in fields if key == "scope"]
    try:
        days = int(values.get("days", "90"))
    except ValueError:
        return await run_in_threadpool(
            _tokens, request, page, 400, problems=["the lifetime must be a whole number of days"]
        )
    try:
        created = await run_in_threadpool(
            accounts_of(request).create_api_token, page.user_id, values.get("name", ""), scopes, days
        )
    except (InvalidInputError, PermissionDeniedError) as e:
        return await run_in_threadpool(_tokens, request, page, 400, problems=[str(e)])
    return await run_in_threadpool(_tokens, request, page, 201, created=created)


@router.post("/account/tokens/{token_id}/revoke")
def revoke_token(request: Request, token_id: RowId, page: SignedIn) -> Response:
    # Someone else's token id is "not found" like a missing one: nothing to say either way.
    with contextlib.suppress(NotFoundError):
        accounts_of(request).revoke_api_token(page.user_id, token_id)
    return redirect("/account/tokens")
