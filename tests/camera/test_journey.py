"""The camera journey end to end, through the real doors: `thingward serve` in its own process, the camera as
`thingward camera simulate` in another (enrolled over HTTPS, uploading over mutual TLS, publishing over
MQTT), and the owner's open page as a server-sent events stream with a real session cookie."""

from __future__ import annotations

import dataclasses
import io
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from lab.accounts import FAST, PASSWORD, Inbox, signed_in
from lab.served import THINGWARD, serving
from thingward.accounts import sharing
from thingward.accounts.mail import SmtpMailer
from thingward.accounts.service import Accounts, utc_now
from thingward.app.session import SESSION_COOKIE
from thingward.config import SmtpSettings
from thingward.platform import Platform, cli_actor, init_data_dir
from thingward.registry import things

CAMERA = "front-door-cam"


@dataclasses.dataclass
class People:
    owner: str  # session tokens
    stranger: str


def _people(platform: Platform, inbox: Inbox, smtp: SmtpSettings) -> People:
    """Alice in the Smith household, which owns the camera; Mallory in another household."""
    accounts = Accounts(platform.db, FAST, SmtpMailer(smtp), utc_now)
    actor = cli_actor()
    for email, household in (("alice@example.com", "smiths"), ("mallory@example.com", "joneses")):
        accounts.create_user(actor, email, PASSWORD, name=email.split("@")[0])
        with platform.db.session() as session:
            sharing.add_user_group(session, actor, household)
            sharing.add_member(session, actor, household, sharing_user(session, email))
    with platform.db.session() as session:
        things.add_thing(session, actor, CAMERA, [things.DEFAULT_GROUP])
        sharing.share_thing(session, actor, CAMERA, "smiths", "viewer")
    owner = signed_in(accounts, inbox, "alice@example.com").session_token
    stranger = signed_in(accounts, inbox, "mallory@example.com").session_token
    assert owner and stranger
    return People(owner, stranger)


def sharing_user(session, email: str):  # type: ignore[no-untyped-def]
    from thingward.accounts.service import user_by_email

    return user_by_email(session, email)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    init_data_dir(tmp_path / "data")
    yield tmp_path / "data"


def _get(api: str, ca: Path, path: str, token: str | None) -> httpx.Response:
    cookies = {"Cookie": f"{SESSION_COOKIE}={token}"} if token else {}
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=10) as client:
        return client.get(f"{api}{path}", headers=cookies)


def test_motion_reaches_the_owners_open_page_with_the_marked_snapshot_and_nobody_else(
    data_dir: Path, smtp: tuple[Inbox, SmtpSettings], sse: type
) -> None:
    platform = Platform.open(data_dir)
    try:
        people = _people(platform, *smtp)
    finally:
        platform.close()
    with serving(data_dir) as server:
        stream = f"{server.api}/api/v1/notifications/stream"
        owner_page = sse(stream, people.owner, server.ca)
        stranger_page = sse(stream, people.stranger, server.ca)
        anonymous_page = sse(stream, None, server.ca)
        assert owner_page.status == 200, owner_page.error
        assert owner_page.content_type.startswith("text/event-stream")
        assert stranger_page.status == 200
        assert anonymous_page.status == 401

        camera = subprocess.run(
            [
                *THINGWARD,
                "camera",
                "simulate",
                CAMERA,
                "--data-dir",
                str(data_dir),
                "--api",
                server.api,
                "--device-api",
                server.device_api,
                "--mqtt",
                f"{server.mqtt_host}:{server.mqtt_port}",
                "--interval",
                "0.2",
                "--count",
                "1",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert camera.returncode == 0, camera.stderr
        assert '"motion_events": 1' in camera.stdout and '"errors": 0' in camera.stdout

        assert owner_page.wait_for_events(1, timeout=5), (owner_page.events, owner_page.error)
        seen = owner_page.events[0]
        assert seen["thing"] == CAMERA and seen["event_type"] == "motion"
        assert seen["image"] == {"width": 640, "height": 480}
        region = seen["region"]
        # A person is a sixth of the frame or less, and stands on the lawn (the lower 45 %).
        assert 0 < region["width"] * region["height"] < 640 * 480 / 6
        assert region["y"] + region["height"] > 480 * 0.55
        assert 0 < seen["changed_fraction"] < 0.2

        snapshot = _get(server.api, server.ca, seen["snapshot_url"], people.owner)
        assert snapshot.status_code == 200 and snapshot.headers["content-type"] == "image/jpeg"
        marked = _get(server.api, server.ca, seen["annotated_url"], people.owner)
        assert marked.status_code == 200
        image = Image.open(io.BytesIO(marked.content)).convert("RGB")
        red, green, _ = image.getpixel((region["x"] + 1, region["y"] + region["height"] // 2))
        assert red > 180 and green < 100, "the changed region is outlined in red"

        listed = _get(server.api, server.ca, "/api/v1/notifications", people.owner).json()["notifications"]
        assert [n["id"] for n in listed] == [seen["id"]]

        # The other household: nothing on its page, nothing listed, the images are missing.
        assert not stranger_page.wait_for_events(1, timeout=1.0)
        assert _get(server.api, server.ca, "/api/v1/notifications", people.stranger).json() == {"notifications": []}
        for url in (seen["snapshot_url"], seen["annotated_url"]):
            assert _get(server.api, server.ca, url, people.stranger).status_code == 404
            assert _get(server.api, server.ca, url, None).status_code == 401
    # The server stopped: it ended the streams instead of waiting on them.
    owner_page.join()
    stranger_page.join()
    assert owner_page.done.is_set() and stranger_page.done.is_set()
