"""The scanner against the network-namespace home lab: it finds exactly the open ports and default logins
that exist, on the right hosts, and its open-port set equals Debian's `nmap -sT` on the same hosts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lab.netns import (
    CAMERA_TELNET_LOGIN,
    CAMERA_WEB_LOGIN,
    HUB_SSH_LOGIN,
    HomeLab,
    Lab,
    nmap_open_ports,
    remove_leftovers,
    run_thingward_scan,
)

# Ports 1-2000 cover Telnet, HTTP, SSH and MQTT and 2,000 refused ports per host; 8883 for MQTTS; a few
# IoT ports that are closed on every lab host.
PORTS = "1-2000,5683,8080,8443,8883,8884,9000"


def _open_ports(report: dict) -> dict[str, set[int]]:
    return {host["address"]: {p["port"] for p in host["ports"] if p["protocol"] == "tcp"} for host in report["hosts"]}


def _lab_hosts(home_lab: HomeLab) -> list[str]:
    return [home_lab.camera.address, home_lab.hub.address, home_lab.clean.address]


def test_open_ports_are_exactly_the_lab_services_and_agree_with_nmap(home_lab: HomeLab) -> None:
    hosts = _lab_hosts(home_lab)
    report = run_thingward_scan(home_lab.lab, f"{hosts[0]}-12", "--ports", PORTS, "--no-udp")
    ours = _open_ports(report)
    assert ours == home_lab.expected_open_ports
    assert nmap_open_ports(home_lab.lab, PORTS, *hosts) == ours
    assert report["ports_scanned"] == 2006
    assert report["credentials_checked"] is False and report["login_attempts"] == 0


def test_finds_exactly_the_default_logins_that_exist_and_no_others(home_lab: HomeLab) -> None:
    report = run_thingward_scan(
        home_lab.lab, *_lab_hosts(home_lab), "--ports", "22,23,80,554,1883,8883", "--credentials"
    )
    services = {(h["address"], p["port"]): p["service"] for h in report["hosts"] for p in h["ports"]}
    assert services == {
        (home_lab.camera.address, 23): "telnet",
        (home_lab.camera.address, 80): "http",
        (home_lab.camera.address, 1883): "mqtt",
        (home_lab.hub.address, 22): "ssh",
        (home_lab.clean.address, 8883): "mqtts",
    }
    weak = {
        (h["address"], p["port"], w["service"], w["username"], w["password"], w["anonymous"])
        for h in report["hosts"]
        for p in h["ports"]
        for w in p["weak_credentials"]
    }
    assert weak == {
        (home_lab.camera.address, 23, "telnet", *CAMERA_TELNET_LOGIN, False),
        (home_lab.camera.address, 80, "http", *CAMERA_WEB_LOGIN, False),
        (home_lab.camera.address, 1883, "mqtt", "", "", True),
        (home_lab.hub.address, 22, "ssh", *HUB_SSH_LOGIN, False),
    }
    assert report["credentials_checked"] is True
    # bounded: the clean host's broker got at most the per-service budget, and said no to all of it
    clean = next(h for h in report["hosts"] if h["address"] == home_lab.clean.address)["ports"][0]
    assert any("no default login among 20 tried" in note for note in clean["notes"])
    assert 20 <= report["login_attempts"] <= 4 * 20


def test_tls_of_the_clean_host_is_reported_as_it_is(home_lab: HomeLab) -> None:
    report = run_thingward_scan(home_lab.lab, home_lab.clean.address, "--ports", "8883", "--no-udp")
    (port,) = report["hosts"][0]["ports"]
    tls = port["tls"]
    assert tls["versions"] == ["TLSv1.2", "TLSv1.3"]  # tls_version tlsv1.2 in its mosquitto.conf
    assert tls["self_signed"] is False and tls["expired"] is False
    assert tls["issuer"].startswith("CN=thingward scanner lab CA")
    assert port["weak_credentials"] == []


def test_the_scanner_refuses_a_public_address_even_inside_the_lab(home_lab: HomeLab) -> None:
    refused = home_lab.lab.run_in_scanner(
        [*_thingward(), "scan", home_lab.camera.address, "192.0.2.1", "--ports", "23", "--json"], timeout=30
    )
    assert refused.returncode == 1
    error = json.loads(refused.stdout)["error"]
    assert "'192.0.2.1'" in error and "outside loopback and the private ranges" in error and "--allow-public" in error


def _thingward() -> list[str]:
    import sys

    return [sys.executable, "-m", "thingward.cli.main"]


def _namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def test_a_lab_is_torn_down_even_when_the_test_body_fails(home_lab: HomeLab, tmp_path: Path) -> None:
    lab = Lab(tmp_path, run_id=f"{home_lab.lab.run_id}x")
    with pytest.raises(RuntimeError, match="test body failed"), lab:
        build_home_lab_small = lab.add_host("probe", 50)
        lab.start(build_home_lab_small, ["sleep", "60"], "sleep")
        started = list(lab.processes)
        assert lab.scanner_namespace in _namespaces()
        raise RuntimeError("test body failed")
    assert not {lab.scanner_namespace, f"{lab.prefix}{lab.run_id}-probe"} & _namespaces()
    assert all(p.poll() is not None for p in started)


def test_leftovers_of_a_dead_run_are_removed(tmp_path: Path) -> None:
    dead_pid = 4_000_000  # above the kernel's pid_max: no process has it
    stale = Lab(tmp_path, run_id=str(dead_pid))
    stale.__enter__()
    try:
        assert stale.scanner_namespace in _namespaces()
        assert stale.scanner_namespace in remove_leftovers()
        assert stale.scanner_namespace not in _namespaces()
    finally:
        stale.close()
