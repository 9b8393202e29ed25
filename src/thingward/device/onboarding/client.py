"""The app's side of the provisioning protocol: find the device on its access point, prove the label,
hand over the Wi-Fi credentials and the claim, apply. Used by `thingward onboard` and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from thingward.device.onboarding.framing import FrameError, dump_message, load_message, read_frame, write_frame
from thingward.device.onboarding.label import DeviceLabel
from thingward.device.onboarding.service import FRAME_TIMEOUT, PROVISIONING_PORT
from thingward.device.onboarding.session import PROTOCOL, VERSION, ClientHandshake, HandshakeError, SecureChannel
from thingward.errors import ThingwardError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
APPLY_TIMEOUT = 60.0  # the device joins the Wi-Fi before it answers `apply`


class ProvisioningError(ThingwardError):
    """The device could not be set up over its access point; the message says what to do."""


@dataclass(frozen=True)
class DeviceAnnouncement:
    device_id: str
    model: str
    versions: tuple[int, ...]
    busy: bool = False


def parse_info(info: bytes) -> DeviceAnnouncement:
    """The info frame a provisioning service sends first (the scanner reads it too)."""
    try:
        message = load_message(info)
    except FrameError as e:
        raise ProvisioningError("the device's first frame is not the provisioning info") from e
    versions = message.get("versions")
    if message.get("protocol") != PROTOCOL or not isinstance(versions, list):
        raise ProvisioningError("this service does not speak thingward provisioning")
    numbers = tuple(v for v in versions if isinstance(v, int))
    busy = message.get("busy") is True
    return DeviceAnnouncement(str(message.get("device_id", "")), str(message.get("model", "")), numbers, busy)


class ProvisioningClient:
    """One session with one device. Use `async with`, then `set_wifi`, `set_claim`, `apply`."""

    def __init__(self, label: DeviceLabel, host: str, port: int = PROVISIONING_PORT,
                 frame_timeout: float = FRAME_TIMEOUT) -> None:  # fmt: skip
        self.label, self.host, self.port = label, host, port
        self._frame_timeout = frame_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._channel: SecureChannel | None = None
        self.announcement: DeviceAnnouncement | None = None

    async def __aenter__(self) -> ProvisioningClient:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as e:
            raise ProvisioningError(
                f"cannot reach the device's provisioning service at {self.host}:{self.port} ({e}): join the "
                "device's access point, and press its button if its onboarding window has closed"
            ) from e
        try:
            await self._handshake()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
            self._writer = None

    async def _read(self, timeout: float | None = None) -> bytes:
        if self._reader is None:
            raise ProvisioningError("not connected")
        try:
            return await read_frame(self._reader, timeout or self._frame_timeout)
        except (FrameError, OSError) as e:
            raise ProvisioningError(f"the device broke off the exchange: {e}") from e

    async def _write(self, payload: bytes) -> None:
        if self._writer is None:
            raise ProvisioningError("not connected")
        try:
            await write_frame(self._writer, payload, self._frame_timeout)
        except (FrameError, OSError) as e:
            raise ProvisioningError(f"the device broke off the exchange: {e}") from e

    async def _handshake(self) -> None:
        info = await self._read()
        self.announcement = parse_info(info)
        if self.announcement.busy:
            raise ProvisioningError("another app is setting this device up right now: try again in a minute")
        if VERSION not in self.announcement.versions:
            raise ProvisioningError(f"the device speaks protocol versions {self.announcement.versions}, not {VERSION}")
        if self.announcement.device_id != self.label.device_id:
            raise ProvisioningError(
                f"the device here is {self.announcement.device_id!r}, not {self.label.device_id!r} of the label"
            )
        handshake = ClientHandshake(self.label.pop, info)
        await self._write(dump_message(handshake.start_message()))
        keys = load_message(await self._read())
        await self._write(dump_message(handshake.confirm_message(keys)))
        answer = load_message(await self._read())
        if answer.get("type") == "refused":
            raise ProvisioningError("the device refused the label's code: check it (5 wrong codes lock the device)")
        try:
            self._channel = handshake.finish(answer)
        except HandshakeError as e:
            raise ProvisioningError(str(e)) from e

    async def call(self, command: dict[str, object], timeout: float | None = None) -> dict[str, object]:
        if self._channel is None:
            raise ProvisioningError("no session")
        await self._write(self._channel.seal(dump_message(command)))
        reply = load_message(self._channel.open(await self._read(timeout)))
        if reply.get("ok") is not True:
            raise ProvisioningError(f"the device refused {command.get('cmd')}: {reply.get('error', 'no reason')}")
        return reply

    async def set_wifi(self, ssid: str, passphrase: str) -> None:
        await self.call({"cmd": "set_wifi", "ssid": ssid, "passphrase": passphrase})

    async def set_claim(self, token: str) -> None:
        await self.call({"cmd": "set_claim", "token": token})

    async def status(self) -> dict[str, object]:
        return await self.call({"cmd": "status"})

    async def apply(self) -> dict[str, object]:
        return await self.call({"cmd": "apply"}, timeout=APPLY_TIMEOUT)
