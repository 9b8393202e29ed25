"""Who is notified of a camera's motion, and what the live stream does: preferences, replays, another
camera's upload, resuming after a reconnect, the stream limit, and a stream outliving its session."""

from __future__ import annotations

import ssl
import time

import httpx
import pytest
from sqlalchemy import func, select

from thingward.accounts.service import Accounts, user_by_email
from thingward.app.session import SESSION_COOKIE
from thingward.device.camera import MotionCamera
from thingward.registry.models import MotionEvent, Notification

CAMERA = "cam-a"
# Recipients, preferences, the listing and the per-camera retention are SQL: tried on both databases.
pytestmark = pytest.mark.both_databases


def _api(lab, method: str, path: str, token: str, accounts: Accounts, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
    headers = {"Cookie": f"{SESSION_COOKIE}={token}", "X-CSRF-Token": accounts.csrf_token(token)}
    context = ssl.create_default_context(cafile=str(lab.platform.ca_certificate_path))
    with httpx.Client(verify=context, timeout=10) as client:
        return client.request(method, f"{lab.endpoints.api}{path}", headers=headers, **kwargs)


def _count(lab, model) -> int:  # type: ignore[no-untyped-def]
    with lab.platform.db.read() as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def _wait(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def _notified(lab, email: str) -> int:  # type: ignore[no-untyped-def]
    with lab.platform.db.read() as session:
        user = user_by_email(session, email)
        return int(session.execute(select(func.count()).where(Notification.user_id == user.id)).scalar_one())


def test_a_person_who_turned_motion_off_is_not_notified(lab, home, camera: MotionCamera) -> None:
    off = [{"thing": CAMERA, "event_type": "motion", "enabled": False}]
    response = _api(lab, "PUT", "/api/v1/notifications/preferences", home.bob, home.accounts, json={"preferences": off})
    assert response.status_code == 200, response.text
    assert response.json()["preferences"] == off
    mine = _api(lab, "GET", "/api/v1/notifications/preferences", home.alice, home.accounts).json()["preferences"]
    assert mine == [{"thing": CAMERA, "event_type": "motion", "enabled": True}]  # on by default

    camera.motion((320, 420))
    assert _wait(lambda: _notified(lab, "alice@example.com") == 1)
    assert _notified(lab, "bob@example.com") == 0
    assert _notified(lab, "mallory@example.com") == 0


def test_preferences_for_a_thing_one_cannot_see_are_a_404(lab, home) -> None:
    body = {"preferences": [{"thing": CAMERA, "event_type": "motion", "enabled": False}]}
    response = _api(lab, "PUT", "/api/v1/notifications/preferences", home.mallory, home.accounts, json=body)
    assert response.status_code == 404
    assert _api(lab, "GET", "/api/v1/notifications/preferences", home.mallory, home.accounts).json() == {
        "preferences": []
    }
    bad = {"preferences": [{"thing": CAMERA, "event_type": "doorbell", "enabled": False}]}
    response = _api(lab, "PUT", "/api/v1/notifications/preferences", home.alice, home.accounts, json=bad)
    assert response.status_code == 400 and "event_type must be one of motion" in response.text


def test_a_replayed_motion_event_notifies_nobody_twice(lab, home, camera: MotionCamera) -> None:
    stored = camera.motion((200, 400))
    assert _wait(lambda: _notified(lab, "alice@example.com") == 1)
    for _ in range(3):
        camera.device.publish_event("motion", {"upload_id": stored["upload_id"]}).wait_for_publish(5)
    time.sleep(0.5)  # the worker had time to look at the replays
    assert _count(lab, MotionEvent) == 1
    assert _notified(lab, "alice@example.com") == 1


def test_a_motion_event_naming_another_cameras_upload_is_ignored(lab, home, camera: MotionCamera) -> None:
    other = MotionCamera("cam-b", lab.enroll("cam-b"), "127.0.0.1", lab.mqtt_port, lab.device_api, seed=8)
    try:
        theirs = other.start()
        # cam-a claims cam-b's snapshot for its own motion event: the topic is cam-a's, the upload is not.
        camera.device.publish_event("motion", {"upload_id": theirs["upload_id"]}).wait_for_publish(5)
        mine = camera.motion((100, 450))  # a real one after it: once it is analysed, the forged one was seen
        assert _wait(lambda: _count(lab, MotionEvent) == 1)
    finally:
        other.close()
    with lab.platform.db.read() as session:
        event = session.execute(select(MotionEvent)).scalar_one()
    assert event.snapshot_id == mine["snapshot_id"] != theirs["snapshot_id"]


def test_a_reconnecting_page_gets_what_it_missed(lab, home, camera: MotionCamera, sse: type) -> None:
    camera.motion((300, 420))
    assert _wait(lambda: _notified(lab, "alice@example.com") == 1)
    url, ca = f"{lab.endpoints.api}/api/v1/notifications/stream", lab.platform.ca_certificate_path
    fresh = sse(url, home.alice, ca)
    resumed = sse(url, home.alice, ca, last_event_id="0")
    assert resumed.wait_for_events(1, timeout=5)
    assert resumed.events[0]["thing"] == CAMERA and resumed.events[0]["region"] is not None
    assert fresh.events == []  # without Last-Event-ID: only what happens from now on
    mallory = sse(url, home.mallory, ca, last_event_id="0")
    assert not mallory.wait_for_events(1, timeout=0.5)


def test_a_person_may_hold_only_so_many_streams(lab, home, sse: type) -> None:
    lab.server.camera.hub.max_per_person = 2
    url, ca = f"{lab.endpoints.api}/api/v1/notifications/stream", lab.platform.ca_certificate_path
    pages = [sse(url, home.alice, ca) for _ in range(3)]
    assert [p.status for p in pages] == [200, 200, 429]
    assert sse(url, home.bob, ca).status == 200  # the limit is per person


def test_a_stream_ends_with_its_session(lab, home, sse: type, monkeypatch: pytest.MonkeyPatch) -> None:
    from thingward.app import camera_api

    monkeypatch.setattr(camera_api, "HEARTBEAT_SECONDS", 0.2)
    page = sse(f"{lab.endpoints.api}/api/v1/notifications/stream", home.alice, lab.platform.ca_certificate_path)
    assert _wait(lambda: page.comments >= 1, timeout=5), "heartbeats flow while the session lives"
    assert not page.done.is_set()
    home.accounts.logout(home.alice)
    assert page.done.wait(5), "the stream ended at the first heartbeat after sign-out"


def test_expired_snapshots_take_their_analyses_and_notifications_with_them(lab, home, camera: MotionCamera) -> None:
    from thingward.camera.service import CameraSettings
    from thingward.camera.uploads import UploadLimits

    lab.server.camera.settings = CameraSettings(uploads=UploadLimits(keep_per_camera=2))
    first = camera.motion((150, 420))
    assert _wait(lambda: _analysed(lab, first["snapshot_id"]))
    second = camera.motion((450, 420))
    assert _wait(lambda: _analysed(lab, second["snapshot_id"]))
    third = camera.motion((300, 460))  # this upload pushes the first motion snapshot out
    assert _wait(lambda: _analysed(lab, third["snapshot_id"]))
    assert not _analysed(lab, first["snapshot_id"])
    assert _count(lab, MotionEvent) == 2
    assert _notified(lab, "alice@example.com") == 2
    listed = _api(lab, "GET", "/api/v1/notifications", home.alice, home.accounts).json()["notifications"]
    assert [n["snapshot_id"] for n in listed] == [third["snapshot_id"], second["snapshot_id"]]
    gone = _api(lab, "GET", f"/api/v1/snapshots/{first['snapshot_id']}", home.alice, home.accounts)
    assert gone.status_code == 404


def _analysed(lab, snapshot_id: int) -> bool:  # type: ignore[no-untyped-def]
    with lab.platform.db.read() as session:
        found = session.execute(select(MotionEvent.id).where(MotionEvent.snapshot_id == snapshot_id)).first()
    return found is not None


def test_a_closed_page_gives_its_stream_back(lab, home) -> None:
    """A page closed (or reloaded) frees its place at once: else eight reloads would lock a person out."""
    import socket

    hub = lab.server.camera.hub
    context = ssl.create_default_context(cafile=str(lab.platform.ca_certificate_path))
    host, port = lab.endpoints.api.removeprefix("https://").rsplit(":", 1)
    request = (
        f"GET /api/v1/notifications/stream HTTP/1.1\r\nHost: {host}\r\n"
        f"Cookie: {SESSION_COOKIE}={home.alice}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    for _ in range(hub.max_per_person + 2):
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=host) as page,
        ):
            page.sendall(request)
            received = b""
            while b"retry: 3000" not in received:
                received += page.recv(4096)
            assert received.startswith(b"HTTP/1.1 200")
            time.sleep(0.3)
            assert hub.stream_count() == 1, _
        assert _wait(lambda: hub.stream_count() == 0, timeout=5)
