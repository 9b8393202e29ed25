"""Red team against what landed on 25 Nov: the web app and its REST API, the camera journey (uploads,
snapshots, live notifications), onboarding claims and the broker hooks.

The convention of tests/redteam/test_enrollment_attacks.py: every test is named after an attack and asserts
it is REFUSED. An attack that works and could not be fixed safely is `xfail(strict=True, reason="VULN: ...")`.
Real parts throughout: one `ThingwardServer` per module (the HTTPS app, the device listener with mutual
TLS, the embedded broker) over a real data dir, a real SMTP server (aiosmtpd) for sign-in codes, real
sessions made through the accounts service, a real camera device over MQTT, and the broker hooks through
the real FastAPI app (httpx's ASGI transport, which alone can pose as a caller from another address).
Every test makes people of its own (unique emails), so sharing the server keeps the file fast.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import secrets
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from lab.accounts import PASSWORD, Inbox, smtp_server
from lab.devices import enroll_device
from thingward.accounts import sharing
from thingward.accounts.mail import SmtpMailer
from thingward.accounts.service import Accounts, user_by_email
from thingward.app.session import BROWSER_COOKIE, SESSION_COOKIE
from thingward.device.camera import MotionCamera, SnapshotUploader, encode, still_scene
from thingward.device.client import client_tls_context
from thingward.device.enroll import CA_FILE, CERT_FILE, KEY_FILE
from thingward.platform import Platform, cli_actor, init_data_dir
from thingward.registry.audit_log import record_event
from thingward.registry.models import CameraSnapshot, Notification, Thing, User

WAIT = 10.0
HOOKS_SECRET = secrets.token_urlsafe(32)
CAMERA = "cam-a"  # the smiths' camera
OTHER_CAMERA = "cam-b"  # the joneses' camera
XSS = '<script>alert(1)</script><img src=x onerror="alert(2)">'
_people = itertools.count(1)


# -- the lab: one server for the module ---------------------------------------------------------------------


class Lab:
    """`thingward serve` in this process (ThingwardServer on a loop thread) with SMTP, fast argon2 and hooks."""

    def __init__(self, data_dir: Path, inbox: Inbox, mailer: SmtpMailer) -> None:
        from thingward.server import ThingwardServer

        init_data_dir(data_dir)
        self.platform = Platform.open(data_dir)
        self.inbox = inbox
        self.accounts = Accounts.for_platform(self.platform, mailer=mailer)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="redteam-web-loop", daemon=True)
        self.thread.start()
        self.server = ThingwardServer(self.platform, "127.0.0.1", 0, 0)
        self.endpoints = self.call(self.server.start(), timeout=30)
        self.devices = data_dir.parent / "devices"
        self.ca = self.platform.ca_certificate_path

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def api(self) -> str:
        return str(self.endpoints.api)

    @property
    def device_api(self) -> str:
        return str(self.endpoints.device_api)

    def enroll(self, name: str) -> Path:
        """`thingward device add NAME` and `device enroll`, through the same service functions."""
        directory = enroll_device(self.platform, name, self.devices / name)
        self.sync()
        return directory

    def sync(self) -> None:
        self.call(self.server.apply_changes(force=True))

    def close(self) -> None:
        try:
            self.call(self.server.stop(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()
            self.platform.close()

    # -- people --

    def person(self, household: str = "smiths", *, admin: bool = False, name: str = "", ua: str = "Firefox") -> Person:
        """A new person in `household`, signed in from a new browser (password, then the mailed code)."""
        email = f"p{next(_people)}-{secrets.token_hex(3)}@example.com"
        info, _ = self.accounts.create_user(cli_actor(), email, PASSWORD, name=name, admin=admin)
        with self.platform.db.session() as session:
            sharing.add_member(session, cli_actor(), household, user_by_email(session, email))
        secret, codes = None, []
        if admin:  # admins must have 2FA (require_2fa_admins): enrol it before the first sign-in
            secret = self.accounts.begin_totp(info.id).secret
            codes, _ = self.accounts.confirm_totp(info.id, pyotp.TOTP(secret).now())
        return Person(self, email, info.id, self.sign_in(email, secret, ua), secret, tuple(codes))

    def sign_in(self, email: str, totp_secret: str | None = None, ua: str = "Firefox") -> str:
        """A session token: password, then the mailed code or (with 2FA) a TOTP code of the next step."""
        before = len(self.inbox.to(email))
        first = self.accounts.login(email, PASSWORD, ip="127.0.0.1", user_agent=ua)
        if first.outcome == "need_email_code":
            assert wait_for(lambda: len(self.inbox.to(email)) > before), "no sign-in code mailed"
            code = self.inbox.code_in_last(email)
        else:
            assert first.outcome == "need_second_factor", first
            code = pyotp.TOTP(totp_secret or "").at(time.time() + 30)  # the enrolment spent this step's code
        done = self.accounts.login(email, PASSWORD, ip="127.0.0.1", user_agent=ua, second_factor=code)
        assert done.outcome == "ok" and done.session_token, done
        return done.session_token

    # -- HTTP --

    def http(
        self, method: str, path: str, person: Person | None = None, *, csrf: bool = True, **kw: Any
    ) -> httpx.Response:
        """One request from a fresh client (no cookie jar): `person`'s session cookie and CSRF token."""
        headers = dict(kw.pop("headers", {}))
        if person is not None:
            headers.setdefault("Cookie", f"{SESSION_COOKIE}={person.token}")
            if csrf:
                headers.setdefault("X-CSRF-Token", self.accounts.csrf_token(person.token))
        with httpx.Client(base_url=self.api, verify=ssl.create_default_context(cafile=str(self.ca)), timeout=WAIT) as c:
            return c.request(method, path, headers=headers, **kw)


@dataclass
class Person:
    lab: Lab
    email: str
    id: int
    token: str
    totp_secret: str | None = None
    recovery_codes: tuple[str, ...] = ()

    def alive(self) -> bool:
        return self.lab.accounts.authenticate_session(self.token) is not None


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with smtp_server() as (inbox, smtp), pytest.MonkeyPatch.context() as env:
        for key, value in {
            "THINGWARD_SMTP__HOST": smtp.host,
            "THINGWARD_SMTP__PORT": str(smtp.port),
            "THINGWARD_SMTP__SECURITY": "none",
            "THINGWARD_ACCOUNTS__ARGON2_TIME_COST": "1",
            "THINGWARD_ACCOUNTS__ARGON2_MEMORY_KIB": "8192",
            "THINGWARD_HOOKS__SECRET_ENV": "THINGWARD_REDTEAM_HOOKS_SECRET",
            "THINGWARD_REDTEAM_HOOKS_SECRET": HOOKS_SECRET,
        }.items():
            env.setenv(key, value)
        started = Lab(tmp_path_factory.mktemp("redteam-web") / "data", inbox, SmtpMailer(smtp))
        try:
            started.enroll(CAMERA)
            started.enroll(OTHER_CAMERA)
            with started.platform.db.session() as session:
                for household in ("smiths", "joneses"):
                    sharing.add_user_group(session, cli_actor(), household)
                sharing.share_thing(session, cli_actor(), CAMERA, "smiths", "owner")
                sharing.share_thing(session, cli_actor(), OTHER_CAMERA, "joneses", "owner")
            yield started
        finally:
            started.close()


