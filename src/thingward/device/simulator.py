"""Simulated cameras: enrolled like real devices, they publish telemetry and motion events over mTLS."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from thingward.device.client import Device
from thingward.device.enroll import enroll
from thingward.device.state import DeviceState
from thingward.errors import NotFoundError
from thingward.platform import Platform, cli_actor
from thingward.registry import things


@dataclass
class CameraStats:
    telemetry: int = 0
    events: int = 0
    commands: int = 0
    last_event: str = ""
    log: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Provisioned:
    directory: Path
    enrolled_now: bool


def provision_cameras(
    platform: Platform, api_url: str, names: list[str], group: str | None = None
) -> dict[str, Provisioned]:
    """Register (if new), issue tokens for and enroll each camera that has no certificate yet."""
    out: dict[str, Provisioned] = {}
    actor = cli_actor()
    ttl = dt.timedelta(minutes=10)
    base = platform.settings.data_dir / "simulated"
    for name in names:
        directory = base / name
        if (directory / "device.crt").exists():
            out[name] = Provisioned(directory, enrolled_now=False)
            continue
        with platform.db.session() as session:
            try:
                things.get_thing(session, name)
            except NotFoundError:
                things.add_thing(session, actor, name, [group] if group else [])
            issued = things.create_enrollment_token(session, actor, name, ttl)
        enroll(api_url, issued.token, platform.ca_certificate_path, directory)
        out[name] = Provisioned(directory, enrolled_now=True)
    return out


SIMULATED_MODEL = "sim-cam"
SIMULATED_FIRMWARE = "1.0.0"


class SimulatedCamera:
    """A camera in a thread of its own: telemetry every `period` s, and motion now and then.

    On connecting it reports its state (firmware, listening ports, onboarding) like a real agent; being
    simulated, it reports the ports it is told to, not this host's.
    """

    def __init__(
        self,
        name: str,
        directory: Path,
        host: str,
        port: int,
        period: float = 1.0,
        seed: int | None = None,
        on_event: Callable[[str], None] | None = None,
        state: DeviceState | None = None,
    ) -> None:
        self.name = name
        self.state = state or DeviceState(model=SIMULATED_MODEL, firmware_version=SIMULATED_FIRMWARE)
        self._on_event = on_event
        self.stats = CameraStats()
        self.period = period
        self._rng = random.Random(seed)  # noqa: S311 - simulated readings
        self.device = Device.from_dir(directory, name, host=host, port=port, on_command=self._on_command)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{name}", daemon=True)

    def _on_command(self, topic: str, payload: bytes) -> None:
        self.stats.commands += 1
        self.stats.log.append(f"command {topic}")

    def start(self) -> None:
        self.device.connect()
        self.device.publish_state(self.state)
        self._thread.start()

    def _run(self) -> None:
        frame = 0
        while not self._stop.wait(self.period * self._rng.uniform(0.8, 1.2)):
            frame += 1
            self.device.publish_telemetry(
                {
                    "temperature_c": round(self._rng.uniform(30, 45), 1),
                    "uptime_s": int(time.monotonic()),
                    "frame": frame,
                }
            )
            self.stats.telemetry += 1
            if self._rng.random() < 0.3:
                zone = self._rng.choice(["front door", "driveway", "garden"])
                self.device.publish_event(
                    "motion", {"zone": zone, "confidence": round(self._rng.uniform(0.6, 0.99), 2)}
                )
                self.stats.events += 1
                self.stats.last_event = f"motion at {zone}"
                if self._on_event is not None:
                    self._on_event(f"{self.name} -> things/{self.name}/events/motion: motion at {zone}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.device.close()
