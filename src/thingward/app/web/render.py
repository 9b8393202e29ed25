"""What every page shares: the Jinja2 templates, the signed-in person, forms, cookies and redirects."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from thingward.accounts.service import AuthenticatedSession
from thingward.app.security import CSRF_FIELD, MAX_FORM_BYTES
from thingward.app.session import BROWSER_COOKIE, SESSION_COOKIE, accounts_of, current_session, session_token

PENDING_COOKIE = "__Host-thingward_pending"
BROWSER_COOKIE_DAYS = 400  # the longest a browser keeps a cookie

# Where a session with pending requirements is sent; the only pages it may use.
SETUP_PATH = "/account/setup"

_env = Environment(
    loader=PackageLoader("thingward.app", "templates"),
    autoescape=select_autoescape(["j2", "html"], default_for_string=True, default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"


_env.filters["when"] = _when


class PageRedirect(Exception):
    """Raised by page dependencies to send the browser elsewhere (sign-in, account set-up)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class PageNotFound(Exception):
    pass


@dataclass(frozen=True)
class Page:
    """The signed-in person of a page request, with the CSRF token its forms carry."""

    session: AuthenticatedSession
    token: str
    csrf: str

    @property
    def user_id(self) -> int:
        return self.session.user.id


def render(
    request: Request, template: str, status: int = 200, page: Page | None = None, **context: Any
) -> HTMLResponse:
    if page is None and session_token(request):
        # A public page seen by someone signed in: the header shows them, and scripts get the CSRF token.
        page = optional_page(request)
    csrf = page.csrf if page is not None else ""
    html = _env.get_template(template).render(
        request=request,
        page=page,
        user=page.session.user if page else None,
        csrf=csrf,
        csrf_field=CSRF_FIELD,
        **context,
    )
    return HTMLResponse(html, status_code=status)


def redirect(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303)


def _page(request: Request, allow_pending: bool) -> Page:
    token = session_token(request)
    found = current_session(request)
    if found is None:
        raise PageRedirect("/login")
    if found.requirements and not allow_pending:
        raise PageRedirect(SETUP_PATH)
    return Page(session=found, token=token, csrf=accounts_of(request).csrf_token(token))


def signed_in(request: Request) -> Page:
    """A page dependency: the signed-in person with nothing pending; otherwise a redirect."""
    return _page(request, allow_pending=False)


def signed_in_pending(request: Request) -> Page:
    """For the pages that clear pending requirements (and sign-out)."""
    return _page(request, allow_pending=True)


def admin_page(request: Request) -> Page:
    """Admins only; anyone else sees the same 404 as for a page that does not exist."""
    page = _page(request, allow_pending=False)
    if not page.session.user.is_admin:
        raise PageNotFound()
    return page


def optional_page(request: Request) -> Page | None:
    token = session_token(request)
    found = current_session(request)
    if found is None:
        return None
    return Page(session=found, token=token, csrf=accounts_of(request).csrf_token(token))


async def form_of(request: Request) -> dict[str, str]:
    """A urlencoded form (the CSRF guard has read it already when a session cookie came with it)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


async def form_lists_of(request: Request) -> list[tuple[str, str]]:
    body = await request.body()
    return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)


def client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


def user_agent(request: Request) -> str:
    return request.headers.get("user-agent", "")[:512]


def set_session_cookie(response: Response, token: str) -> None:
    # No Max-Age: the server decides when a session ends (idle and absolute limits), the cookie just carries it.
    response.set_cookie(SESSION_COOKIE, token, httponly=True, secure=True, samesite="lax", path="/")


def set_browser_cookie(response: Response, token: str) -> None:
    response.set_cookie(
        BROWSER_COOKIE,
        token,
        max_age=BROWSER_COOKIE_DAYS * 86400,
        httponly=True,
        secure=True,
        samesite="lax",
        path="/",
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="lax")