@pytest.fixture(scope="module")
def snapshot_id(lab: Lab) -> int:
    """A snapshot of the smiths' camera, uploaded by the camera itself."""
    uploader = SnapshotUploader(lab.device_api, lab.devices / CAMERA)
    try:
        return int(uploader.upload(encode(still_scene(seed=3)))["snapshot_id"])
    finally:
        uploader.close()


def snapshots(lab: Lab) -> int:
    with lab.platform.db.read() as session:
        return int(session.execute(select(func.count()).select_from(CameraSnapshot)).scalar_one())


# == the web app and the REST API =============================================================================


def test_another_households_device_snapshot_and_notifications_are_hidden(lab: Lab, snapshot_id: int) -> None:
    mallory, alice = lab.person("joneses"), lab.person("smiths")
    assert lab.http("GET", f"/api/v1/snapshots/{snapshot_id}", alice).status_code == 200  # the control
    for path in (
        f"/api/v1/devices/{CAMERA}",
        f"/api/v1/snapshots/{snapshot_id}",
        f"/api/v1/snapshots/{snapshot_id}/annotated",
        f"/devices/{CAMERA}",
    ):
        theirs, missing = lab.http("GET", path, mallory), lab.http("GET", path.replace(CAMERA, "cam-zz"), mallory)
        assert theirs.status_code == 404, path
        if CAMERA in path:
            assert (missing.status_code, missing.text) == (theirs.status_code, theirs.text.replace(CAMERA, "cam-zz"))
    listed = lab.http("GET", "/api/v1/devices", mallory).json()
    assert CAMERA not in json.dumps(listed)
    body = {"preferences": [{"thing": CAMERA, "event_type": "motion", "enabled": False}]}
    assert lab.http("PUT", "/api/v1/notifications/preferences", mallory, json=body).status_code == 404


def test_ending_another_persons_session_or_revoking_their_token_is_refused(lab: Lab) -> None:
    alice, mallory = lab.person("smiths"), lab.person("joneses")
    made = lab.http("POST", "/api/v1/account/tokens", alice, json={"name": "t", "scopes": ["things:read"], "days": 1})
    assert made.status_code == 201, made.text
    token, token_id = made.json()["token"], made.json()["info"]["id"]
    session_ids = [s["id"] for s in lab.http("GET", "/api/v1/account/sessions", alice).json()]
    for session_id in session_ids:
        assert lab.http("DELETE", f"/api/v1/account/sessions/{session_id}", mallory).status_code == 404
        mine = {"csrf_token": lab.accounts.csrf_token(mallory.token)}
        page = lab.http("POST", f"/account/sessions/{session_id}/end", mallory, csrf=False, data=mine)
        assert page.status_code in {303, 404}, page.status_code  # "not found" or back to her own list
    assert lab.http("DELETE", f"/api/v1/account/tokens/{token_id}", mallory).status_code == 404
    csrf = lab.accounts.csrf_token(mallory.token)
    lab.http("POST", f"/account/tokens/{token_id}/revoke", mallory, csrf=False, data={"csrf_token": csrf})
    assert alice.alive()
    bearer = {"Authorization": f"Bearer {token}"}
    assert lab.http("GET", "/api/v1/devices", headers=bearer).status_code == 200


@pytest.mark.parametrize(
    ("headers", "how"),
    [
        ({"Content-Type": "text/plain"}, "a text/plain body (a cross-site form can send one)"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, "a multipart form with the token inside"),
        ({"Content-Type": "application/x-www-form-urlencoded", "Origin": "null"}, "Origin: null (sandboxed frame)"),
        ({"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.example"}, "another origin"),
        ({"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "same-site"}, "a sibling host"),
        ({"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"}, "cross-site"),
    ],
)
def test_csrf_by_content_type_origin_or_fetch_site_is_refused(lab: Lab, headers: dict[str, str], how: str) -> None:
    alice = lab.person()
    csrf = lab.accounts.csrf_token(alice.token)
    if headers["Content-Type"].startswith("multipart"):
        body = f'--x\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{csrf}\r\n--x--\r\n'
    elif headers["Content-Type"] == "text/plain":
        body = f"csrf_token={csrf}"
    else:  # the right token in the form: only where the request comes from is wrong
        body = f"csrf_token={csrf}&name=csrf&scope=things:read"
    made = lab.http("POST", "/account/tokens", alice, csrf=False, content=body, headers=headers)
    assert made.status_code == 403, how
    assert lab.http("POST", "/logout", alice, csrf=False, content=body, headers=headers).status_code == 403, how
    assert alice.alive(), how
    assert lab.http("GET", "/api/v1/account/tokens", alice).json() == [], how


def test_login_csrf_signing_the_victim_into_the_attackers_account_is_refused(lab: Lab) -> None:
    """No session yet, so no token to check: where the post comes from is all that stops a cross-site form
    from signing the victim's browser into mallory's account (to read what the victim then adds)."""
    mallory = lab.person("joneses")
    form = {"email": mallory.email, "password": PASSWORD}
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}, {"Origin": "null"}):
        assert lab.http("POST", "/login", data=form, headers=headers).status_code == 403, headers
        body = {"email": mallory.email, "password": PASSWORD}
        assert lab.http("POST", "/api/v1/auth/login", json=body, headers=headers).status_code == 403, headers


def test_csrf_token_in_the_query_string_or_a_state_change_by_get_is_refused(lab: Lab) -> None:
    alice = lab.person()
    csrf = lab.accounts.csrf_token(alice.token)
    made = lab.http("POST", f"/account/tokens?csrf_token={csrf}", alice, csrf=False, data={"name": "q"})
    assert made.status_code == 403
    for path in ("/logout", "/api/v1/auth/logout", "/account/2fa/disable"):
        assert lab.http("GET", path, alice).status_code in {404, 405}, path
    # A method the guard does not list (lowercase, or unknown) reaches no state-changing route either.
    for method in ("post", "Post", "PROPFIND"):
        answer = lab.http(method, "/api/v1/account/tokens", alice, csrf=False,
                          json={"name": "m", "scopes": ["things:read"], "days": 1})  # fmt: skip
        assert answer.status_code in {400, 403, 404, 405}, (method, answer.status_code)
    assert lab.http("GET", "/api/v1/account/tokens", alice).json() == []
    assert alice.alive()


