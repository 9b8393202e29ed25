"""The web app in a real browser (Debian's chromium via Playwright) against a real `thingward serve`
with a real SMTP server: sign-up, 2FA, sign-in codes, lockout, sessions. Saves README screenshots."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest

from lab.accounts import FAST, Inbox, smtp_server
from lab.browser import chromium, screenshot
from lab.served import ServerProcess, serving, wait_for
from thingward.accounts import sharing
from thingward.accounts.mail import NoMailer
from thingward.accounts.service import Accounts, user_by_email
from thingward.platform import Platform, cli_actor, init_data_dir
from thingward.registry.device_state import parse_state_report, store_report
from thingward.registry.things import add_thing, get_thing

if TYPE_CHECKING := False:
    from playwright.sync_api import Browser, BrowserContext, Page

STRONG = "copper kettle orchard nineteen"
LOCKOUT = 3


@dataclass
class Site:
    url: str
    data_dir: Path
    inbox: Inbox
    server: ServerProcess

    def accounts(self) -> Accounts:
        platform = Platform.open(self.data_dir)
        return Accounts(platform.db, dataclasses.replace(FAST, signup="open"), NoMailer())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data_dir = tmp_path_factory.mktemp("web") / "data"
    init_data_dir(data_dir)
    with smtp_server() as (inbox, smtp):
        env = {
            **os.environ,
            "THINGWARD_SMTP__HOST": smtp.host,
            "THINGWARD_SMTP__PORT": str(smtp.port),
            "THINGWARD_SMTP__SECURITY": "none",
            "THINGWARD_ACCOUNTS__SIGNUP": "open",
            "THINGWARD_ACCOUNTS__LOCKOUT_FAILURES": str(LOCKOUT),
            "THINGWARD_ACCOUNTS__ARGON2_TIME_COST": str(FAST.argon2_time_cost),
            "THINGWARD_ACCOUNTS__ARGON2_MEMORY_KIB": str(FAST.argon2_memory_kib),
            "THINGWARD_AUDIT__INTERVAL_MINUTES": "0",
        }
        with serving(data_dir, env) as server:
            yield Site(server.api, data_dir, inbox, server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


CSP_VIOLATIONS: list[str] = []


def _context(browser: Browser) -> BrowserContext:
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1100, "height": 760})
    context.set_default_timeout(10_000)
    # Anything our own pages do that the CSP blocks (an inline script or style, a foreign load) is a bug.
    context.on(
        "console",
        lambda message: CSP_VIOLATIONS.append(message.text) if "Content Security Policy" in message.text else None,
    )
    return context


def _mailed_code(site: Site, email: str, before: int) -> str:
    assert wait_for(lambda: len(site.inbox.to(email)) > before, 10), f"no mail to {email}"
    return site.inbox.find(email, r"the code is (\d{8})")


def _sign_up(page: Page, site: Site, email: str, password: str = STRONG) -> None:
    page.goto(f"{site.url}/signup")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r"/login\?signed_up=1$"))


def _sign_in_with_mailed_code(page: Page, site: Site, email: str, password: str = STRONG) -> None:
    before = len(site.inbox.to(email))
    page.goto(f"{site.url}/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_url(re.compile(r"/login/verify$"))
    page.fill("input[name=code]", _mailed_code(site, email, before))
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r"/devices$"))


def _password_step(page: Page, site: Site, email: str, password: str = STRONG) -> None:
    page.goto(f"{site.url}/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_url(re.compile(r"/login/verify$"))


def _code_step(page: Page, code: str) -> None:
    page.fill("input[name=code]", code)
    page.click("main button[type=submit]")


def _sign_out(page: Page) -> None:
    page.click("header button:has-text('Sign out')")
    page.wait_for_url(re.compile(r"/login$"))


def test_sign_up_refuses_a_weak_password_with_the_reason_and_takes_a_strong_one(site: Site, browser: Browser) -> None:
    context = _context(browser)
    page = context.new_page()
    page.goto(f"{site.url}/signup")
    page.fill("input[name=email]", "carol@example.com")
    page.fill("input[name=name]", "Carol")
    page.fill("input[name=password]", "carol2026carol")
    # The live feedback (the server's verdict, fetched by app.js) says why before the form is sent.
    feedback = page.locator("[data-feedback-for=password]")
    feedback.locator("li").first.wait_for()
    assert feedback.inner_text().strip()
    page.click("main button[type=submit]")
    error = page.locator("div.error")
    error.wait_for()
    assert re.search(r"email|name|guess|common", error.inner_text(), re.IGNORECASE), error.inner_text()
    screenshot(page, "signup-weak-password.png")
    with site.accounts().db.read() as session, pytest.raises(Exception, match="no user"):
        user_by_email(session, "carol@example.com")
    page.fill("input[name=password]", STRONG)
    page.wait_for_selector("[data-feedback-for=password].ok")
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r"/login\?signed_up=1$"))
    assert "Your account is ready" in page.content()
    context.close()


def test_totp_enrolment_codes_wrong_reused_and_recovery(site: Site, browser: Browser) -> None:
    email = "dave@example.com"
    context = _context(browser)
    page = context.new_page()
    _sign_up(page, site, email)
    _sign_in_with_mailed_code(page, site, email)
    page.goto(f"{site.url}/account")
    page.click("button:has-text('Set up two-factor authentication')")
    secret = page.locator("#totp-secret").inner_text().strip()
    assert page.locator(".qr svg").count() == 1
    screenshot(page, "totp-enrol.png")
    totp = pyotp.TOTP(secret)
    page.fill("input[name=code]", totp.now())
    page.click("main button[type=submit]")
    codes = [c.strip() for c in page.locator("#recovery-codes code").all_inner_texts()]
    assert len(codes) == 10
    screenshot(page, "recovery-codes.png")
    page.goto(f"{site.url}/account")
    assert "recovery code(s) left" in page.content()
    _sign_out(page)

    # A wrong code is refused; the newest code lets us in.
    _password_step(page, site, email)
    _code_step(page, "000000" if totp.now() != "000000" else "111111")
    page.locator("p.error").wait_for()
    assert "wrong" in page.locator("p.error").inner_text()
    # The enrolment spent this step's code; the next step's is accepted (one step of clock drift).
    used = totp.at(time.time() + 30)
    _code_step(page, used)
    page.wait_for_url(re.compile(r"/devices$"))
    _sign_out(page)

    # The same code a second time is refused (a replay), whatever the step.
    _password_step(page, site, email)
    _code_step(page, used)
    page.locator("p.error").wait_for()
    assert page.url.endswith("/login/verify")

    # A recovery code works once.
    _code_step(page, codes[0])
    page.wait_for_url(re.compile(r"/devices$"))
    _sign_out(page)
    _password_step(page, site, email)
    _code_step(page, codes[0])
    page.locator("p.error").wait_for()
    assert page.url.endswith("/login/verify")
    context.close()


def test_lockout_after_too_many_failures(site: Site, browser: Browser) -> None:
    email = "erin@example.com"
    context = _context(browser)
    page = context.new_page()
    _sign_up(page, site, email)
    for _ in range(LOCKOUT):
        page.goto(f"{site.url}/login")
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", "not the password at all")
        page.click("form[action='/login'] button[type=submit]")
        page.locator("p.error").wait_for()
    assert "locked" in page.locator("p.error").inner_text()
    # The right password does not open a locked account.
    page.goto(f"{site.url}/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", STRONG)
    page.click("form[action='/login'] button[type=submit]")
    page.locator("p.error").wait_for()
    assert "locked" in page.locator("p.error").inner_text()
    screenshot(page, "lockout.png")
    assert wait_for(lambda: any("locked" in s for s, _ in site.inbox.to(email)), 10)
    context.close()


def test_ending_a_session_in_one_browser_signs_out_the_other(site: Site, browser: Browser) -> None:
    email = "frank@example.com"
    laptop, phone = _context(browser), _context(browser)
    on_laptop, on_phone = laptop.new_page(), phone.new_page()
    _sign_up(on_laptop, site, email)
    _sign_in_with_mailed_code(on_laptop, site, email)
    _sign_in_with_mailed_code(on_phone, site, email)
    on_laptop.goto(f"{site.url}/account/sessions")
    rows = on_laptop.locator("tbody tr")
    assert rows.count() == 2
    screenshot(on_laptop, "sessions.png")
    on_laptop.locator("tbody tr:not(.current) button:has-text('End')").click()
    on_laptop.wait_for_url(re.compile(r"/account/sessions$"))
    assert on_laptop.locator("tbody tr").count() == 1
    on_phone.goto(f"{site.url}/account")
    on_phone.wait_for_url(re.compile(r"/login$"))
    on_laptop.goto(f"{site.url}/account")
    assert on_laptop.url.endswith("/account")
    laptop.close()
    phone.close()


def test_devices_page_shows_only_the_households_devices(site: Site, browser: Browser) -> None:
    email = "grace@example.com"
    context = _context(browser)
    page = context.new_page()
    _sign_up(page, site, email)
    platform = Platform.open(site.data_dir)
    try:
        with platform.db.session() as session:
            for name in ("front-door-cam", "garden-cam", "neighbours-cam"):
                add_thing(session, cli_actor(), name)
            sharing.add_user_group(session, cli_actor(), "graces", "Grace's household")
            sharing.add_member(session, cli_actor(), "graces", user_by_email(session, email))
            sharing.share_thing(session, cli_actor(), "front-door-cam", "graces", "owner")
            sharing.share_thing(session, cli_actor(), "garden-cam", "graces", "viewer")
            for name, version, tcp in (("front-door-cam", "1.2.0", [443]), ("garden-cam", "1.0.3", [23, 443])):
                report = {"firmware": {"model": "cam-x", "version": version}, "ports": {"tcp": tcp, "udp": [5353]}}
                thing = get_thing(session, name)
                store_report(
                    session, thing.id, parse_state_report(json.dumps(report).encode()), dt.datetime.now(dt.UTC)
                )
    finally:
        platform.close()
    _sign_in_with_mailed_code(page, site, email)
    text = page.locator("main").inner_text()
    assert "front-door-cam" in text and "garden-cam" in text and "neighbours-cam" not in text
    assert "1.0.3" in text and "23, 443" in text
    screenshot(page, "devices.png")
    page.goto(f"{site.url}/devices/neighbours-cam")
    assert "Not found" in page.content()
    context.close()


def test_admin_explains_a_policy_decision(site: Site, browser: Browser) -> None:
    accounts = site.accounts()
    info, _ = accounts.create_user(cli_actor(), "ops@example.com", STRONG, admin=True)
    enrolment = accounts.begin_totp(info.id)
    accounts.confirm_totp(info.id, pyotp.TOTP(enrolment.secret).now())
    context = _context(browser)
    page = context.new_page()
    _password_step(page, site, "ops@example.com")
    _code_step(page, pyotp.TOTP(enrolment.secret).at(time.time() + 30))  # the enrolment spent this step's code
    page.wait_for_url(re.compile(r"/devices$"))
    page.goto(f"{site.url}/admin/policies")
    page.fill("input[name=thing]", "front-door-cam")
    page.select_option("select[name=action]", "subscribe")
    page.fill("input[name=topic]", "things/garden-cam/#")
    page.click("main button:has-text('Explain')")
    page.locator("#decision").wait_for()
    assert "DENY" in page.locator("#decision").inner_text()
    screenshot(page, "admin-explain.png")
    context.close()


def test_the_csp_blocks_a_script_injected_into_a_page(site: Site, browser: Browser) -> None:
    context = _context(browser)
    page = context.new_page()
    page.goto(f"{site.url}/login")
    before = len(CSP_VIOLATIONS)
    page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.pwned = 1';"
        " document.body.append(s); }"
    )
    assert wait_for(lambda: len(CSP_VIOLATIONS) > before, 5)
    assert page.evaluate("() => window.pwned") is None
    del CSP_VIOLATIONS[before:]  # the violation we caused on purpose
    context.close()


def test_no_page_broke_the_content_security_policy() -> None:
    """Runs last in this module (pytest keeps file order): the pages the tests above opened."""
    assert CSP_VIOLATIONS == []
