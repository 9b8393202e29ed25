"""Admin pages for an admin (explain, sharing forms, audit log), and the mailed single-use reset link."""

from __future__ import annotations

import re
import time

import httpx
import pyotp
import pytest

from lab.accounts import PASSWORD
from lab.served import wait_for
from thingward.platform import cli_actor
from thingward.registry.things import add_thing
from web.conftest import WebApp, csrf_of

NEW_PASSWORD = "saffron glacier typewriter"


def _sign_in_admin(web: WebApp, client: httpx.Client) -> str:
    """An admin with 2FA on, signed in through the pages (password, then the TOTP code); the CSRF token."""
    user_id = web.add_user("root@example.com", admin=True)
    enrolment = web.accounts.begin_totp(user_id)
    web.accounts.confirm_totp(user_id, pyotp.TOTP(enrolment.secret).now())
    first = client.post("/login", data={"email": "root@example.com", "password": PASSWORD}, follow_redirects=False)
    assert first.headers["location"] == "/login/verify"
    code = pyotp.TOTP(enrolment.secret).at(time.time() + 30)  # the next step (the enrolment used this one)
    done = client.post("/login/verify", data={"code": code}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/", done.text
    return csrf_of(client.get("/admin").text)


@pytest.mark.both_databases
def test_admin_pages_explain_share_and_show_the_audit_log(web: WebApp) -> None:
    with web.platform.db.session() as session:
        add_thing(session, cli_actor(), "porch-cam")
    web.add_user("alice@example.com")
    with web.client() as admin:
        csrf = _sign_in_admin(web, admin)
        for path in ("/admin/things", "/admin/groups", "/admin/certificates", "/admin/users", "/admin/audit"):
            assert admin.get(path).status_code == 200, path
        allowed = admin.get(
            "/admin/policies", params={"thing": "porch-cam", "action": "publish", "topic": "things/porch-cam/telemetry"}
        )
        assert re.search(r'id="decision"[^>]*><strong>ALLOW', allowed.text)
        denied = admin.get(
            "/admin/policies", params={"thing": "porch-cam", "action": "subscribe", "topic": "things/other/#"}
        )
        assert re.search(r'id="decision"[^>]*><strong>DENY', denied.text)
        no_csrf = admin.post("/admin/user-groups", data={"name": "smiths"})
        assert no_csrf.status_code == 403
        for path, data in (
            ("/admin/user-groups", {"name": "smiths", "description": "the Smith household"}),
            ("/admin/user-groups/smiths/members", {"email": "alice@example.com"}),
            ("/admin/user-groups/smiths/things", {"thing": "porch-cam", "role": "viewer"}),
        ):
            answer = admin.post(path, data={**data, "csrf_token": csrf}, follow_redirects=False)
            assert answer.status_code == 303, (path, answer.text)
        bad = admin.post(
            "/admin/user-groups/smiths/things", data={"thing": "porch-cam", "role": "king", "csrf_token": csrf}
        )
        assert bad.status_code == 400
        audit = admin.get("/admin/audit").text
        assert "thing.share" in audit and "root@example.com" in audit
    with web.client() as alice:
        web.sign_in(alice, "alice@example.com")
        device = alice.get("/api/v1/devices/porch-cam").json()
        assert device["role"] == "viewer"


def test_a_mailed_reset_link_works_once_and_ends_the_sessions(web: WebApp) -> None:
    web.add_user("alice@example.com")
    with web.client() as old_browser:
        web.sign_in(old_browser, "alice@example.com")
        with web.client() as browser:
            sent = browser.post("/forgot", data={"email": "alice@example.com"})
            assert "If an account has this email" in sent.text
            assert wait_for(lambda: any("/reset?token=" in b for b in web.inbox.bodies_to("alice@example.com")), 10)
            token = web.inbox.find("alice@example.com", r"/reset\?token=(\S+)")
            form = browser.get("/reset", params={"token": token})
            assert f'value="{token}"' in form.text
            weak = browser.post("/reset", data={"token": token, "password": "password1234"})
            assert weak.status_code == 400 and "common" in weak.text
            done = browser.post("/reset", data={"token": token, "password": NEW_PASSWORD}, follow_redirects=False)
            assert done.headers["location"] == "/login?reset=1"
            again = browser.post("/reset", data={"token": token, "password": "another saffron glacier"})
            assert again.status_code == 400 and "not valid" in again.text
        assert old_browser.get("/api/v1/account").status_code == 401  # every session ended
        old = old_browser.post("/api/v1/auth/login", json={"email": "alice@example.com", "password": PASSWORD})
        assert old.status_code == 401


def test_hostile_ids_and_topics_on_pages_are_refused_not_server_errors(web: WebApp) -> None:
    web.add_user("alice@example.com")
    with web.client() as admin:
        csrf = _sign_in_admin(web, admin)
        for path in ("/account/sessions/99999999999999999999999/end", "/account/tokens/-1/revoke"):
            answer = admin.post(path, data={"csrf_token": csrf})
            assert 400 <= answer.status_code < 500, (path, answer.status_code)
        for topic in ("things/#/x", "a" * 600, "things/\x00"):
            page = admin.get("/admin/policies", params={"thing": "x", "action": "publish", "topic": topic})
            assert page.status_code == 200, topic
