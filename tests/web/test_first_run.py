"""First run: the first admin gets a random password shown once, must change it and set up 2FA first."""

from __future__ import annotations

from pathlib import Path

from thingward.app.web.first_run import ensure_first_admin
from thingward.platform import Platform
from web.conftest import WebApp, csrf_of


def test_first_admin_has_a_random_password_once_and_no_second_is_made(platform: Platform) -> None:
    first = ensure_first_admin(platform)
    assert first is not None and len(first.password) >= 20
    assert ensure_first_admin(platform) is None  # someone exists: nothing more is made
    # Only its hash is kept: the password is not in the config (nor anywhere a later reader finds it).
    assert first.password not in Path(platform.settings.data_dir, "thingward.toml").read_text()


def test_first_admin_must_change_the_password_and_enrol_2fa_before_anything(web: WebApp) -> None:
    first = ensure_first_admin(web.platform)
    assert first is not None
    with web.client() as browser:
        page = browser.post("/login", data={"email": first.email, "password": first.password}, follow_redirects=False)
        assert page.headers["location"] == "/account/setup"
        for path in ("/devices", "/admin", "/account/tokens"):
            assert browser.get(path, follow_redirects=False).headers["location"] == "/account/setup"
        setup = browser.get("/account/setup").text
        weak = browser.post(
            "/account/password",
            data={"csrf_token": csrf_of(setup), "current_password": first.password, "new_password": "admin admin"},
        )
        assert weak.status_code == 400 and "at least 12" in weak.text
        assert browser.get("/devices", follow_redirects=False).headers["location"] == "/account/setup"
