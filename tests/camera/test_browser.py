"""A camera's motion event makes a notification with the image appear on an open page within a few seconds:
Debian's chromium (Playwright, never a downloaded browser) on the live notifications page, signed in with a
real session cookie, under the app's Content-Security-Policy."""

from __future__ import annotations

import time

import pytest

from lab.browser import chromium, screenshot
from thingward.app.session import SESSION_COOKIE
from thingward.device.camera import MotionCamera


def test_motion_appears_on_the_owners_open_page_with_the_marked_snapshot(lab, home, camera: MotionCamera) -> None:
    api = lab.endpoints.api
    with chromium() as browser:
        pages = {}
        violations: list[str] = []
        for who, token in (("alice", home.alice), ("mallory", home.mallory)):
            # The platform CA is not in chromium's store; the test trusts the server it just started.
            context = browser.new_context(ignore_https_errors=True, viewport={"width": 1000, "height": 760})
            context.add_cookies(
                [{"name": SESSION_COOKIE, "value": token, "url": api, "secure": True, "httpOnly": True}]
            )
            page = context.new_page()
            page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(f"{api}/notifications")
            page.wait_for_selector(".tw-status[data-state='live']", timeout=10_000)
            pages[who] = page

        started = time.monotonic()
        camera.motion((320, 430))
        alice = pages["alice"]
        alice.wait_for_selector(".tw-notification[data-thing='cam-a'] .tw-region", timeout=10_000)
        snapshot = alice.locator(".tw-notification .tw-snapshot")
        deadline = time.monotonic() + 10  # polled here: wait_for_function needs eval, which the CSP refuses
        while snapshot.evaluate("img => img.naturalWidth") != 640 and time.monotonic() < deadline:
            alice.wait_for_timeout(50)
        assert snapshot.evaluate("img => img.naturalWidth") == 640, "the marked snapshot loaded"
        took = time.monotonic() - started
        assert took < 5, f"the notification took {took:.1f} s to appear"
        caption = alice.inner_text(".tw-notification figcaption")
        assert "Motion at cam-a" in caption
        region = alice.get_attribute(".tw-region", "data-region")
        assert region is not None
        x, y, width, height = (int(v) for v in region.split(","))
        assert 250 < x + width / 2 < 390 and y + height > 300  # around where the person stands
        box = alice.locator(".tw-region").bounding_box()
        image = alice.locator(".tw-snapshot").bounding_box()
        assert box is not None and image is not None
        assert box["width"] == pytest.approx(image["width"] * width / 640, abs=2)  # drawn over the image
        screenshot(alice, "camera-notification.png")

        # Alice turns this camera's motion off on the page: saved at once, and the next motion is silent.
        alice.click(".tw-prefs summary")
        alice.uncheck("input[data-thing='cam-a'][data-event-type='motion']")
        alice.wait_for_selector("input[data-thing='cam-a'][data-saved='false']", timeout=5_000)
        assert lab.server.camera.preferences(_user_id(lab, "alice@example.com"))[0].enabled is False
        camera.motion((500, 440))
        assert _wait_analysed(lab, 2), "the second motion was analysed"
        alice.wait_for_timeout(300)
        assert alice.locator(".tw-notification").count() == 1

        mallory = pages["mallory"]
        mallory.wait_for_timeout(500)
        assert mallory.locator(".tw-notification").count() == 0
        assert mallory.is_visible(".tw-empty")
        assert violations == []


def _user_id(lab, email: str) -> int:  # type: ignore[no-untyped-def]
    from thingward.accounts.service import user_by_email

    with lab.platform.db.read() as session:
        return int(user_by_email(session, email).id)


def _wait_analysed(lab, count: int, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from thingward.registry.models import MotionEvent

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with lab.platform.db.read() as session:
            if session.execute(select(func.count()).select_from(MotionEvent)).scalar_one() >= count:
                return True
        time.sleep(0.05)
    return False
