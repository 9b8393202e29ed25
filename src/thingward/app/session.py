"""Who is calling: the signed-in person behind a session cookie.

This is the contract between the web pages, the REST API and any router that serves people (the camera
journey's notifications, onboarding): one cookie name, one way to read it, one dependency that refuses.
The accounts service (`app.state.accounts`) does the checking; this module only reads the request.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from thingward.accounts.service import Accounts, AuthenticatedSession

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