def test_csrf_with_another_persons_token_is_refused(lab: Lab) -> None:
    """A token is bound to its session: the attacker's own valid CSRF token does not fit the victim's cookie."""
    alice, mallory = lab.person(), lab.person("joneses")
    for body in ({"json": {"name": "x", "scopes": ["things:read"], "days": 1}}, {"data": {"name": "x"}}):
        # JSON or a form, with the cookie and no token at all: refused too.
        assert lab.http("POST", "/api/v1/account/tokens", alice, csrf=False, **body).status_code == 403
    headers = {"X-CSRF-Token": lab.accounts.csrf_token(mallory.token)}
    made = lab.http("POST", "/api/v1/account/tokens", alice, headers=headers,
                    json={"name": "x", "scopes": ["things:read"], "days": 1})  # fmt: skip
    assert made.status_code == 403
    assert lab.http("POST", "/api/v1/auth/logout", alice, headers=headers).status_code == 403
    assert alice.alive()


@pytest.mark.parametrize(
    "cookie",
    [
        "{victim}; __Host-thingward_session=planted",  # cookie tossing: a second cookie of the same name
        "__Host-thingward_session=planted; {victim}",
        'a="b; {victim}; c=d',  # an unclosed quote a sibling host can plant
        "{victim}; __Host-thingward_session",  # a name without a value
        "__host-thingward_session=planted; {victim}",  # another case of the name
    ],
)
def test_csrf_by_cookie_tossing_or_malformed_cookies_is_refused(lab: Lab, cookie: str) -> None:
    alice = lab.person()
    victim = cookie.format(victim=f"{SESSION_COOKIE}={alice.token}")
    made = lab.http("POST", "/api/v1/account/tokens", headers={"Cookie": victim},
                    json={"name": "toss", "scopes": ["things:read"], "days": 1})  # fmt: skip
    assert made.status_code in {401, 403}, made.text
    assert lab.http("POST", "/api/v1/auth/logout", headers={"Cookie": victim}).status_code in {204, 401, 403}
    assert lab.http("GET", "/api/v1/account/tokens", alice).json() == []
    assert alice.alive()


def test_csrf_by_a_second_cookie_header_the_guard_and_the_handler_read_differently_is_refused(lab: Lab) -> None:
    """Two Cookie header lines: Starlette's request reads the first, so the guard must judge that one too."""
    alice = lab.person()
    sent = [("Cookie", f"{SESSION_COOKIE}={alice.token}"), ("Cookie", "other=1")]
    with httpx.Client(base_url=lab.api, verify=ssl.create_default_context(cafile=str(lab.ca)), timeout=WAIT) as c:
        request = c.build_request("POST", "/api/v1/account/tokens",
                                  json={"name": "two", "scopes": ["things:read"], "days": 1})  # fmt: skip
        request.headers = httpx.Headers([*request.headers.multi_items(), *sent])
        made = c.send(request)
    assert made.status_code in {401, 403}, made.text
    assert lab.http("GET", "/api/v1/account/tokens", alice).json() == []


def test_api_token_scope_escalation_is_refused(lab: Lab) -> None:
    alice = lab.person()
    made = lab.http("POST", "/api/v1/account/tokens", alice, json={"name": "r", "scopes": ["things:read"], "days": 1})
    bearer = {"Authorization": f"Bearer {made.json()['token']}"}
    # A read token cannot mint a token, end sessions, claim devices, read the admin API or the account.
    mint = lab.http("POST", "/api/v1/account/tokens", headers=bearer,
                    json={"name": "more", "scopes": ["admin", "things:control"], "days": 1})  # fmt: skip
    assert mint.status_code == 403
    assert lab.http("GET", "/api/v1/account/sessions", headers=bearer).status_code == 403
    assert lab.http("POST", "/api/v1/claims", headers=bearer, json={}).status_code == 403
    assert lab.http("GET", "/api/v1/admin/users", headers=bearer).status_code == 403
    assert lab.http("GET", "/api/v1/account", headers=bearer).status_code == 403
    # ... nor reach the person-only routes that take no token at all.
    assert lab.http("GET", "/api/v1/notifications", headers=bearer).status_code == 401
    # A token beside a session cookie is still judged as a token (the cookie does not lend its scopes).
    both = {**bearer, "Cookie": f"{SESSION_COOKIE}={alice.token}", "X-CSRF-Token": lab.accounts.csrf_token(alice.token)}
    assert lab.http("POST", "/api/v1/account/tokens", headers=both,
                    json={"name": "m", "scopes": ["things:read"], "days": 1}).status_code == 403  # fmt: skip
    assert lab.http("POST", "/api/v1/claims", headers=both, json={}).status_code == 403
    # A non-admin cannot make an admin token, and an empty or foreign bearer is no credential.
    admin = lab.http("POST", "/api/v1/account/tokens", alice, json={"name": "a", "scopes": ["admin"], "days": 1})
    assert admin.status_code == 400
    for value in ("Bearer", "Bearer twk_forged", f"Bearer {alice.token}"):
        assert lab.http("GET", "/api/v1/devices", headers={"Authorization": value}).status_code == 401, value


def test_an_admin_token_outliving_its_2fa_is_refused(lab: Lab) -> None:
    """An admin turns 2FA off (admins must have it): their session is sent to set it up again, and the
    admin-scope token they made while 2FA was on must wait too, or the token walks around the requirement."""
    boss = lab.person("smiths", admin=True)
    made = lab.http("POST", "/api/v1/account/tokens", boss, json={"name": "ops", "scopes": ["admin"], "days": 1})
    assert made.status_code == 201, made.text
    bearer = {"Authorization": f"Bearer {made.json()['token']}"}
    assert lab.http("GET", "/api/v1/admin/users", headers=bearer).status_code == 200
    code = boss.recovery_codes[0]  # the sign-in spent the current TOTP step
    off = lab.http("POST", "/api/v1/account/2fa/disable", boss, json={"password": PASSWORD, "code": code})
    assert off.status_code == 200, off.text
    assert lab.http("GET", "/api/v1/account", boss).json()["requirements"] == ["enroll_2fa"]
    assert lab.http("GET", "/api/v1/admin/users", boss).status_code == 403
    assert lab.http("GET", "/api/v1/admin/users", headers=bearer).status_code == 403


def test_pending_requirements_cannot_be_skipped_through_the_api(lab: Lab) -> None:
    pending = lab.person()
    lab.accounts.admin_reset_password(cli_actor(), pending.email)  # must change it at the next sign-in
    first = lab.accounts.login(pending.email, PASSWORD, ip="127.0.0.1", user_agent="Firefox")
    assert first.outcome == "refused"  # the old password is gone
    with lab.platform.db.session() as session:
        user = session.get(User, pending.id)
        assert user is not None
        user.password_hash = lab.accounts.hasher.hash(PASSWORD)  # as if the operator's password was typed
    pending.token = lab.sign_in(pending.email)
    account = lab.http("GET", "/api/v1/account", pending)
    assert account.json()["requirements"] == ["change_password"]
    for method, path, body in (
        ("GET", "/api/v1/devices", None),
        ("GET", "/api/v1/notifications", None),
        ("GET", "/api/v1/notifications/stream", None),
        ("GET", "/api/v1/account/sessions", None),
        ("POST", "/api/v1/account/tokens", {"name": "x", "scopes": ["things:read"], "days": 1}),
        ("POST", "/api/v1/claims", {}),
    ):
        answer = lab.http(method, path, pending, json=body)
        assert answer.status_code == 403, (path, answer.status_code)
    for page in ("/devices", "/account/tokens", "/notifications", f"/devices/{CAMERA}"):
        answer = lab.http("GET", page, pending)
        assert answer.status_code in {303, 403} and '/devices"' not in answer.text, page
        if answer.status_code == 303:
            assert answer.headers["location"] == "/account/setup", page


