"""OTA with `thingward serve` running: the timestamp kept signed, and a device whose health check is the broker."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from thingward.device.enroll import enroll
from thingward.device.update import FirmwareUpdater, broker_health_check
from thingward.ota import firmware
from thingward.ota.repository import OtaRepository
from thingward.registry import device_state, things
from thingward.registry.audit_log import Actor
from thingward.server import ThingwardServer

ACTOR = Actor("test", "pytest")


class Served:
    def __init__(self, server: ThingwardServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server, self.loop = server, loop

    def call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@pytest.fixture
def served(platform) -> Iterator[Served]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = ThingwardServer(platform, "127.0.0.1", 0, 0)
    running = Served(server, loop)
    try:
        running.call(server.start())
        yield running
    finally:
        running.call(server.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _wait(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_running_server_re_signs_a_timestamp_near_expiry(platform, repo: OtaRepository) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    repo.refresh(now=now - dt.timedelta(hours=4), force=["timestamp"])  # two hours left of six
    stale = repo.timestamp().signed
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = ThingwardServer(platform, "127.0.0.1", 0, 0)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
        assert _wait(lambda: repo.timestamp().signed.version != stale.version)
        fresh = repo.timestamp().signed
        assert fresh.version == stale.version + 1
        assert fresh.expires >= now + repo.lifetimes.timestamp
        repo.root().verify_delegate("timestamp", repo.timestamp())
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _reported_version(platform, name: str) -> str | None:
    with platform.db.read() as session:
        for latest in device_state.latest_reports(session):
            if latest.thing == name:
                return latest.report.firmware_version
    return None


def test_new_image_confirmed_when_the_device_reaches_the_broker_and_rolled_back_when_not(
    platform, repo: OtaRepository, served: Served, tmp_path: Path
) -> None:
    endpoints = served.server.endpoints()
    with platform.db.session() as session:
        things.add_thing(session, ACTOR, "cam1")
        token = things.create_enrollment_token(session, ACTOR, "cam1", dt.timedelta(hours=1)).token
    identity = tmp_path / "cam1-identity"
    enroll(endpoints.api, token, platform.ca_certificate_path, identity)
    device = FirmwareUpdater.provision(
        tmp_path / "cam1",
        (repo.metadata_dir / "1.root.json").read_bytes(),
        b"factory",
        "1.0.0",
        endpoints.api,
        platform.ca_certificate_path,
        "cam",
    )
    health = broker_health_check(identity, "cam1", "cam", "127.0.0.1", served.server.broker.port, timeout=5)
    for version in ("1.1.0", "1.2.0"):
        image = tmp_path / f"{version}.img"
        image.write_bytes(secrets.token_bytes(20_000))
        with platform.db.session() as session:
            firmware.publish_image(session, repo, ACTOR, image, "cam", version)
        if version == "1.1.0":
            booted, installed = device.cycle(health)
            assert (installed.status, booted.status, device.running_version) == ("installed", "confirmed", "1.1.0")
            assert _wait(lambda: _reported_version(platform, "cam1") == "1.1.0")
            # The device loses its identity: the next image cannot prove itself and is rolled back.
            platform.revoke(ACTOR, "cam1", "key_compromise")
            served.call(served.server.apply_changes(force=True))
    booted, installed = device.cycle(health)
    assert (installed.status, booted.status, device.running_version) == ("installed", "rolled_back", "1.1.0")
    assert "1.2.0 failed its health check" in booted.reason
