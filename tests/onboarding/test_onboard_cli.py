"""`thingward onboard --claim-token-file` (a claim the web page minted): the options are checked before
anything is contacted, and with a claim the CLI hands it to a real provisioning service on loopback
without asking the platform for anything (its URL here is a port where nothing listens)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from thingward.device.onboarding.label import DeviceLabel, new_label
from thingward.device.onboarding.service import DeviceInfo, ProvisioningRequest, ProvisioningService

HOST = "127.0.0.1"
PASSPHRASE = "plum-violin-89-quietly-sailing"
CLAIM = "twc_" + "k" * 43


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])  # free again once closed: connect is refused


def _onboard(tmp_path: Path, label: str, ap_port: int, *options: str) -> tuple[int, dict[str, object]]:
    (tmp_path / "wifi").write_text(PASSPHRASE + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "thingward.cli.main", "onboard", "--label", label, "--wifi-ssid", "home",
         "--wifi-passphrase-file", str(tmp_path / "wifi"), "--url", f"https://{HOST}:{_closed_port()}",
         "--ap-address", f"{HOST}:{ap_port}", "--json", *options],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"api": "twk_x", "claim": CLAIM}, "not both"),
        ({}, "one of them"),
        ({"claim": None}, "cannot read the claim token"),
        ({"claim": ""}, "is empty: it must hold the claim token"),
        ({"claim": "twk_an-api-token"}, "does not hold a claim token ('twc_...')"),
    ],
)
def test_claim_token_file_is_checked_before_anything_is_contacted(
    tmp_path: Path, files: dict[str, str | None], error: str
) -> None:
    options: list[str] = []
    for name, content in files.items():
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        options += [f"--{'api' if name == 'api' else 'claim'}-token-file", str(path)]
    status, body = _onboard(tmp_path, new_label("cam-1").code(), _closed_port(), *options)
    assert status == 1 and error in str(body["error"]), body


@pytest.fixture
def device() -> Iterator[tuple[DeviceLabel, ProvisioningService, list[ProvisioningRequest]]]:
    """A real provisioning service on loopback, in its own event loop."""
    label = new_label("cam-web")
    applied: list[ProvisioningRequest] = []

    async def on_apply(request: ProvisioningRequest) -> None:
        applied.append(request)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> ProvisioningService:
        service = ProvisioningService(DeviceInfo(label.device_id, "cam-x"), label.pop, HOST, on_apply, port=0)
        assert await service.open()
        return service

    service = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield label, service, applied
    finally:
        asyncio.run_coroutine_threadsafe(service.close_listener(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_claim_token_file_hands_the_claim_to_the_device_without_the_platform(
    tmp_path: Path, device: tuple[DeviceLabel, ProvisioningService, list[ProvisioningRequest]]
) -> None:
    label, service, applied = device
    (tmp_path / "claim").write_text(CLAIM + "\n")
    status, body = _onboard(tmp_path, label.code(), service.port, "--claim-token-file", str(tmp_path / "claim"))
    assert status == 0, body
    assert body == {"device_id": "cam-web", "model": "cam-x", "handed_over": True}
    assert [(r.ssid, r.passphrase, r.claim_token) for r in applied] == [("home", PASSPHRASE, CLAIM)]


def test_claim_token_file_with_a_wrong_label_reaches_nothing(
    tmp_path: Path, device: tuple[DeviceLabel, ProvisioningService, list[ProvisioningRequest]]
) -> None:
    _, service, applied = device
    (tmp_path / "claim").write_text(CLAIM)
    status, body = _onboard(tmp_path, new_label("cam-web").code(), service.port, "--claim-token-file",
                            str(tmp_path / "claim"))  # fmt: skip
    assert status == 1 and applied == [], body