def test_session_fixation_by_a_planted_cookie_is_refused(lab: Lab) -> None:
    """A session id planted before sign-in is never the victim's: a made-up one is replaced by a new id, and
    a live one (the attacker's own session, to make the victim act in it) blocks the sign-in post outright."""
    alice, mallory = lab.person(), lab.person("joneses")
    context = ssl.create_default_context(cafile=str(lab.ca))
    planted = "fixated-by-mallory-" + secrets.token_urlsafe(16)
    cookie = {"Cookie": f"{SESSION_COOKIE}={planted}"}
    with httpx.Client(base_url=lab.api, verify=context, timeout=WAIT) as c:
        before = len(lab.inbox.to(alice.email))
        step = c.post("/api/v1/auth/login", json={"email": alice.email, "password": PASSWORD}, headers=cookie)
        assert step.json()["outcome"] == "need_email_code", step.text
        assert wait_for(lambda: len(lab.inbox.to(alice.email)) > before)
        code = lab.inbox.code_in_last(alice.email)
        done = c.post("/api/v1/auth/login", json={"email": alice.email, "password": PASSWORD, "code": code},
                      headers=cookie)  # fmt: skip
        assert done.json()["outcome"] == "ok", done.text
        issued = done.cookies.get(SESSION_COOKIE)
    assert issued and issued != planted and lab.accounts.authenticate_session(planted) is None
    found = lab.accounts.authenticate_session(issued)
    assert found is not None and found.user.id == alice.id
    # The attacker's own live session planted in the victim's browser: a sign-in (page or API) without that
    # session's CSRF token is refused, so the victim never types her password into mallory's session.
    live = {"Cookie": f"{SESSION_COOKIE}={mallory.token}"}
    assert lab.http("POST", "/api/v1/auth/login", headers=live,
                    json={"email": alice.email, "password": PASSWORD}).status_code == 403  # fmt: skip
    assert (
        lab.http("POST", "/login", headers=live, data={"email": alice.email, "password": PASSWORD}).status_code == 403
    )
    found = lab.accounts.authenticate_session(mallory.token)
    assert found is not None and found.user.id == mallory.id


def test_another_persons_verified_browser_cookie_does_not_skip_the_mailed_code(lab: Lab) -> None:
    """Mallory's own `__Host-thingward_browser` cookie (her browser is verified) vouches for her account only:
    with alice's stolen password it still takes the code mailed to alice."""
    alice, mallory = lab.person(), lab.person("joneses")
    first = lab.accounts.login(mallory.email, PASSWORD, ip="127.0.0.1", user_agent="Firefox")
    code = lab.inbox.code_in_last(mallory.email) if first.outcome == "need_email_code" else None
    done = lab.accounts.login(mallory.email, PASSWORD, ip="127.0.0.1", user_agent="Firefox", second_factor=code)
    assert done.browser_token
    own = {"Cookie": f"{BROWSER_COOKIE}={done.browser_token}"}
    again = lab.http("POST", "/api/v1/auth/login", headers=own, json={"email": mallory.email, "password": PASSWORD})
    assert again.json()["outcome"] == "ok"  # the control: her browser is known to her account
    stolen = lab.http("POST", "/api/v1/auth/login", headers=own, json={"email": alice.email, "password": PASSWORD})
    assert stolen.json()["outcome"] == "need_email_code" and SESSION_COOKIE not in stolen.cookies


def test_a_disabled_persons_session_and_token_stop_at_once(lab: Lab) -> None:
    alice = lab.person()
    made = lab.http("POST", "/api/v1/account/tokens", alice, json={"name": "d", "scopes": ["things:read"], "days": 1})
    bearer = {"Authorization": f"Bearer {made.json()['token']}"}
    lab.accounts.set_disabled(cli_actor(), alice.email, True)
    assert lab.http("GET", "/api/v1/devices", headers=bearer).status_code == 401
    assert lab.http("GET", "/api/v1/devices", alice).status_code == 401
    assert lab.http("GET", "/api/v1/notifications", alice).status_code == 401
    assert lab.http("POST", "/api/v1/claims", headers=bearer, json={}).status_code == 401


def test_open_redirect_after_sign_in_or_through_slashes_is_refused(lab: Lab) -> None:
    alice = lab.person()
    form = {"email": alice.email, "password": PASSWORD}
    for query in ("?next=https://evil.example/", "?next=//evil.example", "?return_to=https:%2F%2Fevil.example"):
        answer = lab.http("POST", f"/login{query}", data=form)
        location = answer.headers.get("location", "")
        assert not re.match(r"^(https?:)?//", location) and "evil" not in location, (query, location)
    for path in ("//evil.example/", "/\\evil.example/", "/%2F%2Fevil.example/", "/devices/"):
        answer = lab.http("GET", path, alice)
        location = answer.headers.get("location", "")
        assert "evil" not in location and not location.startswith("//"), (path, location)


def test_stored_xss_through_names_reports_and_audit_details_is_escaped(lab: Lab) -> None:
    boss = lab.person("smiths", admin=True, name=XSS, ua=XSS)
    victim = lab.person("smiths", name=XSS, ua=XSS)
    with lab.platform.db.session() as session:
        record_event(session, cli_actor(), "redteam.note", f"user:{XSS}", {"detail": XSS})
    # The camera reports a hostile state (its model and firmware are the device's own words), then a good one
    # that shows it was read: the hostile one is refused at the door, the good one is what the pages show.
    camera = MotionCamera(CAMERA, lab.devices / CAMERA, "127.0.0.1", lab.server.broker.port, lab.device_api, seed=1)
    try:
        camera.device.connect()
        for model in (XSS, "redteam-model"):
            state = {"firmware": {"model": model, "version": model}, "ports": {"tcp": [], "udp": []},
                     "onboarding": {"state": "provisioned", "since": None}}  # fmt: skip
            camera.device.publish(f"things/{CAMERA}/state", json.dumps(state), qos=1).wait_for_publish(5)
        assert wait_for(lambda: "redteam-model" in lab.http("GET", f"/api/v1/devices/{CAMERA}", victim).text)
        assert "alert" not in lab.http("GET", f"/api/v1/devices/{CAMERA}", victim).text
    finally:
        camera.close()
    pages = [
        (victim, "/account"),
        (victim, "/account/sessions"),
        (victim, "/devices"),
        (victim, f"/devices/{CAMERA}"),
        (boss, "/admin/users"),
        (boss, "/admin/audit"),
        (boss, "/admin/user-groups"),
        (victim, f"/nothing-here/{XSS}"),
    ]
    for who, path in pages:
        page = lab.http("GET", path, who)
        assert page.status_code in {200, 404}, (path, page.status_code)
        assert "<script>alert(1)" not in page.text and "<img src=x" not in page.text, path
    # The page that lists users does show the hostile name, escaped: the payload reached it and was defused.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in lab.http("GET", "/admin/users", boss).text


