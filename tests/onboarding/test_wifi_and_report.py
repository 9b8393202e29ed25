"""The Wi-Fi backends (the nmcli commands built, never run here; the simulated one's checks) and the
onboarding state the agent reports, as the platform parses it and the audit judges it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest

from lab.audit_snapshots import snapshot
from thingward.audit import checks
from thingward.audit.model import ReportFacts
from thingward.device.onboarding.agent import AgentConfig, OnboardingAgent
from thingward.device.onboarding.label import new_label
from thingward.device.onboarding.wifi import (
    NmcliWifiBackend,
    SimulatedAccessPoint,
    SimulatedWifiBackend,
    WifiJoinError,
)
from thingward.errors import ConfigError
from thingward.registry.device_state import parse_state_report


def test_nmcli_commands_keep_the_passphrase_off_the_command_line(tmp_path: Path) -> None:
    backend = NmcliWifiBackend(interface="wlp2s0", connection_name="tw")
    passwd = tmp_path / "psk"
    delete, add, up = backend.commands("Smith Home", passwd)
    assert delete == ["nmcli", "connection", "delete", "id", "tw"]
    assert add[:9] == ["nmcli", "connection", "add", "type", "wifi", "ifname", "wlp2s0", "con-name", "tw"]
    assert add[add.index("ssid") + 1] == "Smith Home" and add[add.index("wifi-sec.key-mgmt") + 1] == "wpa-psk"
    assert up == ["nmcli", "--wait", "30", "connection", "up", "id", "tw", "passwd-file", str(passwd)]
    assert NmcliWifiBackend.passwd_file_content("p@ss word!") == "802-11-wireless-security.psk:p@ss word!\n"
    assert not any("p@ss" in part for argv in (delete, add, up) for part in argv)


def test_nmcli_refuses_impossible_credentials_before_running_anything() -> None:
    backend = NmcliWifiBackend(nmcli="/nonexistent/nmcli")
    with pytest.raises(WifiJoinError, match="8 to 63"):
        backend.join("home", "short")
    with pytest.raises(WifiJoinError, match="1 to 32 bytes"):
        backend.join("x" * 33, "long enough passphrase")


def test_simulated_backend_checks_ssid_and_passphrase(tmp_path: Path) -> None:
    config = tmp_path / "ap.json"
    config.write_text(json.dumps({"ssid": "home", "passphrase": "right passphrase", "interface": "nonexistent0",
                                  "address": "10.232.9.2/24"}))  # fmt: skip
    access_point = SimulatedAccessPoint.load(config)
    assert "right passphrase" not in repr(access_point)
    backend = SimulatedWifiBackend(access_point)
    with pytest.raises(WifiJoinError, match="no Wi-Fi network named 'neighbours'"):
        backend.join("neighbours", "right passphrase")
    with pytest.raises(WifiJoinError, match="refused by the access point"):
        backend.join("home", "wrong passphrase")
    with pytest.raises(WifiJoinError, match="did not come up"):  # right credentials, no such interface here
        backend.join("home", "right passphrase")
    config.write_text("{}")
    with pytest.raises(ConfigError, match="not a simulated access point"):
        SimulatedAccessPoint.load(config)


def test_agent_reports_ap_mode_after_a_button_press_and_the_audit_flags_it_later(tmp_path: Path) -> None:
    async def body() -> tuple[bytes, bytes]:
        config = AgentConfig(label=new_label("cam-r"), model="cam-x", ap_host="127.0.0.1", state_dir=tmp_path,
                             platform_url="https://127.0.0.1:1", platform_ca=tmp_path / "ca.crt",
                             mqtt_host="127.0.0.1", ap_port=0)  # fmt: skip
        agent = OnboardingAgent(config, SimulatedWifiBackend(SimulatedAccessPoint("h", "p" * 8, "lo", "")))
        agent.service.online = True  # an enrolled device, online: the window opens only by the button
        await agent.button_press()
        in_ap = agent.device_state().to_payload()
        await agent.service.close_listener()
        agent._set_state("provisioned")
        return in_ap, agent.device_state().to_payload()

    in_ap, after = asyncio.run(body())
    report = parse_state_report(in_ap)
    assert report.onboarding_state == "ap" and report.onboarding_since is not None
    assert parse_state_report(after).onboarding_state == "provisioned"
    facts = ReportFacts("cam1", report.onboarding_since, "cam-x", "cam-x", "1.0.0", (), (), "ap",
                        report.onboarding_since)  # fmt: skip
    later = snapshot(now=report.onboarding_since + dt.timedelta(minutes=16), reports=(facts,))
    result = checks.onboarding_window_open(later)
    assert result.status == "fail" and "16 min" in result.findings[0].message
    soon = snapshot(now=report.onboarding_since + dt.timedelta(minutes=5), reports=(facts,))
    assert checks.onboarding_window_open(soon).status == "pass"


@pytest.mark.parametrize("minutes", ["2", "16"])
def test_agent_refuses_a_window_outside_3_to_15_minutes(tmp_path: Path, minutes: str) -> None:
    import subprocess
    import sys

    label = tmp_path / "label"
    label.write_text(new_label("cam-w").code())
    result = subprocess.run(
        [sys.executable, "-m", "thingward.cli.main", "device", "onboard-agent", "--label-file", str(label),
         "--model", "cam-x", "--ap-address", "127.0.0.1", "--state-dir", str(tmp_path / "s"), "--platform-url",
         "https://127.0.0.1:1", "--platform-ca", str(tmp_path / "ca.crt"), "--mqtt", "127.0.0.1:1",
         "--window-minutes", minutes, "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "choose 3 to 15" in json.loads(result.stdout)["error"]
    assert not (tmp_path / "s").exists()


def test_agent_needs_a_claim_when_new_and_refuses_one_when_enrolled(tmp_path: Path) -> None:
    from thingward.device.onboarding.agent import IDENTITY_DIR
    from thingward.device.onboarding.client import ProvisioningClient, ProvisioningError

    async def body() -> list[str]:
        label = new_label("cam-c")
        config = AgentConfig(label=label, model="cam-x", ap_host="127.0.0.1", state_dir=tmp_path,
                             platform_url="https://127.0.0.1:1", platform_ca=tmp_path / "ca.crt",
                             mqtt_host="127.0.0.1", ap_port=0)  # fmt: skip
        access_point = SimulatedAccessPoint("home", "right passphrase", "nonexistent0", "10.232.9.2/24")
        agent = OnboardingAgent(config, SimulatedWifiBackend(access_point))
        await agent.service.open()
        errors = []
        async with ProvisioningClient(label, "127.0.0.1", agent.service.port) as app:
            await app.set_wifi("home", "right passphrase")
            with pytest.raises(ProvisioningError) as new_without_claim:
                await app.apply()
            errors.append(str(new_without_claim.value))
            (tmp_path / IDENTITY_DIR).mkdir()
            (tmp_path / IDENTITY_DIR / "device.crt").write_text("enrolled")
            await app.set_claim("twc_someone-elses")
            with pytest.raises(ProvisioningError) as enrolled_with_claim:
                await app.apply()
            errors.append(str(enrolled_with_claim.value))
        await agent.service.close_listener()
        return errors

    new_without_claim, enrolled_with_claim = asyncio.run(body())
    assert "needs the claim token" in new_without_claim
    assert "keeps its owner" in enrolled_with_claim
