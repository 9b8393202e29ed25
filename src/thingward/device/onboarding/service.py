"""The provisioning service a device runs on its access-point interface while its onboarding window is
open: minimal info in clear, then the PoP-bound session (`session.py`), then four commands inside it:
`set_wifi`, `set_claim`, `apply`, `status`. One session at a time; every frame and every connection has
a deadline; the listening socket is closed (connect refused) whenever the window is not open.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from thingward.device.onboarding.framing import (
    FrameError,
    dump_message,
    load_message,
    read_frame,
    write_frame,
)
from thingward.device.onboarding.session import (
    PROTOCOL,
    SECURITY,
    VERSION,
    DeviceHandshake,
    HandshakeError,
    SecureChannel,
    SessionError,
)
from thingward.device.onboarding.wifi import WifiJoinError, check_credentials
from thingward.device.onboarding.window import OnboardingWindow, WindowState
from thingward.errors import ThingwardError

logger = logging.getLogger(__name__)

PROVISIONING_PORT = 5733
FRAME_TIMEOUT = 10.0  # seconds for each frame to arrive in full
HANDSHAKE_TIMEOUT = 15.0  # seconds from connect to the app's proof
CONNECTION_TIMEOUT = 120.0  # seconds one connection may last, handshake and commands together
MAX_CLAIM_TOKEN = 256


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class DeviceInfo:
    """What the device says before any proof: enough for the app to know it found the right device."""

    device_id: str
    model: str

    def frame(self, busy: bool = False) -> bytes:
        info: dict[str, object] = {
            "protocol": PROTOCOL,
            "versions": [VERSION],
            "security": SECURITY,
            "device_id": self.device_id,
            "model": self.model,
        }
        if busy:
            info["busy"] = True
        return dump_message(info)


@dataclass
class ProvisioningRequest:
    """What the app handed over inside the session. Secrets: never logged (see __repr__)."""

    ssid: str = ""
    passphrase: str = field(default="", repr=False)
    claim_token: str = field(default="", repr=False)

    @property
    def has_wifi(self) -> bool:
        return bool(self.ssid and self.passphrase)


ApplyHandler = Callable[[ProvisioningRequest], Awaitable[None]]


class ProvisioningService:
    """Listens on `host:port` exactly while the window is open. `on_apply` checks the request and joins
    the network (raising a ThingwardError that the app is told if it cannot); once it returns, the window
    is done and the listener closed."""

    def __init__(
        self,
        info: DeviceInfo,
        pop: bytes,
        host: str,
        on_apply: ApplyHandler,
        *,
        port: int = PROVISIONING_PORT,
        window: dt.timedelta = dt.timedelta(minutes=10),
        clock: Callable[[], dt.datetime] = utc_now,
        frame_timeout: float = FRAME_TIMEOUT,
        connection_timeout: float = CONNECTION_TIMEOUT,
    ) -> None:
        # The length is the caller's: the config's 3..15 minutes are checked by `window_from_minutes`;
        # tests give a few seconds here.
        self.info, self._pop, self.host, self.port = info, pop, host, port
        self._on_apply = on_apply
        self.window = OnboardingWindow(window)
        self._clock = clock
        self._frame_timeout, self._connection_timeout = frame_timeout, connection_timeout
        self._server: asyncio.Server | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._busy = asyncio.Lock()
        self._connections: set[asyncio.Task[None]] = set()
        self.online = False
        self.applied = asyncio.Event()
        self.closed = asyncio.Event()

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def open(self, *, button: bool = False) -> bool:
        """Open the window and the listener; True if open. Without `button`, only an offline device that
        was not locked out opens."""
        if not self.window.open(self._clock(), online=self.online, button=button):
            logger.info("onboarding window not opened (state %s, online %s)", self.window.state, self.online)
            return False
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, self.host, self.port)
            self.port = int(self._server.sockets[0].getsockname()[1])
        self.closed.clear()
        self._schedule_expiry()
        logger.info("onboarding window open on %s:%d until %s", self.host, self.port, self.window.deadline())
        return True

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        deadline = self.window.deadline()
        if deadline is not None:
            delay = max(0.0, (deadline - self._clock()).total_seconds())
            self._expiry = asyncio.get_running_loop().create_task(self._expire_after(delay))

    async def _expire_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.window.tick(self._clock())
        if self.window.state is not WindowState.OPEN:
            logger.info("onboarding window closed: its time ran out")
            await self.close_listener()

    async def close_listener(self) -> None:
        """Stop listening and end every open connection (connect refused from now on)."""
        server, self._server = self._server, None
        current = asyncio.current_task()
        if server is not None:
            server.close()  # the listening socket is closed here, at once
        for task in list(self._connections):
            if task is not current:
                task.cancel()
        if server is not None and current not in self._connections:
            # From 3.12 on this waits for the connections too: never from inside one of them.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)
        if self._expiry is not None and self._expiry is not asyncio.current_task():
            self._expiry.cancel()
        self.closed.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer = writer.get_extra_info("peername")
        try:
            async with asyncio.timeout(self._connection_timeout):
                await self._converse(reader, writer)
        except (FrameError, HandshakeError, SessionError) as e:
            logger.info("provisioning connection from %s ended: %s", peer, e)
        except TimeoutError:
            logger.info("provisioning connection from %s ended: over %g s", peer, self._connection_timeout)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _send(self, writer: asyncio.StreamWriter, message: dict[str, object]) -> None:
        await write_frame(writer, dump_message(message), self._frame_timeout)

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.window.is_open(self._clock()):
            return
        if self._busy.locked():
            # The info again, marked busy: the app says so, and a scanner still knows what listens here.
            await write_frame(writer, self.info.frame(busy=True), self._frame_timeout)
            return
        async with self._busy:
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    handshake, confirm = await self._handshake(reader, writer)
            except TimeoutError:
                raise FrameError(f"the handshake took over {HANDSHAKE_TIMEOUT:g} s") from None
            try:
                reply, channel = handshake.verify(confirm)
            except HandshakeError:
                self.window.failed_proof()
                failures = self.window.failed_proofs
                logger.warning("wrong proof of possession from %s (%d so far)", writer.get_extra_info("peername"),
                               failures)  # fmt: skip
                await self._send(writer, {"type": "refused", "error": "wrong label code"})
                if self.window.state is WindowState.LOCKED:
                    logger.warning("onboarding window locked after %d wrong proofs: press the button", failures)
                    await self.close_listener()
                raise
            await self._send(writer, reply)
            await self._session(reader, writer, channel)

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                         ) -> tuple[DeviceHandshake, dict[str, object]]:  # fmt: skip
        """Info, keys, and the app's proof: one stranger cannot hold the only session for long."""
        info = self.info.frame()
        await write_frame(writer, info, self._frame_timeout)
        handshake = DeviceHandshake(self._pop, info)
        start = load_message(await read_frame(reader, self._frame_timeout))
        await self._send(writer, handshake.respond(start))
        return handshake, load_message(await read_frame(reader, self._frame_timeout))

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       channel: SecureChannel) -> None:  # fmt: skip
        request = ProvisioningRequest()
        while True:
            command = load_message(channel.open(await read_frame(reader, self._frame_timeout)))
            reply, finished = await self._command(command, request)
            await write_frame(writer, channel.seal(dump_message(reply)), self._frame_timeout)
            if finished:
                self.window.succeeded()
                self.applied.set()
                await self.close_listener()
                return

    async def _command(
        self, command: dict[str, object], request: ProvisioningRequest
    ) -> tuple[dict[str, object], bool]:
        name = command.get("cmd")
        try:
            if name == "status":
                return self.status(request), False
            if name == "set_wifi":
                ssid, passphrase = command.get("ssid"), command.get("passphrase")
                if not isinstance(ssid, str) or not isinstance(passphrase, str):
                    raise WifiJoinError("set_wifi needs 'ssid' and 'passphrase' strings")
                check_credentials(ssid, passphrase)
                request.ssid, request.passphrase = ssid, passphrase
                return {"ok": True}, False
            if name == "set_claim":
                token = command.get("token")
                if not isinstance(token, str) or not 0 < len(token) <= MAX_CLAIM_TOKEN or not token.isprintable():
                    raise ThingwardError(f"set_claim needs a 'token' of 1 to {MAX_CLAIM_TOKEN} printable characters")
                request.claim_token = token
                return {"ok": True}, False
            if name == "apply":
                if not request.has_wifi:
                    raise ThingwardError("apply needs the Wi-Fi credentials first (set_wifi)")
                await self._on_apply(request)
                return {"ok": True, "state": "joined"}, True
        except ThingwardError as e:
            return {"ok": False, "error": str(e)}, False
        return {"ok": False, "error": f"unknown command {name!r}: use set_wifi, set_claim, apply or status"}, False

    def status(self, request: ProvisioningRequest | None = None) -> dict[str, object]:
        deadline = self.window.deadline()
        return {
            "ok": True,
            "window": self.window.state.value,
            "closes_at": deadline.isoformat() if deadline else None,
            "wifi_set": bool(request and request.ssid),
            "claim_set": bool(request and request.claim_token),
        }

    async def button_press(self) -> bool:
        """The local button: re-opens the window even after a lock-out or while online."""
        logger.info("button pressed: re-opening the onboarding window")
        return await self.open(button=True)
