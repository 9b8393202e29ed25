"""Browser-facing defences for every response and every state-changing request.

- `SecurityHeaders`: CSP (`default-src 'self'`, no framing), HSTS, nosniff, Referrer-Policy,
  Permissions-Policy, and `Cache-Control: no-store` unless the route chose its own caching.
- `CsrfGuard`: a POST/PUT/PATCH/DELETE from a browser must come from this origin (`Origin` and
  `Sec-Fetch-Site`, when the browser sends them), and one that carries the session cookie must also carry
  the session's CSRF token (`X-CSRF-Token` header or a `csrf_token` form field). A script calling with an
  `Authorization: Bearer` token and no cookie needs no CSRF token: nothing ambient authenticates it.

Both are plain ASGI middleware: the guard reads the body itself (bounded) and replays it to the app.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from html import escape
from typing import Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.requests import cookie_parser

from thingward.accounts.service import Accounts
from thingward.app.session import SESSION_COOKIE

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_FORM_BYTES = 64 * 1024

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class SecurityHeaders:
    """Adds the security headers to every HTTP response (errors and static files included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                if b"cache-control" not in present and not scope["path"].startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _headers(scope: Scope) -> dict[str, str]:
    # The first of a repeated header, as Starlette's `request.headers.get` takes it: with the last, a second
    # Cookie line showed the guard no session while the handler read the session from the first.
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


def _cookie(headers: dict[str, str], name: str) -> str:
    # Starlette's own parser, the one the handlers read cookies with: a stricter one (http.cookies) gives up
    # on a malformed cookie planted beside ours and would see no session where the handler then finds one.
    return cookie_parser(headers.get("cookie", "")).get(name, "")


def cross_origin_reason(headers: dict[str, str]) -> str | None:
    """Why a state-changing request is not from this site, or None. A browser's `Sec-Fetch-Site` decides
    (no page script can set it); without it, `Origin` must be this site when present. A script that sends
    neither is judged by its credentials alone (and by the CSRF token when it sends the session cookie)."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return None if site in {"same-origin", "none"} else f"a {site} request may not change anything here"
    origin = headers.get("origin")
    if origin is not None and origin != "https://" + headers.get("host", ""):
        return "the request's Origin is not this site"
    return None


class CsrfGuard:
    """Refuses cross-site and token-less state-changing requests (see the module docstring)."""

    def __init__(self, app: ASGIApp, accounts: Callable[[], Accounts]) -> None:
        self.app = app
        self._accounts = accounts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in STATE_CHANGING:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        html = "text/html" in headers.get("accept", "")
        reason = cross_origin_reason(headers)
        if reason is not None:
            await _refuse(send, reason, html=html)
            return
        session_token = _cookie(headers, SESSION_COOKIE)
        if not session_token:
            await self.app(scope, receive, send)
            return
        presented = headers.get(CSRF_HEADER)
        replay = receive
        if presented is None and headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            body, complete = await _read_body(receive, MAX_FORM_BYTES)
            if not complete:
                await _refuse(send, f"a form body over {MAX_FORM_BYTES} bytes is not accepted", 413, html)
                return
            presented = dict(parse_qsl(body.decode("utf-8", "replace"))).get(CSRF_FIELD)
            replay = _replayer(body, receive)
        if not await run_in_threadpool(self._allowed, session_token, presented):
            await _refuse(send, "the CSRF token is missing or wrong: reload the page and try again", html=html)
            return
        await self.app(scope, replay, send)

    def _allowed(self, session_token: str, presented: str | None) -> bool:
        accounts = self._accounts()
        if accounts.check_csrf(session_token, presented):
            return True
        # A cookie of a session that ended (signed out elsewhere, expired) authenticates nothing, so there is
        # nothing to forge: let the request through as anonymous (signing in again must work).
        return accounts.authenticate_session(session_token) is None


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replayer(body: bytes, receive: Receive) -> Receive:
    """The body read once, then the client's own messages (its disconnect, when it comes)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


_REFUSAL_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Refused</title>
<link rel="stylesheet" href="/static/app.css"></head><body><main><section class="card narrow"><h1>Refused</h1>
<p>{reason}.</p><p><a href="/">Back to the app</a></p></section></main></body></html>"""


async def _refuse(send: Send, reason: str, status: int = 403, html: bool = False) -> None:
    """The refusal as JSON, or as a small page for a browser's form post (which shows it to a person)."""
    if html:
        body, kind = _REFUSAL_PAGE.format(reason=escape(reason)).encode(), b"text/html; charset=utf-8"
    else:
        body, kind = json.dumps({"error": reason}).encode(), b"application/json"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
