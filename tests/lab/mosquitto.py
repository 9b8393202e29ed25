"""Managed Mosquitto in the test lab: the real `mosquitto` process, driven by ManagedMosquitto on its own loop.

Like `lab.mqtt.BrokerHarness` for the embedded broker: the adapter runs on an event loop in a daemon
thread, its accepted messages land in a queue, and `close()` stops the process. Skips the test when
Debian's mosquitto is not installed (scripts/install.sh installs it for CI).
"""

from __future__ import annotations

import asyncio
import queue
import shutil
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from lab.mqtt import WAIT, Pki
from thingward.broker.base import BrokerLimits, InboundMessage
from thingward.broker.mosquitto import ManagedMosquitto
from thingward.policy.engine import PolicyEngine


def require_mosquitto() -> None:
    if shutil.which("mosquitto") is None:
        pytest.skip("Debian's mosquitto is not installed (scripts/install.sh installs it)")


class MosquittoHarness:
    """A ManagedMosquitto on its own event loop in a daemon thread, deciding from `engine`'s world."""

    def __init__(self, pki: Pki, engine: PolicyEngine, work_dir: Path, **overrides: Any) -> None:
        require_mosquitto()
        self.engine = engine
        self.messages: queue.Queue[InboundMessage] = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mosquitto-loop", daemon=True)
        self.thread.start()
        kwargs: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "tls": pki.tls,
            "limits": BrokerLimits(),
            "authorizer": engine,
            "world": lambda: engine.world,
            "ca": lambda: pki.ca,
            "work_dir": work_dir,
            "on_message": self.messages.put,
        }
        kwargs.update(overrides)
        self.broker = ManagedMosquitto(**kwargs)
        try:
            self.call(self.broker.start(), timeout=30)
        except BaseException:
            self._stop_loop()
            raise

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Callable[[], Any], timeout: float = WAIT) -> Any:
        async def wrapper() -> Any:
            return fn()

        return self.call(wrapper(), timeout)

    @property
    def port(self) -> int:
        return self.broker.port

    def next_message(self, timeout: float = WAIT) -> InboundMessage:
        return self.messages.get(timeout=timeout)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run(predicate):
                return True
            threading.Event().wait(0.02)
        return bool(self.run(predicate))

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()

    def close(self) -> None:
        try:
            self.call(self.broker.stop(), timeout=20)
        finally:
            self._stop_loop()
