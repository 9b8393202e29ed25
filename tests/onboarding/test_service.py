"""The provisioning service on a real socket (loopback): the window, the lock-out, the deadlines, and the
commands, tried as an app and as an attacker would. Port closed means connect refused, checked for real."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from thingward.device.onboarding.client import ProvisioningClient, ProvisioningError
from thingward.device.onboarding.label import DeviceLabel, new_label
from thingward.device.onboarding.service import DeviceInfo, ProvisioningRequest, ProvisioningService
from thingward.device.onboarding.wifi import WifiJoinError
from thingward.device.onboarding.window import MAX_FAILED_PROOFS, WindowState, window_from_minutes
from thingward.errors import ConfigError

HOST = "127.0.0.1"
PASSPHRASE = "correct horse battery staple"


def _refused(port: int) -> bool:
    """True if nothing listens on the port: the kernel answers the SYN with a reset."""
    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect((HOST, port))
        except ConnectionRefusedError:
            return True
        return False


def _service(label: DeviceLabel, window: dt.timedelta = dt.timedelta(minutes=10), **kwargs: object
             ) -> tuple[ProvisioningService, list[ProvisioningRequest]]:  # fmt: skip
    applied: list[ProvisioningRequest] = []

    async def on_apply(request: ProvisioningRequest) -> None:
        if request.passphrase != PASSPHRASE:
            raise WifiJoinError(f"the passphrase for {request.ssid!r} was refused by the access point")
        applied.append(request)

    service = ProvisioningService(DeviceInfo(label.device_id, "cam-x"), label.pop, HOST, on_apply, port=0,
                                  window=window, **kwargs)  # type: ignore[arg-type]  # fmt: skip
    return service, applied


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def test_app_with_the_label_sets_the_device_up_and_the_window_closes() -> None:
    async def body() -> None:
        label = new_label("cam-1")
        service, applied = _service(label)
        assert await service.open()
        async with ProvisioningClient(label, HOST, service.port) as app:
            assert app.announcement is not None and app.announcement.model == "cam-x"
            assert (await app.status())["window"] == "open"
            await app.set_wifi("home", PASSPHRASE)
            await app.set_claim("twc_claim")
            assert (await app.apply())["state"] == "joined"
        assert [(r.ssid, r.passphrase, r.claim_token) for r in applied] == [("home", PASSPHRASE, "twc_claim")]
        assert service.window.state is WindowState.DONE
        assert await asyncio.to_thread(_refused, service.port)
        # success while online: the window does not open again by itself
        service.online = True
        assert not await service.open()

    run(body)


def test_wrong_pop_refused_and_five_failures_close_the_port() -> None:
    async def body() -> None:
        label = new_label("cam-1")
        service, applied = _service(label)
        await service.open()
        port = service.port
        wrong = DeviceLabel("cam-1", new_label("cam-1").pop)
        for attempt in range(MAX_FAILED_PROOFS):
            assert service.listening, f"closed before attempt {attempt + 1}"
            with pytest.raises(ProvisioningError, match="refused the label's code"):
                async with ProvisioningClient(wrong, HOST, port):
                    pass
        assert service.window.state is WindowState.LOCKED
        assert await asyncio.to_thread(_refused, port)
        # the right label does not help now, nor does waiting: only the button re-opens
        assert not await service.open()
        with pytest.raises(ProvisioningError, match="cannot reach"):
            async with ProvisioningClient(label, HOST, port):
                pass
        assert await service.button_press()
        async with ProvisioningClient(label, HOST, service.port) as app:
            await app.set_wifi("home", PASSPHRASE)
            await app.set_claim("twc_claim")
            await app.apply()
        assert len(applied) == 1

    run(body)


def test_window_closes_after_its_time_and_the_port_is_really_closed() -> None:
    async def body() -> None:
        label = new_label("cam-1")
        service, _ = _service(label, window=dt.timedelta(seconds=1.5))
        await service.open()
        port = service.port
        async with ProvisioningClient(label, HOST, port) as app:  # a session in progress is cut off too
            await app.status()
            await asyncio.wait_for(service.closed.wait(), 10)
            with pytest.raises(ProvisioningError):
                await app.status()
        assert service.window.state is WindowState.EXPIRED
        assert await asyncio.to_thread(_refused, port)
        assert not await service.open()  # an expired window never re-opens by itself, even offline
        assert not service.listening

    run(body)


def test_expired_window_reopens_only_by_the_button_even_online() -> None:
    async def body() -> None:
        label = new_label("cam-1")
        service, _ = _service(label, window=dt.timedelta(seconds=0.5))
        await service.open()
        await asyncio.wait_for(service.closed.wait(), 10)
        assert not service.listening
        service.online = True
        assert not await service.open()
        assert await service.button_press()
        assert service.listening
        await service.close_listener()

    run(body)


@pytest.mark.parametrize("minutes", [0, 2, 2.9, 15.1, 60])
def test_window_length_outside_3_to_15_minutes_refused(minutes: float) -> None:
    with pytest.raises(ConfigError, match="3 to 15"):
        window_from_minutes(minutes)


def test_window_length_bounds_accepted() -> None:
    assert window_from_minutes(3) == dt.timedelta(minutes=3)
    assert window_from_minutes(15) == dt.timedelta(minutes=15)


def test_wrong_wifi_passphrase_reported_and_window_stays_open() -> None:
    async def body() -> None:
        label = new_label("cam-1")
        service, applied = _service(label)
        await service.open()
        async with ProvisioningClient(label, HOST, service.port) as app:
            with pytest.raises(ProvisioningError, match="apply needs"):
                await app.apply()
            with pytest.raises(ProvisioningError, match="8 to 63"):
                await app.set_wifi("home", "short")
            await app.set_wifi("home", "a wrong passphrase")
            await app.set_claim("twc_claim")
            with pytest.raises(ProvisioningError, match="refused by the access point"):
                await app.apply()
            await app.set_wifi("home", PASSPHRASE)
            await app.apply()
        assert len(applied) == 1

    run(body)


def _raw_connect(port: int) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=5)
    return s


def _read_frame(s: socket.socket) -> bytes:
    header = s.recv(4, socket.MSG_WAITALL)
    (length,) = struct.unpack(">I", header)
    return s.recv(length, socket.MSG_WAITALL)


def test_oversized_frame_and_silent_peer_are_cut_off() -> None:
    async def body() -> None:
        label = new_label("cam-1")
        service, _ = _service(label, frame_timeout=0.5)
        await service.open()

        def attack() -> tuple[bytes, bytes]:
            with _raw_connect(service.port) as big:
                info = _read_frame(big)
                big.sendall(struct.pack(">I", 10_000_000))
                cut_big = big.recv(1)
            with _raw_connect(service.port) as silent:
                _read_frame(silent)
                cut_silent = silent.recv(1)  # nothing sent: the device hangs up after the frame deadline
            return info, cut_big + cut_silent

        info, after = await asyncio.to_thread(attack)
        assert b'"device_id":"cam-1"' in info and b'"model":"cam-x"' in info
        assert label.code().split(":")[2].encode() not in info
        assert after == b""  # both connections closed by the device
        assert service.window.failed_proofs == 0 and service.listening
        await service.close_listener()

    run(body)


def test_second_app_at_once_is_told_busy() -> None:
    async def body() -> None:
        label = new_label("cam-1")
        service, _ = _service(label)
        await service.open()
        async with ProvisioningClient(label, HOST, service.port) as first:
            with pytest.raises(ProvisioningError, match="another app"):
                async with ProvisioningClient(label, HOST, service.port):
                    pass
            assert (await first.status())["window"] == "open"
        await service.close_listener()

    run(body)
