"""The whole app journey as a new user of `thingward demo` lives it, in a real browser.

The demo is started as a user would (`thingward demo`), it says where to sign in and the first admin's
one-time password; chromium signs in, is made to choose a password and set up 2FA, and then the demo's
motion camera's marked snapshot appears live on the page: device identity, upload over mutual TLS, MQTT
event, analysis in the cloud and the push to the owner's browser, end to end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyotp
import pytest

from lab.browser import chromium, screenshot
from thingward.cli.demo import DEMO_CAMERAS, DEMO_MOTION_CAMERA

if TYPE_CHECKING := False:  # playwright is imported lazily by lab.browser (a machine without chromium skips)
    from playwright.sync_api import Browser

NEW_PASSWORD = "a porch light left on for the night owls"
READY_WITHIN = 90.0


def _ready_line(stderr: IO[str], deadline: float) -> dict[str, Any]:
    """The demo's `{"event": "ready", ...}` line on stderr (its logs come there too)."""
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = stderr.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith('{"event": "ready"'):
            ready: dict[str, Any] = json.loads(line)
            return ready
    raise AssertionError("the demo never said where to sign in; its stderr:\n" + "".join(seen[-30:]))


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "thingward.cli.main", "demo", "--data-dir", str(tmp_path / "demo"), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stderr is not None
        yield process, _ready_line(process.stderr, time.monotonic() + READY_WITHIN)["web"]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def test_the_demo_shows_a_motion_notification_to_its_first_admin(
    demo: tuple[subprocess.Popen[str], dict[str, Any]], browser: Browser
) -> None:
    process, web = demo
    assert web["household"] is True
    password = web["admin_password"]
    context = browser.new_context(ignore_https_errors=True)  # the demo's own CA signed the server certificate
    page = context.new_page()
    try:
        # 1. The one-time password works once, and only to choose a new one and set up 2FA.
        page.goto(web["url"])
        page.fill("input[name=email]", web["admin_email"])
        page.fill("input[name=password]", password)
        page.click("form[action='/login'] button[type=submit]")
        page.wait_for_url("**/account/setup")
        page.fill("input[name=current_password]", password)
        page.fill("input[name=new_password]", NEW_PASSWORD)
        page.click("main button[type=submit]")
        page.wait_for_selector("text=Set up two-factor authentication")
        page.goto(web["url"].removesuffix("/login") + "/devices")
        assert page.url.endswith("/account/setup")  # nothing else before 2FA
        page.click("button:has-text('Set up two-factor authentication')")
        secret = page.locator("#totp-secret").inner_text().strip()
        page.fill("input[name=code]", pyotp.TOTP(secret.replace(" ", "")).now())
        page.click("main button[type=submit]")
        page.click("a:has-text('I have saved them')")

        # 2. The household's cameras are listed, and the motion camera's marked snapshot arrives live.
        page.goto(web["url"].removesuffix("/login") + "/devices")
        for name in [*DEMO_CAMERAS, DEMO_MOTION_CAMERA]:
            assert page.locator(f"text={name}").count() >= 1, name
        page.wait_for_selector(".tw-status[data-state='live']", timeout=15_000)
        page.wait_for_selector(f".tw-notification[data-thing='{DEMO_MOTION_CAMERA}'] .tw-region", timeout=30_000)
        snapshot = page.locator(f".tw-notification[data-thing='{DEMO_MOTION_CAMERA}'] .tw-snapshot").first
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (snapshot.bounding_box() or {}).get("height"):
            page.wait_for_timeout(100)
        assert (snapshot.bounding_box() or {}).get("height", 0) > 0, "the snapshot image never loaded"
        screenshot(page, "demo-notification.png")
    finally:
        context.close()

    # 3. The demo ends cleanly on Ctrl-C and says what happened.
    process.send_signal(signal.SIGINT)
    out, _err = process.communicate(timeout=90)
    assert process.returncode == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["motion_camera"]["name"] == DEMO_MOTION_CAMERA
    assert summary["motion_camera"]["motion_events"] >= 1
    assert summary["motion_camera"]["errors"] == 0