def test_admin_pages_and_forms_are_unreachable_for_a_non_admin(lab: Lab) -> None:
    mallory = lab.person("joneses")
    missing = lab.http("GET", "/admin/no-such-page", mallory)
    for path in ("/admin", "/admin/things", "/admin/users", "/admin/audit", "/admin/user-groups", "/admin/policies"):
        page = lab.http("GET", path, mallory)
        assert (page.status_code, page.text) == (missing.status_code, missing.text), path
    csrf = lab.accounts.csrf_token(mallory.token)
    lab.http("POST", "/admin/user-groups/smiths/members", mallory, csrf=False,
             data={"csrf_token": csrf, "email": mallory.email})  # fmt: skip
    lab.http("POST", "/admin/user-groups/joneses/things", mallory, csrf=False,
             data={"csrf_token": csrf, "thing": CAMERA, "role": "owner"})  # fmt: skip
    assert lab.http("GET", f"/api/v1/devices/{CAMERA}", mallory).status_code == 404
    for path in ("/api/v1/admin/users", "/api/v1/admin/audit"):
        assert lab.http("GET", path, mallory).status_code == 403, path


def test_every_page_carries_the_apps_full_content_security_policy(lab: Lab) -> None:
    """A route that sets its own policy must not set a weaker one: without `form-action 'self'`, markup
    injected into the notifications page could post its forms (with the page's CSRF token) anywhere."""
    from thingward.app.security import CONTENT_SECURITY_POLICY

    alice = lab.person()
    for path in ("/notifications", "/devices", "/account", "/login", "/nothing-here"):
        answer = lab.http("GET", path, alice)
        assert answer.headers.get_list("content-security-policy") == [CONTENT_SECURITY_POLICY], path


def test_pages_and_answers_with_secrets_are_not_cached(lab: Lab) -> None:
    alice = lab.person()
    csrf = lab.accounts.csrf_token(alice.token)
    answers = {
        "token page": lab.http("POST", "/account/tokens", alice, csrf=False,
                               data={"csrf_token": csrf, "name": "c", "scope": "things:read", "days": "1"}),
        "token api": lab.http("POST", "/api/v1/account/tokens", alice,
                              json={"name": "c2", "scopes": ["things:read"], "days": 1}),
        "2fa page": lab.http("POST", "/account/2fa/begin", alice, csrf=False, data={"csrf_token": csrf}),
    }  # fmt: skip
    begun = lab.http("POST", "/api/v1/account/2fa/begin", alice)
    answers["2fa api"] = begun
    code = pyotp.TOTP(begun.json()["secret"]).now()
    answers["recovery codes api"] = lab.http("POST", "/api/v1/account/2fa/confirm", alice, json={"code": code})
    assert "recovery_codes" in answers["recovery codes api"].json()
    for what, answer in answers.items():
        assert answer.status_code < 400, (what, answer.status_code, answer.text[:200])
        assert "no-store" in answer.headers.get("cache-control", ""), what


# == the camera journey =========================================================================================


def _device_client(lab: Lab, name: str | None) -> httpx.Client:
    if name is None:
        context = ssl.create_default_context(cafile=str(lab.ca))
    else:
        directory = lab.devices / name
        context = client_tls_context(directory / CA_FILE, directory / CERT_FILE, directory / KEY_FILE)
    return httpx.Client(verify=context, timeout=WAIT)


def test_an_upload_without_a_device_certificate_is_refused(lab: Lab) -> None:
    before = snapshots(lab)
    with _device_client(lab, None) as anonymous:
        try:
            answer = anonymous.post(f"{lab.device_api}/device/v1/uploads", json={})
            refused = answer.status_code in {401, 403}
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            refused = True  # the TLS handshake itself wants a client certificate
    assert refused
    # ... nor on the people's HTTPS port, with a person's session.
    alice = lab.person()
    assert lab.http("POST", "/device/v1/uploads", alice, json={}).status_code in {404, 405}
    assert snapshots(lab) == before


def test_an_upload_to_another_cameras_url_is_refused(lab: Lab) -> None:
    before = snapshots(lab)
    with _device_client(lab, CAMERA) as victim, _device_client(lab, OTHER_CAMERA) as attacker:
        grant = victim.post(f"{lab.device_api}/device/v1/uploads", json={}).json()
        image = encode(still_scene(seed=5))
        stolen = attacker.put(grant["url"], content=image, headers={"Content-Type": "image/jpeg"})
        assert stolen.status_code == 403, stolen.text
        # The token of one grant does not open another (of the attacker's own, either).
        own = attacker.post(f"{lab.device_api}/device/v1/uploads", json={}).json()
        token = grant["url"].split("token=")[1]
        crossed = attacker.put(f"{lab.device_api}/device/v1/uploads/{own['upload_id']}?token={token}", content=image,
                               headers={"Content-Type": "image/jpeg"})  # fmt: skip
        assert crossed.status_code == 404
        assert snapshots(lab) == before
        # The victim's URL still works, once.
        assert victim.put(grant["url"], content=image, headers={"Content-Type": "image/jpeg"}).status_code == 201
        assert victim.put(grant["url"], content=image, headers={"Content-Type": "image/jpeg"}).status_code == 409


