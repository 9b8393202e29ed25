"""The REST API and the pages over real HTTPS: device visibility, CSRF, enumeration, scopes, headers."""

from __future__ import annotations

import datetime as dt
import json
import re

import httpx
import pyotp
import pytest

from lab.accounts import PASSWORD
from lab.served import wait_for
from thingward.accounts import sharing
from thingward.accounts.service import user_by_email
from thingward.device.enroll import server_context
from thingward.platform import cli_actor
from thingward.registry.device_state import parse_state_report, store_report
from thingward.registry.things import add_thing, get_thing
from web.conftest import WebApp, csrf_of

NEW_PASSWORD = "marmalade lighthouse quarry"


def _share(web: WebApp, thing: str, group: str, email: str) -> None:
    with web.platform.db.session() as session:
        add_thing(session, cli_actor(), thing)
        if group not in {g.name for g in sharing.list_user_groups(session)}:
            sharing.add_user_group(session, cli_actor(), group)
        sharing.add_member(session, cli_actor(), group, user_by_email(session, email))
        sharing.share_thing(session, cli_actor(), thing, group, "owner")


@pytest.mark.both_databases
def test_another_households_device_is_a_404_like_a_missing_one(web: WebApp) -> None:
    web.add_user("alice@example.com")
    web.add_user("bob@example.com")
    _share(web, "alice-cam", "smiths", "alice@example.com")
    _share(web, "bob-cam", "joneses", "bob@example.com")
    with web.client() as bob:
        web.sign_in(bob, "bob@example.com")
        listed = bob.get("/api/v1/devices")
        assert listed.status_code == 200
        assert [d["name"] for d in listed.json()["devices"]] == ["bob-cam"]
        assert bob.get("/api/v1/devices/bob-cam").json()["role"] == "owner"
        hidden = bob.get("/api/v1/devices/alice-cam")
        missing = bob.get("/api/v1/devices/nobody-cam")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["error"].replace("alice-cam", "X") == missing.json()["error"].replace("nobody-cam", "X")
        # The pages too: one 404 page for both.
        page_hidden = bob.get("/devices/alice-cam")
        page_missing = bob.get("/devices/nobody-cam")
        assert page_hidden.status_code == page_missing.status_code == 404
        assert page_hidden.text == page_missing.text
        assert "alice-cam" not in bob.get("/devices").text


