"""`thingward serve` keeps the short-lived OTA timestamp signed, with the online key only."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time

from thingward.ota.repository import OtaRepository
from thingward.server import ThingwardServer


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
        deadline = time.monotonic() + 10
        while repo.timestamp().signed.version == stale.version and time.monotonic() < deadline:
            time.sleep(0.05)
        fresh = repo.timestamp().signed
        assert fresh.version == stale.version + 1
        assert fresh.expires >= now + repo.lifetimes.timestamp
        repo.root().verify_delegate("timestamp", repo.timestamp())
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
