"""The camera tests' lab: the whole server in this process (broker, API, device listener) over a fresh data
dir, and devices enrolled through the same service functions `thingward device add/enroll` use."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.accounts import FAST, PASSWORD, Inbox, signed_in
from lab.devices import enroll_device
from thingward.accounts import sharing
from thingward.accounts.mail import SmtpMailer
from thingward.accounts.service import Accounts, user_by_email, utc_now
from thingward.config import SmtpSettings
from thingward.device.camera import MotionCamera
from thingward.platform import cli_actor

WAIT = 10.0


class MovableClock:
    """The camera service's clock: real time plus however far a test moved it."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += dt.timedelta(seconds=seconds)


class CameraLab:
    """ThingwardServer on a loop thread of its own; `enroll` makes a device dir (key, certificate, CA)."""

    def __init__(self, data_dir: Path, database_url: str | None = None) -> None:
        from thingward.platform import Platform, init_data_dir
        from thingward.server import ThingwardServer

        init_data_dir(data_dir, database_url=database_url)
        self.platform = Platform.open(data_dir)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="camera-lab-loop", daemon=True)
        self.thread.start()
        self.server = ThingwardServer(self.platform, "127.0.0.1", 0, 0)
        self.clock = MovableClock()
        self.server.camera.clock = self.clock
        self.endpoints = self.call(self.server.start(), timeout=30)
        self.devices = data_dir.parent / "devices"

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def device_api(self) -> str:
        return str(self.endpoints.device_api)

    @property
    def mqtt_port(self) -> int:
        return int(self.server.broker.port)

    def enroll(self, name: str) -> Path:
        directory = enroll_device(self.platform, name, self.devices / name)
        self.sync()
        return directory

    def sync(self) -> None:
        """What the 0.25 s watcher does, now: policies and CRL reloaded, sessions dropped."""
        self.call(self.server.apply_changes(force=True))

    def close(self) -> None:
        try:
            self.call(self.server.stop(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()
            self.platform.close()


@pytest.fixture
def lab(tmp_path: Path, database_url: str | None) -> Iterator[CameraLab]:
    """SQLite, or PostgreSQL in the PostgreSQL run of a test marked both_databases."""
    started = CameraLab(tmp_path / "data", database_url)
    try:
        yield started
    finally:
        started.close()


class SseReader:
    """A page's EventSource, as a thread: reads `url` with the session cookie and keeps each event's data."""

    def __init__(self, url: str, session_token: str | None, ca: Path, last_event_id: str | None = None) -> None:
        from thingward.app.session import SESSION_COOKIE

        self.url = url
        self.headers = {"Cookie": f"{SESSION_COOKIE}={session_token}"} if session_token else {}
        if last_event_id is not None:  # what a browser's EventSource sends when it reconnects
            self.headers["Last-Event-ID"] = last_event_id
        self.ca = ca
        self.status: int | None = None
        self.events: list[dict[str, Any]] = []
        self.comments = 0
        self.error: BaseException | None = None
        self.opened = threading.Event()
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sse-reader", daemon=True)
        self._thread.start()
        assert self.opened.wait(WAIT), "the stream did not answer"

    def _run(self) -> None:
        import json

        import httpx

        try:
            context = ssl.create_default_context(cafile=str(self.ca))
            with (
                httpx.Client(verify=context, timeout=httpx.Timeout(WAIT, read=40)) as client,
                client.stream("GET", self.url, headers=self.headers) as response,
            ):
                self.status = response.status_code
                self.content_type = response.headers.get("content-type", "")
                self.opened.set()
                if response.status_code != 200:
                    return
                kind, data = "message", []
                for line in response.iter_lines():
                    if line.startswith(":"):
                        self.comments += 1
                    elif line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line == "" and data:
                        if kind == "notification":
                            self.events.append(json.loads("\n".join(data)))
                        kind, data = "message", []
        except Exception as e:  # the server went away: kept for the test to look at, never raised in a thread
            self.error = e
        finally:
            self.opened.set()
            self.done.set()

    def wait_for_events(self, count: int, timeout: float = WAIT) -> bool:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.events) < count and not self.done.is_set():
            time.sleep(0.05)
        return len(self.events) >= count

    def join(self, timeout: float = WAIT) -> None:
        self._thread.join(timeout)


@pytest.fixture
def sse() -> type[SseReader]:
    """The SseReader class (a conftest module cannot be imported by name)."""
    return SseReader


CAMERA = "cam-a"  # shared with the smiths (alice, bob); mallory is a jones


@dataclass
class Household:
    accounts: Accounts
    alice: str  # session tokens; alice and bob share the camera, mallory lives elsewhere
    bob: str
    mallory: str
    camera_dir: Path


@pytest.fixture
def home(lab, smtp: tuple[Inbox, SmtpSettings]) -> Household:
    inbox, settings = smtp
    accounts = Accounts(lab.platform.db, FAST, SmtpMailer(settings), utc_now)
    actor = cli_actor()
    camera_dir = lab.enroll(CAMERA)
    with lab.platform.db.session() as session:
        sharing.add_user_group(session, actor, "smiths")
        sharing.add_user_group(session, actor, "joneses")
        sharing.share_thing(session, actor, CAMERA, "smiths", "owner")
    for email, household in (
        ("alice@example.com", "smiths"),
        ("bob@example.com", "smiths"),
        ("mallory@example.com", "joneses"),
    ):
        accounts.create_user(actor, email, PASSWORD)
        with lab.platform.db.session() as session:
            sharing.add_member(session, actor, household, user_by_email(session, email))
    tokens = [
        signed_in(accounts, inbox, f"{who}@example.com").session_token or "" for who in ("alice", "bob", "mallory")
    ]
    return Household(accounts, *tokens, camera_dir)


@pytest.fixture
def camera(lab, home: Household) -> Iterator[MotionCamera]:
    started = MotionCamera(CAMERA, home.camera_dir, "127.0.0.1", lab.mqtt_port, lab.device_api, seed=7)
    started.start()
    try:
        yield started
    finally:
        started.close()