def test_state_changing_requests_without_the_csrf_token_are_refused(web: WebApp) -> None:
    web.add_user("alice@example.com")
    with web.client() as alice:
        csrf = web.sign_in(alice, "alice@example.com")
        body = {"name": "script", "scopes": ["things:read"], "days": 7}
        refused = alice.post("/api/v1/account/tokens", json=body)
        assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
        wrong = alice.post("/api/v1/account/tokens", json=body, headers={"X-CSRF-Token": "0" * 64})
        assert wrong.status_code == 403
        # A form post without the hidden field: refused, and the session is still there.
        assert alice.post("/logout", data={}).status_code == 403
        assert alice.get("/api/v1/account").status_code == 200
        # From another site, even with the right token.
        cross = alice.post(
            "/api/v1/account/tokens", json=body, headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
        )
        assert cross.status_code == 403
        fetch_site = alice.post(
            "/api/v1/account/tokens", json=body, headers={"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}
        )
        assert fetch_site.status_code == 403
        assert alice.get("/api/v1/account/tokens").json() == []
        made = alice.post("/api/v1/account/tokens", json=body, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201, made.text
        # The page form with the hidden field works.
        page = alice.get("/account")
        out = alice.post("/logout", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
        assert out.status_code == 303
        assert alice.get("/api/v1/account").status_code == 401


def test_unknown_email_and_wrong_password_get_the_same_answer(web: WebApp) -> None:
    web.add_user("alice@example.com")
    with web.client() as client:
        unknown = client.post("/api/v1/auth/login", json={"email": "nobody@example.com", "password": PASSWORD})
        wrong = client.post("/api/v1/auth/login", json={"email": "alice@example.com", "password": "not it at all"})
        assert unknown.status_code == wrong.status_code == 401
        assert unknown.content == wrong.content
        page_unknown = client.post("/login", data={"email": "nobody@example.com", "password": PASSWORD})
        page_wrong = client.post("/login", data={"email": "alice@example.com", "password": "not it at all"})
        assert page_unknown.status_code == page_wrong.status_code == 401
        assert page_unknown.text.replace("nobody@", "X@") == page_wrong.text.replace("alice@", "X@")
        reset_unknown = client.post("/api/v1/auth/password-reset", json={"email": "nobody@example.com"})
        reset_known = client.post("/api/v1/auth/password-reset", json={"email": "alice@example.com"})
        assert reset_unknown.status_code == reset_known.status_code == 202
        assert reset_unknown.content == reset_known.content
    assert wait_for(lambda: web.inbox.to("alice@example.com"), 10)  # mailed off the request's clock
    assert web.inbox.find("alice@example.com", r"(/reset\?token=\S+)")
    assert web.inbox.to("nobody@example.com") == []


def test_api_token_scopes_are_enforced(web: WebApp) -> None:
    web.add_user("alice@example.com")
    _share(web, "alice-cam", "smiths", "alice@example.com")
    with web.client() as alice:
        csrf = web.sign_in(alice, "alice@example.com")
        made = alice.post(
            "/api/v1/account/tokens",
            json={"name": "read devices", "scopes": ["things:read"], "days": 1},
            headers={"X-CSRF-Token": csrf},
        )
        token, token_id = made.json()["token"], made.json()["info"]["id"]
        assert token.startswith("twk_")
        admin_scope = alice.post(
            "/api/v1/account/tokens",
            json={"name": "too much", "scopes": ["admin"], "days": 1},
            headers={"X-CSRF-Token": csrf},
        )
        assert admin_scope.status_code == 400 and "admin" in admin_scope.json()["error"]
    bearer = {"Authorization": f"Bearer {token}"}
    with web.client() as script:
        assert [d["name"] for d in script.get("/api/v1/devices", headers=bearer).json()["devices"]] == ["alice-cam"]
        assert script.get("/api/v1/account", headers=bearer).status_code == 403  # no account:read
        # A token is never a session: it cannot make more tokens or end sessions (and needs no CSRF token to
        # be refused for that reason).
        more = script.post("/api/v1/account/tokens", headers=bearer, json={"name": "x", "scopes": ["admin"]})
        assert more.status_code == 403
        assert script.get("/api/v1/devices", headers={"Authorization": "Bearer twk_forged"}).status_code == 401
        assert script.get("/devices", headers=bearer, follow_redirects=False).status_code == 303  # pages need a session
    with web.client() as alice:
        csrf = web.sign_in(alice, "alice@example.com")
        assert alice.delete(f"/api/v1/account/tokens/{token_id}", headers={"X-CSRF-Token": csrf}).status_code == 204
    with web.client() as script:
        assert script.get("/api/v1/devices", headers=bearer).status_code == 401


def test_security_headers_on_every_response(web: WebApp) -> None:
    with web.client() as client:
        for path in ("/login", "/api/v1/health", "/static/app.css", "/no-such-page", "/api/v1/devices"):
            response = client.get(path)
            headers = response.headers
            assert "default-src 'self'" in headers["content-security-policy"], path
            assert "frame-ancestors 'none'" in headers["content-security-policy"], path
            assert "unsafe-inline" not in headers["content-security-policy"]
            assert headers["strict-transport-security"].startswith("max-age="), path
            assert headers["x-content-type-options"] == "nosniff", path
            assert headers["referrer-policy"] == "same-origin", path
            assert "camera=()" in headers["permissions-policy"], path
        page = client.get("/login").text
        assert "<script>" not in page and "<style" not in page and "http://" not in page


def test_session_cookie_is_host_only_httponly_secure_lax_and_renewed_at_login_and_2fa(web: WebApp) -> None:
    web.add_user("alice@example.com")
    with web.client() as alice:
        before = len(web.inbox.to("alice@example.com"))
        alice.post("/api/v1/auth/login", json={"email": "alice@example.com", "password": PASSWORD})
        code = web.mailed_code("alice@example.com", before)
        done = alice.post("/api/v1/auth/login", json={"email": "alice@example.com", "password": PASSWORD, "code": code})
        set_cookie = [v for k, v in done.headers.multi_items() if k == "set-cookie"]
        session_cookie = next(c for c in set_cookie if c.startswith("__Host-thingward_session="))
        for attribute in ("HttpOnly", "Secure", "SameSite=lax", "Path=/"):
            assert attribute.lower() in session_cookie.lower(), session_cookie
        assert "domain" not in session_cookie.lower()
        first = alice.cookies["__Host-thingward_session"]
        csrf = done.json()["csrf_token"]
        begun = alice.post("/api/v1/account/2fa/begin", headers={"X-CSRF-Token": csrf})
        secret = begun.json()["secret"]
        assert begun.json()["qr_svg"].startswith("<?xml") or "<svg" in begun.json()["qr_svg"]
        confirmed = alice.post(
            "/api/v1/account/2fa/confirm", json={"code": pyotp.TOTP(secret).now()}, headers={"X-CSRF-Token": csrf}
        )
        assert confirmed.status_code == 200 and len(confirmed.json()["recovery_codes"]) == 10
        second = alice.cookies["__Host-thingward_session"]
        assert second != first
    with httpx.Client(base_url=web.url, verify=False) as stale:
        stale.cookies.set("__Host-thingward_session", first)
        assert stale.get("/api/v1/account").status_code == 401


def test_pending_requirements_allow_only_the_setup_page(web: WebApp) -> None:
    info, generated = web.accounts.create_user(cli_actor(), "first-admin@example.com", None, admin=True)
    assert generated and info.must_change_password
    with web.client() as admin:
        # The first sign-in with the generated password needs no mailed code: that password is the secret.
        done = admin.post("/api/v1/auth/login", json={"email": "first-admin@example.com", "password": generated})
        assert done.json()["outcome"] == "ok" and done.json()["requirements"] == ["change_password", "enroll_2fa"]
        assert admin.get("/devices", follow_redirects=False).headers["location"] == "/account/setup"
        assert admin.get("/admin/users", follow_redirects=False).headers["location"] == "/account/setup"
        assert admin.get("/api/v1/devices").status_code == 403
        account = admin.get("/api/v1/account")
        assert account.status_code == 200 and account.json()["requirements"] == ["change_password", "enroll_2fa"]
        setup = admin.get("/account/setup")
        assert "choose your own" in setup.text
        changed = admin.post(
            "/account/password",
            data={"csrf_token": csrf_of(setup.text), "current_password": generated, "new_password": NEW_PASSWORD},
            follow_redirects=False,
        )
        assert changed.headers["location"] == "/account/setup"
        assert "Set up two-factor" in admin.get("/account/setup").text
        # The REST API clears requirements too: 2FA enrolment with a pending session.
        csrf = csrf_of(admin.get("/account/setup").text)
        secret = admin.post("/api/v1/account/2fa/begin", headers={"X-CSRF-Token": csrf}).json()["secret"]
        done = admin.post(
            "/api/v1/account/2fa/confirm", json={"code": pyotp.TOTP(secret).now()}, headers={"X-CSRF-Token": csrf}
        )
        assert done.status_code == 200, done.text
        assert admin.get("/api/v1/account").json()["requirements"] == []
        assert admin.get("/api/v1/devices").status_code == 200


def test_admin_pages_are_a_404_for_everyone_else(web: WebApp) -> None:
    web.add_user("alice@example.com")
    _share(web, "alice-cam", "smiths", "alice@example.com")
    with web.client() as alice:
        web.sign_in(alice, "alice@example.com")
        for path in ("/admin", "/admin/things", "/admin/users", "/admin/audit", "/admin/policies"):
            assert alice.get(path).status_code == 404, path
        assert alice.get("/admin/things").text == alice.get("/no-such-page").text


def test_live_password_feedback_says_why(web: WebApp) -> None:
    with web.client() as client:
        weak = client.post("/api/v1/password/check", json={"password": "alice2026alice", "email": "alice@example.com"})
        assert weak.status_code == 200
        assert weak.json()["ok"] is False and weak.json()["problems"]
        strong = client.post("/api/v1/password/check", json={"password": NEW_PASSWORD})
        assert strong.json() == {"ok": True, "problems": [], "rules": strong.json()["rules"]}
        assert any(re.search(r"12", rule) for rule in strong.json()["rules"])


def test_devices_show_the_latest_reported_state(web: WebApp) -> None:
    web.add_user("alice@example.com")
    _share(web, "alice-cam", "smiths", "alice@example.com")
    report = {"firmware": {"model": "cam-x", "version": "1.2.0"}, "ports": {"tcp": [443], "udp": [5353]}}
    with web.platform.db.session() as session:
        thing = get_thing(session, "alice-cam")
        store_report(session, thing.id, parse_state_report(json.dumps(report).encode()), dt.datetime.now(dt.UTC))
    with web.client() as alice:
        web.sign_in(alice, "alice@example.com")
        state = alice.get("/api/v1/devices/alice-cam").json()["state"]
        assert state["firmware_version"] == "1.2.0" and state["tcp_ports"] == [443] and state["model"] == "cam-x"
        page = alice.get("/devices/alice-cam").text
        assert "1.2.0" in page and "443" in page


def test_api_tokens_page_shows_a_token_once_and_revokes_it(web: WebApp) -> None:
    web.add_user("alice@example.com")
    with web.client() as alice:
        web.sign_in(alice, "alice@example.com")
        csrf = csrf_of(alice.get("/account/tokens").text)
        made = alice.post(
            "/account/tokens",
            data={"csrf_token": csrf, "name": "backup script", "scope": ["things:read", "account:read"], "days": "30"},
        )
        assert made.status_code == 201
        token = re.search(r'id="new-token">(twk_[^<]+)<', made.text)
        assert token, made.text
        listed = alice.get("/account/tokens").text
        assert "backup script" in listed and token.group(1) not in listed  # shown once only
        no_scope = alice.post("/account/tokens", data={"csrf_token": csrf, "name": "nothing", "days": "30"})
        assert no_scope.status_code == 400 and "scope" in no_scope.text
        bearer = {"Authorization": f"Bearer {token.group(1)}"}
        with web.client() as script:
            assert script.get("/api/v1/account", headers=bearer).json()["email"] == "alice@example.com"
            token_id = re.search(r'action="/account/tokens/(\d+)/revoke"', listed)
            assert token_id
            alice.post(f"/account/tokens/{token_id.group(1)}/revoke", data={"csrf_token": csrf})
            assert script.get("/api/v1/account", headers=bearer).status_code == 401


def test_a_refused_form_post_shows_a_page_to_the_person(web: WebApp) -> None:
    web.add_user("alice@example.com")
    with web.client() as alice:
        web.sign_in(alice, "alice@example.com")
        refused = alice.post("/logout", data={"csrf_token": "stale"}, headers={"Accept": "text/html"})
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("text/html")
        assert "reload the page" in refused.text and "<script" not in refused.text


@pytest.mark.both_databases
def test_admin_api_needs_the_admin_scope_and_an_admin(web: WebApp) -> None:
    web.add_user("alice@example.com")
    root_id = web.add_user("root@example.com", admin=True)
    reader = web.accounts.create_api_token(root_id, "reader", ["things:read"], 1).token
    admin = web.accounts.create_api_token(root_id, "ops script", ["admin"], 1).token
    with web.client() as script:
        # Admins must use 2FA: until this one has it, the tokens wait as the sessions do.
        assert script.get("/api/v1/admin/users", headers={"Authorization": f"Bearer {admin}"}).status_code == 403
    enrolment = web.accounts.begin_totp(root_id)
    web.accounts.confirm_totp(root_id, web.totp_now(enrolment.secret))
    with web.client() as script:
        assert script.get("/api/v1/admin/users", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
        users = script.get("/api/v1/admin/users", headers={"Authorization": f"Bearer {admin}"})
        assert users.status_code == 200
        assert {u["email"] for u in users.json()} == {"alice@example.com", "root@example.com"}
        events = script.get("/api/v1/admin/audit", params={"limit": 5}, headers={"Authorization": f"Bearer {admin}"})
        assert len(events.json()) == 5 and events.json()[0]["id"] > events.json()[-1]["id"]
    with web.client() as alice:
        web.sign_in(alice, "alice@example.com")
        assert alice.get("/api/v1/admin/users").status_code == 403
        assert alice.get("/api/v1/admin/audit").status_code == 403


def test_signing_in_again_ends_the_browsers_older_session(web: WebApp) -> None:
    web.add_user("alice@example.com")
    with web.client() as alice:
        web.sign_in(alice, "alice@example.com")  # this browser is now known: no mailed code the next time
        old = alice.cookies["__Host-thingward_session"]
        form = alice.get("/signup").text  # a public page seen signed in carries the CSRF token
        again = alice.post(
            "/login",
            data={"csrf_token": csrf_of(form), "email": "alice@example.com", "password": PASSWORD},
            follow_redirects=False,
        )
        assert again.status_code == 303, again.text
        assert alice.cookies["__Host-thingward_session"] != old
        assert len(web.accounts.list_sessions(web.accounts.get_user("alice@example.com").id)) == 1


def test_a_malformed_cookie_beside_the_session_does_not_hide_it_from_the_csrf_guard(web: WebApp) -> None:
    web.add_user("alice@example.com")
    with web.client() as alice:
        web.sign_in(alice, "alice@example.com")
        session = alice.cookies["__Host-thingward_session"]
    # A cookie a sibling host could plant (`a="b`, an unclosed quote) made a strict parser give up on the
    # whole header, so the guard saw no session while the handler found one: a CSRF bypass.
    planted = f'a="b; __Host-thingward_session={session}; c=d'
    with httpx.Client(base_url=web.url, verify=server_context(web.platform.ca_certificate_path)) as raw:
        made = raw.post(
            "/api/v1/account/tokens",
            json={"name": "csrf", "scopes": ["things:read"], "days": 1},
            headers={"Cookie": planted},
        )
        assert made.status_code == 403 and "CSRF" in made.text
        assert raw.get("/api/v1/account", headers={"Cookie": planted}).status_code == 200  # the session is live
