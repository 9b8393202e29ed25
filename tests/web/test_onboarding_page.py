"""The "Add a device" page over the real HTTPS app: it mints a claim for the signed-in person and the
label's device id only, never takes the label's secret code, and follows the claim until a real device
enrollment (a CSR) makes the device that person's. Then the same in a real browser (chromium)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import closing

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from lab.accounts import PASSWORD
from lab.browser import chromium, screenshot
from thingward.device.onboarding.label import new_label
from thingward.pki.keystore import build_csr_with_key
from thingward.registry.models import ClaimToken, User

from .conftest import WebApp

if TYPE_CHECKING := False:
    from playwright.sync_api import Browser, BrowserContext, Page

ALICE = "alice@example.com"
BOB = "bob@example.com"


def _signed_in(web: WebApp, email: str) -> tuple[httpx.Client, str]:
    web.add_user(email)
    client = web.client()
    return client, web.sign_in(client, email)


def _user_id(web: WebApp, email: str) -> int:
    with web.platform.db.read() as session:
        return int(session.execute(select(User.id).where(User.email == email)).scalar_one())


def _claims(web: WebApp) -> list[ClaimToken]:
    with web.platform.db.read() as session:
        return list(session.execute(select(ClaimToken)).scalars())


def _claim_of(html: str) -> tuple[int, str]:
    found = re.search(r'data-claim-id="(\d+)"', html)
    token = re.search(r"(twc_[A-Za-z0-9_-]+)", html)
    assert found and token, "the page shows no claim"
    return int(found.group(1)), token.group(1)


def _enroll(client: httpx.Client, claim_token: str, device_id: str) -> httpx.Response:
    csr = build_csr_with_key(ec.generate_private_key(ec.SECP256R1()), device_id).decode()
    return client.post("/api/v1/claims/enroll", json={"claim_token": claim_token, "device_id": device_id, "csr": csr})


def test_the_page_is_for_signed_in_people_only(web: WebApp) -> None:
    with web.client() as anonymous:
        page = anonymous.get("/devices/add")
        assert page.status_code == 303 and page.headers["location"] == "/login"
        posted = anonymous.post("/devices/add", data={"device_id": "cam-anon"})
        assert posted.status_code == 303 and posted.headers["location"] == "/login"
    assert _claims(web) == []


def test_the_page_mints_a_claim_for_the_signed_in_person_and_that_device_only(web: WebApp) -> None:
    alice, csrf = _signed_in(web, ALICE)
    bob, _ = _signed_in(web, BOB)
    with closing(alice), closing(bob):
        assert 'href="/devices/add"' in alice.get("/devices").text  # linked from the devices page
        form = alice.get("/devices/add")
        assert form.status_code == 200 and 'name="device_id"' in form.text
        no_csrf = alice.post("/devices/add", data={"device_id": "cam-1"})
        assert no_csrf.status_code == 403
        assert _claims(web) == []
        minted = alice.post("/devices/add", data={"csrf_token": csrf, "device_id": "cam-1"})
        assert minted.status_code == 201, minted.text
        claim_id, token = _claim_of(minted.text)
        assert f"--url {web.url} --claim-token-file claim.txt" in minted.text
        assert "TW1:cam-1:CODE-ON-THE-LABEL" in minted.text
        [row] = _claims(web)
        assert (row.id, row.device_id, row.user_id) == (claim_id, "cam-1", _user_id(web, ALICE))
        assert alice.get(f"/api/v1/claims/{claim_id}").json()["state"] == "pending"
        # Bob cannot follow Alice's claim, and a device presenting it under another id is refused.
        assert bob.get(f"/api/v1/claims/{claim_id}").status_code == 404
        assert _enroll(bob, token, "cam-2").status_code == 403
        assert alice.get(f"/api/v1/claims/{claim_id}").json()["state"] == "pending"


def test_a_malformed_device_id_is_refused_with_what_to_type(web: WebApp) -> None:
    alice, csrf = _signed_in(web, ALICE)
    with closing(alice):
        for bad in ("", "Front Door", "cam/1", "x" * 65):
            refused = alice.post("/devices/add", data={"csrf_token": csrf, "device_id": bad})
            assert refused.status_code == 400, bad
            assert "invalid device id name" in refused.text
            assert "the part of the label between" in refused.text
    assert _claims(web) == []


def test_a_whole_label_is_refused_and_its_code_never_echoed(web: WebApp) -> None:
    alice, csrf = _signed_in(web, ALICE)
    label = new_label("cam-1").code()
    code = label.rsplit(":", 1)[1]
    with closing(alice):
        for sent in (label, label.lower(), "cam-1:" + code):
            refused = alice.post("/devices/add", data={"csrf_token": csrf, "device_id": sent})
            assert refused.status_code == 400
            assert "that is the whole label: send only the device id" in refused.text
            assert code not in refused.text and code.lower() not in refused.text
    assert _claims(web) == []


def test_the_claim_is_enrolled_after_a_real_device_enrollment(web: WebApp) -> None:
    alice, csrf = _signed_in(web, ALICE)
    with closing(alice), web.client() as device:
        minted = alice.post("/devices/add", data={"csrf_token": csrf, "device_id": "cam-7"})
        claim_id, token = _claim_of(minted.text)
        enrolled = _enroll(device, token, "cam-7")
        assert enrolled.status_code == 201, enrolled.text
        status = alice.get(f"/api/v1/claims/{claim_id}").json()
        assert (status["state"], status["thing"]) == ("enrolled", "cam-7")
        assert alice.get("/devices/cam-7").status_code == 200  # the device page the status links to
        assert _enroll(device, token, "cam-7").status_code == 403  # used once


@pytest.fixture
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def _browser(browser: Browser) -> tuple[BrowserContext, Page, list[str], list[str]]:
    """A new browser context and page; what the CSP blocked, and every request sent (with its body)."""
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1100, "height": 900})
    context.set_default_timeout(10_000)
    violations: list[str] = []
    context.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    sent: list[str] = []
    context.on("request", lambda r: sent.append(f"{r.method} {r.url} {r.post_data or ''}"))
    return context, context.new_page(), violations, sent


def _browser_sign_in(page: Page, web: WebApp, email: str) -> None:
    web.add_user(email)
    before = len(web.inbox.to(email))
    page.goto(f"{web.url}/devices/add")
    page.wait_for_url(re.compile(r"/login$"))  # not signed in: to the sign-in page
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_url(re.compile(r"/login/verify$"))
    page.fill("input[name=code]", web.mailed_code(email, before))
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r"/devices$"))
    page.click("a:has-text('Add a device')")
    page.wait_for_url(re.compile(r"/devices/add$"))


def _get_claim(page: Page, label: str) -> str:
    page.fill("#label-code", label)
    page.click("#add-device button[type=submit]")
    page.wait_for_selector("#claim-token")
    return page.inner_text("#claim-token").strip()


def test_in_a_browser_paste_the_label_get_the_command_and_see_the_device_enrolled(
    web: WebApp, browser: Browser
) -> None:
    label = new_label("porch-cam").code()
    code = label.rsplit(":", 1)[1]
    context, page, violations, sent = _browser(browser)
    try:
        _browser_sign_in(page, web, ALICE)
        page.fill("#label-code", "TW1:porch-cam:ABC")
        assert "not 16" in page.inner_text("#label-feedback")
        page.fill("#label-code", label)
        assert page.input_value("#device-id") == "porch-cam"
        assert "the code stays here" in page.inner_text("#label-feedback")
        token = _get_claim(page, label)
        assert token.startswith("twc_")
        assert "--claim-token-file claim.txt" in page.inner_text("#onboard-command")
        page.wait_for_selector("#claim-status:has-text('Waiting for the device')")

        with web.client() as device:
            assert _enroll(device, token, "porch-cam").status_code == 201
        page.wait_for_selector("#claim-status:has-text('Enrolled: porch-cam is now yours')")
        assert page.get_attribute("#claim-status a", "href") == "/devices/porch-cam"
        screenshot(page, "onboarding-page.png")
        page.click("#claim-status a")
        page.wait_for_url(re.compile(r"/devices/porch-cam$"))
    finally:
        context.close()
    assert any("POST" in s and "device_id=porch-cam" in s for s in sent)
    assert not [s for s in sent if code in s or code.lower() in s], "the label's code left the browser"
    assert not violations, violations


def test_in_a_browser_an_expired_claim_says_start_again(web: WebApp, browser: Browser) -> None:
    context, page, violations, _ = _browser(browser)
    try:
        _browser_sign_in(page, web, BOB)
        token = _get_claim(page, new_label("cam-late").code())
        page.wait_for_selector("#claim-status:has-text('Waiting for the device')")
        with web.platform.db.session() as session:
            row = session.execute(select(ClaimToken)).scalar_one()
            row.expires_at = row.created_at  # the claim ran out
        page.wait_for_selector("#claim-status:has-text('Expired')")
        assert page.get_attribute("#claim-status a", "href") == "/devices/add"
        with web.client() as device:
            assert _enroll(device, token, "cam-late").status_code == 403
    finally:
        context.close()
    assert not violations, violations