@pytest.mark.parametrize(
    "upload_id",
    ["..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fcamera", "..%5C..%5Cx" + "A" * 16, "A" * 65, "%00" + "A" * 20],
)
def test_path_traversal_in_upload_and_snapshot_ids_is_refused(lab: Lab, upload_id: str) -> None:
    before = snapshots(lab)
    with _device_client(lab, CAMERA) as camera:
        answer = camera.put(f"{lab.device_api}/device/v1/uploads/{upload_id}?token=x",
                            content=encode(still_scene(seed=6)), headers={"Content-Type": "image/jpeg"})  # fmt: skip
    assert answer.status_code in {400, 404}, answer.text
    assert snapshots(lab) == before
    alice = lab.person()
    for path in (f"/api/v1/snapshots/{upload_id}", "/api/v1/snapshots/0", "/api/v1/snapshots/-1",
                 f"/api/v1/snapshots/{2**63}", "/api/v1/snapshots/1%2F..%2F..%2Fconfig.toml"):  # fmt: skip
        answer = lab.http("GET", path, alice)
        assert answer.status_code in {400, 404, 422}, path
        assert not answer.headers.get("content-type", "").startswith("image/"), path
        assert b"BEGIN" not in answer.content and b"[smtp]" not in answer.content, path


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming `width` x `height` with a few bytes of data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 4096, 9))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("content_type", "body", "why"),
    [
        ("image/png", _png_bomb(60000, 60000), "a decompression bomb"),
        ("image/png", _png_bomb(9000, 10), "one side over the limit"),
        ("image/jpeg", b"\xff\xd8\xff\xe0" + b"A" * 2000, "a corrupt JPEG"),
        (
            "image/jpeg",
            b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
            "an SVG with script",
        ),
        ("image/jpeg", None, "a PNG sent as a JPEG"),
    ],
)
def test_hostile_images_are_refused_and_nothing_is_stored(
    lab: Lab, content_type: str, body: bytes | None, why: str
) -> None:
    if body is None:
        body = encode(still_scene(seed=4), "image/png")
    before = snapshots(lab)
    with _device_client(lab, CAMERA) as camera:
        grant = camera.post(f"{lab.device_api}/device/v1/uploads", json={"content_type": content_type}).json()
        answer = camera.put(grant["url"], content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 400, (why, answer.status_code, answer.text)
    assert snapshots(lab) == before, why


def test_oversized_and_lengthless_uploads_are_refused_before_the_body(lab: Lab) -> None:
    before = snapshots(lab)
    with _device_client(lab, CAMERA) as camera:
        grant = camera.post(f"{lab.device_api}/device/v1/uploads", json={"max_bytes": 1000}).json()
        too_big = camera.put(grant["url"], content=b"\xff" * 5000, headers={"Content-Type": "image/jpeg"})
        assert too_big.status_code == 413
        chunked = camera.put(grant["url"], content=iter([b"\xff\xd8", b"\xff" * 3000]),
                             headers={"Content-Type": "image/jpeg"})  # fmt: skip
        assert chunked.status_code == 411
        huge = camera.post(f"{lab.device_api}/device/v1/uploads", json={"max_bytes": 2**40})
        assert huge.status_code == 400
        wrong_type = camera.put(grant["url"], content=b"x", headers={"Content-Type": "text/html"})
        assert wrong_type.status_code == 415
        padded = b'{"content_type": "image/jpeg"' + b" " * 5000 + b"}"
        big_grant = camera.post(f"{lab.device_api}/device/v1/uploads", content=padded,
                                headers={"Content-Type": "application/json"})  # fmt: skip
        assert big_grant.status_code == 413
    assert snapshots(lab) == before


def test_a_revoked_or_disabled_camera_cannot_upload(lab: Lab) -> None:
    lab.enroll("cam-rev")
    lab.enroll("cam-off")
    with _device_client(lab, "cam-off") as camera:  # a grant taken while it was enabled ...
        grant = camera.post(f"{lab.device_api}/device/v1/uploads", json={}).json()
    lab.platform.revoke(cli_actor(), "cam-rev", "key compromise")
    lab.platform.set_disabled(cli_actor(), "cam-off", True)
    lab.sync()
    before = snapshots(lab)
    for name in ("cam-rev", "cam-off"):
        with _device_client(lab, name) as camera:
            try:
                asked = camera.post(f"{lab.device_api}/device/v1/uploads", json={}).status_code
                used = camera.put(grant["url"], content=encode(still_scene(seed=2)),
                                  headers={"Content-Type": "image/jpeg"}).status_code  # fmt: skip
                refused = asked == 403 and used == 403
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                refused = True  # the CRL stopped the handshake
        assert refused, name
    assert snapshots(lab) == before


class Stream:
    """A page's EventSource in a thread: reads the notification stream with a session cookie."""

    def __init__(self, lab: Lab, token: str) -> None:
        self.lab, self.token = lab, token
        self.status: int | None = None
        self.events: list[dict[str, Any]] = []
        self.opened, self.done = threading.Event(), threading.Event()
        threading.Thread(target=self._run, name="redteam-sse", daemon=True).start()
        assert self.opened.wait(WAIT), "the stream did not answer"

    def _run(self) -> None:
        try:
            context = ssl.create_default_context(cafile=str(self.lab.ca))
            headers = {"Cookie": f"{SESSION_COOKIE}={self.token}"}
            with (
                httpx.Client(verify=context, timeout=httpx.Timeout(WAIT, read=40)) as client,
                client.stream("GET", f"{self.lab.api}/api/v1/notifications/stream", headers=headers) as response,
            ):
                self.status = response.status_code
                self.opened.set()
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        self.events.append(json.loads(line[5:]))
        except httpx.HTTPError:
            pass  # the server went away: the test looks at what arrived
        finally:
            self.opened.set()
            self.done.set()


def _notifications(lab: Lab, user_id: int) -> int:
    with lab.platform.db.read() as session:
        return int(session.execute(select(func.count()).where(Notification.user_id == user_id)).scalar_one())


@pytest.fixture
def motion_camera(lab: Lab) -> Iterator[MotionCamera]:
    camera = MotionCamera(CAMERA, lab.devices / CAMERA, "127.0.0.1", lab.server.broker.port, lab.device_api, seed=9)
    camera.start()
    try:
        yield camera
    finally:
        camera.close()


@pytest.mark.parametrize(
    "last_event_id", [b"9" * 40, b"\xb2", b"-1", b"1e9"], ids=["huge", "superscript-two", "negative", "float"]
)
def test_a_hostile_last_event_id_is_ignored_not_a_server_error(lab: Lab, last_event_id: bytes) -> None:
    """`Last-Event-ID` is whatever the client sends: a number past the database's integers, or a Latin-1
    superscript digit (`isdigit()` says yes, `int()` says no), must not make the stream a 500."""
    alice = lab.person()
    context = ssl.create_default_context(cafile=str(lab.ca))
    headers = [(b"Cookie", f"{SESSION_COOKIE}={alice.token}".encode()), (b"Last-Event-ID", last_event_id)]
    with (
        httpx.Client(verify=context, timeout=WAIT) as client,
        client.stream("GET", f"{lab.api}/api/v1/notifications/stream", headers=headers) as response,
    ):
        assert response.status_code == 200
        assert next(response.iter_lines()).startswith("retry:")


def test_motion_notifications_do_not_leak_to_another_household(lab: Lab, motion_camera: MotionCamera) -> None:
    alice, mallory = lab.person(), lab.person("joneses")
    mine, theirs = Stream(lab, alice.token), Stream(lab, mallory.token)
    assert (mine.status, theirs.status) == (200, 200)
    stored = motion_camera.motion((320, 420))
    assert wait_for(lambda: len(mine.events) >= 1), "the owner's page got the notification"
    assert _notifications(lab, mallory.id) == 0 and theirs.events == []
    listed = lab.http("GET", "/api/v1/notifications", mallory).json()["notifications"]
    assert listed == []
    # Mallory cannot fetch the snapshot the notification names, nor its marked copy.
    snap = mine.events[0]["snapshot_id"]
    assert snap == stored["snapshot_id"]
    assert lab.http("GET", f"/api/v1/snapshots/{snap}/annotated", mallory).status_code == 404


def test_a_person_who_left_the_household_loses_its_camera_snapshots_and_notifications(
    lab: Lab, motion_camera: MotionCamera
) -> None:
    """Leaving the household (an admin took bob out) takes the camera away at once: the device, the
    snapshots he was notified of, and the next motion, on an open page too."""
    bob, alice = lab.person(), lab.person()  # alice stays: her notifications show the worker is done
    page = Stream(lab, bob.token)
    first = motion_camera.motion((250, 420))
    assert wait_for(lambda: len(page.events) >= 1)
    assert lab.http("GET", f"/api/v1/snapshots/{first['snapshot_id']}", bob).status_code == 200  # the control
    with lab.platform.db.session() as session:
        sharing.remove_member(session, cli_actor(), "smiths", user_by_email(session, bob.email))
    for path in (f"/api/v1/devices/{CAMERA}", f"/api/v1/snapshots/{first['snapshot_id']}",
                 f"/api/v1/snapshots/{first['snapshot_id']}/annotated", f"/devices/{CAMERA}"):  # fmt: skip
        assert lab.http("GET", path, bob).status_code == 404, path
    body = {"preferences": [{"thing": CAMERA, "event_type": "motion", "enabled": True}]}
    assert lab.http("PUT", "/api/v1/notifications/preferences", bob, json=body).status_code == 404
    motion_camera.clear()
    motion_camera.motion((150, 430))
    assert wait_for(lambda: _notifications(lab, alice.id) == 2), "the members left were notified"
    time.sleep(0.3)  # what the hub hands on reaches an open stream within this (it did for the first event)
    assert _notifications(lab, bob.id) == 1 and len(page.events) == 1


def test_the_notification_stream_after_sign_out_delivers_nothing(lab: Lab, motion_camera: MotionCamera) -> None:
    """Sign out, then motion: the page left open must not get the next notification (nor its snapshot id)."""
    alice = lab.person()
    page = Stream(lab, alice.token)
    assert page.status == 200
    assert lab.http("POST", "/api/v1/auth/logout", alice).status_code == 204
    assert not alice.alive()
    motion_camera.motion((300, 430))
    assert wait_for(lambda: _notifications(lab, alice.id) == 1), "the notification was made (she is a member)"
    page.done.wait(5)
    assert page.events == [], "a notification reached a page whose session had ended"
    assert page.done.is_set(), "the stream ended when the next event found its session gone"
    # A stream opened with the dead cookie is refused outright.
    assert Stream(lab, alice.token).status == 401


# == onboarding claims ==========================================================================================


def _csr(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _claim(lab: Lab, person: Person, device_id: str | None) -> dict[str, Any]:
    made = lab.http("POST", "/api/v1/claims", person, json={"device_id": device_id})
    assert made.status_code == 201, made.text
    return dict(made.json())


def _enroll(lab: Lab, token: str, device_id: str, cn: str | None = None) -> httpx.Response:
    body = {"claim_token": token, "device_id": device_id, "csr": _csr(cn or device_id)}
    return lab.http("POST", "/api/v1/claims/enroll", json=body)


def _owners(lab: Lab, thing: str) -> set[str]:
    with lab.platform.db.read() as session:
        row = session.execute(select(Thing).where(Thing.name == thing)).scalar_one()
        return {group for group, _role in sharing.shares_of(session, row)}


def test_claim_token_reuse_cross_device_and_cross_person_is_refused(lab: Lab) -> None:
    alice, mallory = lab.person(), lab.person("joneses")
    device = f"cam-c{secrets.token_hex(3)}"
    claim = _claim(lab, alice, device)
    # Another label's device cannot spend a claim given for this one; a CSR naming another device neither.
    assert _enroll(lab, claim["token"], f"cam-x{secrets.token_hex(3)}").status_code == 403
    assert _enroll(lab, claim["token"], device, cn=CAMERA).status_code == 400
    # Mallory cannot follow alice's claim (a 404 like a missing one).
    theirs = lab.http("GET", f"/api/v1/claims/{claim['id']}", mallory)
    missing = lab.http("GET", "/api/v1/claims/999999", mallory)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.text == missing.text.replace("999999", str(claim["id"]))
    # The device enrolls once; a replay (say, by a second box with the same token) is refused.
    assert _enroll(lab, claim["token"], device).status_code == 201
    assert _enroll(lab, claim["token"], device).status_code == 403
    with lab.platform.db.read() as session:
        assert session.execute(select(Thing).where(Thing.name == device)).scalar_one_or_none() is not None
    assert _owners(lab, device) == {"smiths"}  # alice's household, not mallory's


@pytest.mark.parametrize("claim_id", [str(2**70), str(-(2**70)), "0"], ids=["huge", "huge-negative", "zero"])
def test_out_of_range_claim_ids_are_a_clear_refusal_not_a_server_error(lab: Lab, claim_id: str) -> None:
    answer = lab.http("GET", f"/api/v1/claims/{claim_id}", lab.person())
    assert answer.status_code in {400, 404}, (answer.status_code, answer.text)
    assert "error" in answer.json()


def test_a_claim_cannot_take_over_an_existing_device(lab: Lab) -> None:
    mallory = lab.person("joneses")
    claim = _claim(lab, mallory, CAMERA)
    taken = _enroll(lab, claim["token"], CAMERA)
    assert taken.status_code == 409, taken.text
    assert _owners(lab, CAMERA) == {"smiths"}
    assert lab.http("GET", f"/api/v1/devices/{CAMERA}", mallory).status_code == 404
    open_claim = _claim(lab, mallory, None)  # a claim without a device id cannot name an existing one either
    assert _enroll(lab, open_claim["token"], OTHER_CAMERA).status_code == 409
    assert _owners(lab, OTHER_CAMERA) == {"joneses"}


@pytest.mark.parametrize("device_id", ["../cam", "CAM-A", "cam a", "cam-a/../x", "x" * 65, "cam-\u0430"])
def test_hostile_device_ids_in_claims_are_refused(lab: Lab, device_id: str) -> None:
    alice = lab.person()
    claimed = lab.http("POST", "/api/v1/claims", alice, json={"device_id": device_id})
    if claimed.status_code == 201:  # if the id is taken as given, enrolling under it must still fail
        assert _enroll(lab, claimed.json()["token"], device_id).status_code in {400, 403}
    else:
        assert claimed.status_code in {400, 422}
    with lab.platform.db.read() as session:
        assert session.execute(select(Thing).where(Thing.name == device_id)).scalar_one_or_none() is None


def test_credentials_of_one_kind_do_not_stand_in_for_another(lab: Lab) -> None:
    alice = lab.person()
    # A claim made by a cross-site page riding alice's cookie (no CSRF token) is refused.
    assert lab.http("POST", "/api/v1/claims", alice, csrf=False, json={}).status_code == 403
    claim = _claim(lab, alice, None)
    made = lab.http(
        "POST", "/api/v1/account/tokens", alice, json={"name": "c", "scopes": ["things:control"], "days": 1}
    )
    api_token = made.json()["token"]
    # A claim token is no API token, an API token or a session id is no claim token.
    assert lab.http("GET", "/api/v1/devices", headers={"Authorization": f"Bearer {claim['token']}"}).status_code == 401
    for wrong in (api_token, alice.token, claim["token"] + "x", claim["token"].upper()):
        assert _enroll(lab, wrong, f"cam-w{secrets.token_hex(3)}").status_code == 403, wrong[:8]


# == broker hooks =================================================================================================


def _hooks(lab: Lab, address: str = "127.0.0.1") -> Callable[..., httpx.Response]:
    from thingward.app.api import create_app

    app = create_app(lab.platform, hook_decisions=lab.server.hook_decisions)

    def post(path: str, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        async def run() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, client=(address, 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://thingward.test") as client:
                return await client.post(path, headers=headers or {}, **kw)

        return asyncio.run(run())

    return post


def _authn(username: str, clientid: str, **extra: str) -> dict[str, str]:
    return {"username": username, "clientid": clientid, "password": "", **extra}


def test_hook_calls_without_the_secret_or_from_another_network_get_no_decision(lab: Lab) -> None:
    post, outside = _hooks(lab), _hooks(lab, "10.20.30.40")
    body = _authn(CAMERA, CAMERA)
    good = {"Authorization": f"Bearer {HOOKS_SECRET}"}
    assert post("/hooks/emqx/authn", good, json=body).json()["result"] == "allow"  # the control
    for headers in (
        {},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {HOOKS_SECRET[:-1]}"},
        {"Authorization": f"Bearer {HOOKS_SECRET}x"},
        {"Authorization": "Basic " + base64.b64encode(f"{HOOKS_SECRET}:".encode()).decode()},  # as the user name
        {"Authorization": f"Token {HOOKS_SECRET}"},
        {"X-Hooks-Secret": HOOKS_SECRET},
    ):
        answer = post("/hooks/emqx/authn", headers, json=body)
        assert answer.status_code == 401 and "result" not in answer.text, headers
    answer = outside("/hooks/emqx/authn", good, json=body)
    assert answer.status_code == 401 and "result" not in answer.text
    assert outside("/hooks/rabbitmq/user", good, data={"username": CAMERA}).status_code == 401
    # ... and a mapped IPv6 spelling of an outside address is outside too.
    assert _hooks(lab, "::ffff:10.20.30.40")("/hooks/emqx/authn", good, json=body).status_code == 401


@pytest.mark.parametrize(
    ("path", "body", "why"),
    [
        ("/hooks/emqx/authn", _authn(CAMERA, OTHER_CAMERA), "another thing's client id"),
        ("/hooks/emqx/authn", _authn(OTHER_CAMERA, OTHER_CAMERA, cert_common_name=CAMERA), "a CN that is not the user"),
        ("/hooks/emqx/authn", _authn(f" {CAMERA}", f" {CAMERA}"), "a padded name"),
        ("/hooks/emqx/authn", _authn(f"{CAMERA}\x00", CAMERA), "a NUL in the name"),
        ("/hooks/emqx/authn", {"username": CAMERA, "clientid": CAMERA, "password": "x"}, "a password login"),
        (
            "/hooks/emqx/authz",
            {"username": CAMERA, "action": "publish", "topic": f"things/{OTHER_CAMERA}/state"},
            "publishing as another thing",
        ),
        (
            "/hooks/emqx/authz",
            {"username": CAMERA, "action": "subscribe", "topic": f"things/{OTHER_CAMERA}/#"},
            "subscribing to another thing",
        ),
        (
            "/hooks/emqx/authz",
            {"username": CAMERA, "action": "all", "topic": f"things/{CAMERA}/state"},
            "an action that is neither",
        ),
    ],
)
def test_identity_confusion_in_hook_parameters_is_denied(lab: Lab, path: str, body: dict[str, Any], why: str) -> None:
    post = _hooks(lab)
    answer = post(path, {"Authorization": f"Bearer {HOOKS_SECRET}"}, json=body)
    assert answer.status_code == 200 and answer.json()["result"] == "deny", why


def test_identity_confusion_in_rabbitmq_and_vernemq_hooks_is_denied(lab: Lab) -> None:
    post = _hooks(lab)
    good = {"Authorization": f"Bearer {HOOKS_SECRET}"}
    rabbit = lambda kind, **p: post(f"/hooks/rabbitmq/{kind}", good, data=p).text  # noqa: E731
    assert rabbit("user", username=CAMERA) == "allow"  # the control
    assert rabbit("user", username=CAMERA, password="") == "deny"  # a password login, even empty
    assert rabbit("user", username=CAMERA, client_id=OTHER_CAMERA) == "deny"
    topic = {"vhost": "/", "resource": "topic", "name": "amq.topic", "permission": "write"}
    assert rabbit("topic", username=CAMERA, routing_key=f"things.{CAMERA}.state", **topic) == "allow"
    assert rabbit("topic", username=CAMERA, routing_key=f"things.{OTHER_CAMERA}.state", **topic) == "deny"
    assert rabbit("topic", username=CAMERA, routing_key=f"things.{CAMERA}.state",
                  **{**topic, "variable_map.client_id": OTHER_CAMERA}) == "deny"  # fmt: skip
    # The same key twice with two values (query and body) is ambiguous: denied.
    both = post(f"/hooks/rabbitmq/topic?username={OTHER_CAMERA}", good,
                data={"username": CAMERA, "routing_key": f"things.{CAMERA}.state", **topic})  # fmt: skip
    assert both.text == "deny"
    register = {"username": CAMERA, "client_id": CAMERA, "mountpoint": "", "password": None}
    vernemq = lambda hook, body, sent=None: post(  # noqa: E731
        f"/hooks/vernemq/{hook}", {**good, "vernemq-hook": sent or hook}, json=body
    ).json()["result"]
    assert vernemq("auth_on_register", register) == "ok"  # the control
    assert vernemq("auth_on_register", {**register, "mountpoint": "other"}) != "ok"
    assert vernemq("auth_on_register", {**register, "client_id": OTHER_CAMERA}) != "ok"
    assert vernemq("auth_on_register", register, sent="auth_on_publish") != "ok"
    publish = {"username": CAMERA, "client_id": CAMERA, "mountpoint": "", "topic": f"things/{OTHER_CAMERA}/state"}
    assert vernemq("auth_on_publish", publish) != "ok"
    subscribe = {"username": CAMERA, "client_id": CAMERA, "mountpoint": "",
                 "topics": [{"topic": f"things/{CAMERA}/#", "qos": 1}, {"topic": "#", "qos": 1}]}  # fmt: skip
    assert vernemq("auth_on_subscribe", subscribe) != "ok"
