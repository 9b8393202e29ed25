"""The device agent's onboarding: from a box with no network to an enrolled, connected device.

With no stored Wi-Fi credentials the agent opens the provisioning service on its access-point address.
When the app applies, it joins the Wi-Fi (the backend), stores the credentials (0600), makes its key,
enrolls with the claim token and a CSR over HTTPS verified against the platform CA it was built with,
connects to the broker as itself and reports its state (onboarding `provisioned`). A button press (the
`button_press` method; SIGUSR1 in `thingward device onboard-agent`) re-opens the window, even online.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from thingward.device.client import Device
from thingward.device.enroll import CA_FILE, CERT_FILE, KEY_FILE, server_context
from thingward.device.onboarding.label import DeviceLabel
from thingward.device.onboarding.service import (
    PROVISIONING_PORT,
    DeviceInfo,
    ProvisioningRequest,
    ProvisioningService,
    utc_now,
)
from thingward.device.onboarding.wifi import WifiBackend, WifiJoinError
from thingward.device.state import DeviceState, listening_ports
from thingward.errors import EnrollmentRefusedError, ThingwardError
from thingward.pki.files import write_atomic, write_secret
from thingward.pki.keystore import FileKeyStore

logger = logging.getLogger(__name__)

WIFI_FILE = "wifi.json"
IDENTITY_DIR = "identity"
ENROLL_RETRY_SECONDS = 30.0  # the uplink may take a moment after the join
ENROLL_TIMEOUT = 15.0

EventSink = Callable[[str, dict[str, object]], None]


@dataclass(frozen=True)
class AgentConfig:
    label: DeviceLabel
    model: str
    ap_host: str
    state_dir: Path
    platform_url: str
    platform_ca: Path  # the platform's CA certificate, built into the firmware
    mqtt_host: str
    mqtt_port: int = 8883
    ap_port: int = PROVISIONING_PORT
    window: dt.timedelta = dt.timedelta(minutes=10)
    firmware_version: str = "1.0.0"


@dataclass
class AgentStatus:
    onboarding_state: str = "unprovisioned"  # unprovisioned | ap | provisioned (the device report's field)
    since: dt.datetime = field(default_factory=utc_now)
    thing: str | None = None
    error: str | None = None


def enroll_with_claim(config: AgentConfig, claim_token: str) -> str:
    """Make the key (0600, never leaves the device), send the CSR with the claim token; returns the name."""
    out = config.state_dir / IDENTITY_DIR
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = FileKeyStore(out / KEY_FILE)
    if not store.has_key():
        store.generate_key()
    device_id = config.label.device_id
    body = {"claim_token": claim_token, "device_id": device_id, "csr": store.build_csr(device_id).decode()}
    url = f"{config.platform_url.rstrip('/')}/api/v1/claims/enroll"
    deadline = time.monotonic() + ENROLL_RETRY_SECONDS
    while True:
        try:
            with httpx.Client(verify=server_context(config.platform_ca), timeout=ENROLL_TIMEOUT) as client:
                response = client.post(url, json=body)
            break
        except httpx.TransportError as e:
            if time.monotonic() >= deadline:
                raise ThingwardError(f"cannot reach the platform at {config.platform_url}: {e}") from e
            time.sleep(0.5)
    if response.status_code != 201:
        try:
            message = str(response.json().get("error", response.text))
        except ValueError:
            message = response.text
        if response.status_code == 403:
            raise EnrollmentRefusedError(message)
        raise ThingwardError(f"claim enrollment failed with HTTP {response.status_code}: {message}")
    answer = response.json()
    write_atomic(out / CERT_FILE, answer["certificate"].encode())
    write_atomic(out / CA_FILE, answer["ca_certificate"].encode())
    return str(answer["name"])


class OnboardingAgent:
    def __init__(self, config: AgentConfig, wifi: WifiBackend, events: EventSink | None = None) -> None:
        self.config = config
        self.wifi = wifi
        self.status = AgentStatus()
        self._events = events or (lambda _kind, _detail: None)
        self._claim_token = ""
        self.device: Device | None = None
        self.service = ProvisioningService(
            DeviceInfo(config.label.device_id, config.model), config.label.pop, config.ap_host, self._apply,
            port=config.ap_port, window=config.window,
        )  # fmt: skip

    # --- what the device tells the platform ---

    def device_state(self) -> DeviceState:
        return DeviceState(self.config.model, self.config.firmware_version, listening_ports(),
                           self.status.onboarding_state, self.status.since)  # fmt: skip

    def _set_state(self, state: str) -> None:
        if state != self.status.onboarding_state:
            self.status.onboarding_state, self.status.since = state, utc_now()
        if self.device is not None and self.device.connected:
            self.device.publish_state(self.device_state())

    # --- the steps ---

    @property
    def wifi_file(self) -> Path:
        return self.config.state_dir / WIFI_FILE

    @property
    def enrolled(self) -> bool:
        return (self.config.state_dir / IDENTITY_DIR / CERT_FILE).exists()

    async def _apply(self, request: ProvisioningRequest) -> None:
        """Called inside the session: join first, so a wrong passphrase is reported to the app. A new device
        needs a claim; an enrolled one (its button pressed to change the Wi-Fi) keeps its owner."""
        if not self.enrolled and not request.claim_token:
            raise ThingwardError("apply needs the claim token first (set_claim): the device has no owner yet")
        if self.enrolled and request.claim_token:
            raise ThingwardError(
                "this device is enrolled and keeps its owner: send only the new Wi-Fi, or have an operator "
                "release it before claiming it again"
            )
        await asyncio.to_thread(self.wifi.join, request.ssid, request.passphrase)
        write_secret(self.wifi_file, json.dumps({"ssid": request.ssid, "passphrase": request.passphrase}).encode())
        self._claim_token = request.claim_token
        self.service.online = True
        self._events("joined", {"ssid": request.ssid})

    async def run(self, stop: asyncio.Event, button: asyncio.Event | None = None) -> None:
        """Until `stop`: onboard if needed, then stay connected; `button` re-opens the window."""
        button = button or asyncio.Event()
        self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.wifi_file.exists():
            stored = json.loads(self.wifi_file.read_text())
            try:
                await asyncio.to_thread(self.wifi.join, stored["ssid"], stored["passphrase"])
                self.service.online = True
            except WifiJoinError as e:
                logger.warning("stored Wi-Fi did not join: %s", e)
        if not self.service.online:
            await self._open_window()
        elif self.enrolled:
            self.status.thing = self.config.label.device_id
            self._set_state("provisioned")
            await asyncio.to_thread(self._connect)
        try:
            while not stop.is_set():
                waiters = {asyncio.ensure_future(e.wait()) for e in (stop, button, self.service.applied,
                                                                       self.service.closed)}  # fmt: skip
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                if self.service.applied.is_set():
                    self.service.applied.clear()
                    await self._after_apply()
                if self.service.closed.is_set():
                    self.service.closed.clear()
                    self._events("window_closed", {"reason": self.service.window.state.value})
                    self._set_state("provisioned" if self.status.thing else "unprovisioned")
                if button.is_set():
                    button.clear()
                    await self.button_press()
        finally:
            await self.service.close_listener()
            if self.device is not None:
                self.device.close()

    async def _open_window(self) -> None:
        if await self.service.open():
            self._set_state("ap")
            self._events("window_open", {"host": self.service.host, "port": self.service.port})

    async def button_press(self) -> None:
        if await self.service.button_press():
            self._set_state("ap")
            self._events("window_open", {"host": self.service.host, "port": self.service.port, "button": True})

    async def _after_apply(self) -> None:
        self._set_state("provisioned")
        if not self._claim_token:  # an enrolled device on a new Wi-Fi: reconnect as itself
            await asyncio.to_thread(self._connect)
            return
        try:
            name = await asyncio.to_thread(enroll_with_claim, self.config, self._claim_token)
        except ThingwardError as e:
            self.status.error = str(e)
            self._events("enroll_failed", {"error": str(e)})
            logger.error("claim enrollment failed: %s (press the button to set the device up again)", e)
            return
        finally:
            self._claim_token = ""
        self.status.thing = name
        self._events("enrolled", {"thing": name})
        await asyncio.to_thread(self._connect)

    def _connect(self) -> None:
        if self.device is not None:
            self.device.close()
            self.device = None
        identity = self.config.state_dir / IDENTITY_DIR
        device = Device.from_dir(identity, self.config.label.device_id, host=self.config.mqtt_host,
                                 port=self.config.mqtt_port)  # fmt: skip
        try:
            device.connect(timeout=15)
        except ThingwardError as e:
            self.status.error = str(e)
            self._events("connect_failed", {"error": str(e)})
            return
        self.device = device
        info = device.publish_state(self.device_state())
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(timeout=10)
        self._events("online", {"thing": device.name})
