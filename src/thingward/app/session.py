"""Who is calling: the signed-in person behind a session cookie.

This is the contract between the web pages, the REST API and any router that serves people (the camera
journey's notifications, onboarding): one cookie name, one way to read it, one dependency that refuses.
The accounts service (`app.state.accounts`) does the checking; this module only reads the request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request

from thingward.accounts.errors import InvalidTokenError, PermissionDeniedError
from thingward.accounts.service import SCOPES, Accounts, AuthenticatedSession, UserInfo

# `__Host-`: the browser keeps it only if Secure, Path=/ and no Domain, so no sibling host can plant it.
SESSION_COOKIE = "__Host-thingward_session"


def accounts_of(request: Request) -> Accounts:
    accounts: Accounts = request.app.state.accounts
    return accounts


def session_token(request: Request) -> str:
    return request.cookies.get(SESSION_COOKIE, "")


def current_session(request: Request) -> AuthenticatedSession | None:
    """The live session of this request's cookie, or None. Pending requirements (a forced password
    change, 2FA to enrol) are in `.requirements`; `require_user` refuses such a session."""
    return accounts_of(request).authenticate_session(session_token(request))


def require_user(request: Request) -> AuthenticatedSession:
    """A FastAPI dependency: the signed-in person with nothing pending, else 401 (fail closed)."""
    found = current_session(request)
    if found is None:
        raise HTTPException(status_code=401, detail="sign in first")
    if found.requirements:
        raise HTTPException(
            status_code=403, detail="finish setting up the account first: " + ", ".join(found.requirements)
        )
    return found


# --- callers of the REST API: a session cookie, or an API token with a scope -----------------------------

BROWSER_COOKIE = "__Host-thingward_browser"  # marks a browser this account verified (a long-lived secret)


@dataclass(frozen=True)
class Caller:
    """Who is calling the REST API, and how: `session` is set for a browser session, None for a token."""

    user: UserInfo
    session: AuthenticatedSession | None


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip()


def require_scope(scope: str) -> Callable[[Request], Caller]:
    """A FastAPI dependency factory: an API token carrying `scope`, or a signed-in session (which has every
    scope its person has: `admin` only for admins). 401 without valid credentials, 403 without the right."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def dependency(request: Request) -> Caller:
        raw = bearer_token(request)
        if raw is not None:
            try:
                user = accounts_of(request).authenticate_api_token(raw, scope)
            except InvalidTokenError as e:
                raise HTTPException(status_code=401, detail=str(e)) from e
            except PermissionDeniedError as e:
                raise HTTPException(status_code=403, detail=str(e)) from e
            return Caller(user=user, session=None)
        found = require_user(request)
        if scope == "admin" and not found.user.is_admin:
            raise HTTPException(status_code=403, detail="only an admin may do this")
        return Caller(user=found.user, session=found)

    return dependency


def require_session(request: Request) -> AuthenticatedSession:
    """Account changes (passwords, 2FA, tokens, sessions) need a signed-in browser, never an API token."""
    if bearer_token(request) is not None:
        raise HTTPException(status_code=403, detail="this needs a signed-in session, not an API token")
    return require_user(request)


def require_session_pending(request: Request) -> AuthenticatedSession:
    """Like `require_session`, but a session with pending requirements passes: for the calls that clear
    them (a new password, 2FA enrolment) and for reading the account (which lists them)."""
    if bearer_token(request) is not None:
        raise HTTPException(status_code=403, detail="this needs a signed-in session, not an API token")
    found = current_session(request)
    if found is None:
        raise HTTPException(status_code=401, detail="sign in first")
    return found
