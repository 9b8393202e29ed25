"""The web app: server-rendered pages (Jinja2, one self-hosted CSS and one JS file, no inline script)
on the same HTTPS port and the same service functions as the REST API."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from thingward.app.security import CsrfGuard, SecurityHeaders
from thingward.app.web import account_pages, admin_pages, device_pages, onboarding_pages
from thingward.app.web.pending import PendingSignIns
from thingward.app.web.render import PageNotFound, PageRedirect, redirect, render

__all__ = ["install_web"]


def _wants_page(request: Request) -> bool:
    return not request.url.path.startswith(("/api/", "/ota/", "/metrics", "/static/"))


def install_web(app: FastAPI) -> None:
    """Add the pages, the static files, and the browser defences (headers, CSRF) to the API app."""
    from thingward.app.accounts_api import router as accounts_router
    from thingward.app.admin_api import router as admin_router
    from thingward.app.devices_api import router as devices_router

    app.state.pending_sign_ins = PendingSignIns()
    app.include_router(accounts_router)
    app.include_router(devices_router)
    app.include_router(admin_router)
    app.include_router(account_pages.router)
    app.include_router(onboarding_pages.router)  # before /devices/{name}: '/devices/add' is this page
    app.include_router(device_pages.router)
    app.include_router(admin_pages.router)
    app.mount("/static", StaticFiles(directory=str(files("thingward.app") / "static")), name="static")

    @app.exception_handler(PageRedirect)
    async def _redirect(_request: Request, exc: PageRedirect) -> Response:
        return redirect(exc.location)

    @app.exception_handler(PageNotFound)
    async def _page_not_found(request: Request, _exc: PageNotFound) -> Response:
        return render(request, "not_found.j2", status=404)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404 and _wants_page(request):
            return render(request, "not_found.j2", status=404)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    # Added last, so they run first: headers on every response, CSRF before any handler sees a body.
    app.add_middleware(CsrfGuard, accounts=lambda: app.state.accounts)
    app.add_middleware(SecurityHeaders)
