"""The account page's sensitive forms over real HTTPS: each needs the password and a current code."""

from __future__ import annotations

import dataclasses
import re
import time

import pyotp

from lab.accounts import PASSWORD
from thingward.platform import cli_actor
from web.conftest import WebApp, csrf_of


def test_2fa_settings_and_email_change_need_the_password_and_a_code(web: WebApp) -> None:
    web.add_user("alice@example.com")
    with web.client() as alice:
        web.sign_in(alice, "alice@example.com")
        enrol = alice.post("/account/2fa/begin", data={"csrf_token": csrf_of(alice.get("/account").text)})
        secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', enrol.text)
        assert secret and "<svg" in enrol.text
        totp = pyotp.TOTP(secret.group(1))
        codes_page = alice.post("/account/2fa/confirm", data={"csrf_token": csrf_of(enrol.text), "code": totp.now()})
        assert len(re.findall(r"<li><code>", codes_page.text)) == 10
        csrf = csrf_of(codes_page.text)  # the session got a new id, and so a new CSRF token

        wrong = alice.post(
            "/account/2fa/recovery-codes", data={"csrf_token": csrf, "password": PASSWORD, "code": "000000"}
        )
        assert wrong.status_code == 400 and "wrong" in wrong.text
        renewed = alice.post(
            "/account/2fa/recovery-codes",
            data={"csrf_token": csrf, "password": PASSWORD, "code": totp.at(time.time() + 30)},
        )
        assert renewed.status_code == 200 and len(re.findall(r"<li><code>", renewed.text)) == 10

        no_code = alice.post(
            "/account/email", data={"csrf_token": csrf, "password": PASSWORD, "new_email": "alice2@example.com"}
        )
        assert no_code.status_code == 400
        assert web.accounts.get_user("alice@example.com").email == "alice@example.com"

        off_wrong = alice.post("/account/2fa/disable", data={"csrf_token": csrf, "password": "nope", "code": "1"})
        assert off_wrong.status_code == 400
        assert web.accounts.get_user("alice@example.com").totp_enabled
        recovery = re.findall(r"<li><code>([^<]+)</code>", renewed.text)[0]
        off = alice.post(
            "/account/2fa/disable",
            data={"csrf_token": csrf, "password": PASSWORD, "code": recovery},
            follow_redirects=False,
        )
        assert off.status_code == 303
        assert not web.accounts.get_user("alice@example.com").totp_enabled
        moved = alice.post(
            "/account/email",
            data={
                "csrf_token": csrf_of(alice.get("/account").text),
                "password": PASSWORD,
                "new_email": "a2@example.com",
            },
            follow_redirects=False,
        )
        assert moved.status_code == 303
        assert web.accounts.get_user("a2@example.com").id


def test_invite_only_sign_up_needs_the_invitation_for_that_address(web: WebApp) -> None:
    web.accounts.settings = dataclasses.replace(web.accounts.settings, signup="invite")
    token = web.accounts.invite(cli_actor(), "zoe@example.com")
    strong = "velvet compass lantern harbour"
    with web.client() as browser:
        assert "by invitation" in browser.get("/signup").text
        uninvited = browser.post("/signup", data={"email": "mallory@example.com", "password": strong})
        assert uninvited.status_code == 400 and "invitation" in uninvited.text
        stolen = browser.post("/signup", data={"email": "mallory@example.com", "password": strong, "invite": token})
        assert stolen.status_code == 400  # an invitation is for one address
        form = browser.get("/signup", params={"invite": token}).text
        assert f'value="{token}"' in form
        done = browser.post(
            "/signup", data={"email": "zoe@example.com", "password": strong, "invite": token}, follow_redirects=False
        )
        assert done.headers["location"] == "/login?signed_up=1"
        again = browser.post("/signup", data={"email": "zoe2@example.com", "password": strong, "invite": token})
        assert again.status_code == 400
