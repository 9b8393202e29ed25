"""The LAN scanner names an open onboarding window from the info frame alone, and looking costs the
device nothing (no failed proof counted)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys

from thingward.device.onboarding.label import new_label
from thingward.device.onboarding.service import DeviceInfo, ProvisioningRequest, ProvisioningService

SCAN = [sys.executable, "-m", "thingward.cli.main", "scan", "127.0.0.1"]


async def _scan(port: int, *extra: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *SCAN, "--ports", str(port), *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode in (0, 1), err.decode()
    return out.decode()


def test_scan_recognises_an_open_provisioning_service() -> None:
    async def body() -> None:
        label = new_label("cam-scan")

        async def never(_request: ProvisioningRequest) -> None:
            raise AssertionError("the scanner must not apply anything")

        service = ProvisioningService(DeviceInfo("cam-scan", "cam-x"), label.pop, "127.0.0.1", never, port=0,
                                      window=dt.timedelta(minutes=3))  # fmt: skip
        await service.open()
        try:
            report = json.loads((await _scan(service.port, "--json")).strip().splitlines()[-1])
            human = await _scan(service.port)
        finally:
            await service.close_listener()
        (port,) = report["hosts"][0]["ports"]
        assert port["service"] == "thingward-provisioning"
        assert "cam-scan" in port["banner"] and "cam-x" in port["banner"]
        assert any("onboarding window is open" in note for note in port["notes"])
        assert "thingward-provisioning" in human
        assert f"{service.port}/tcp thingward-provisioning" in human  # the open-ports finding names it
        assert service.window.failed_proofs == 0 and service.window.state.value == "open"

    asyncio.run(body())
