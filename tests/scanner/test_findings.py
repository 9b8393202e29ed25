"""The bridge to the audit: scan results become network-part check results with the right severities,
references and resources, and never carry a password."""

from __future__ import annotations

import datetime as dt
import json

from thingward.audit.report import build_report
from thingward.audit.scanner.findings import NETWORK_CHECKS, scan_to_check_results
from thingward.audit.scanner.model import HostResult, PortResult, ScanReport, TlsInfo, WeakCredential

NOW = dt.datetime(2026, 11, 24, tzinfo=dt.UTC)


def _report(hosts: tuple[HostResult, ...], credentials_checked: bool = True) -> ScanReport:
    return ScanReport(NOW, 1.0, tuple(h.address for h in hosts), 100, credentials_checked, 12, hosts)


CAMERA = HostResult(
    "10.0.0.10",
    (
        PortResult(23, "tcp", "telnet", "login:", weak_credentials=(WeakCredential("telnet", "root", "xc3511"),)),
        PortResult(1883, "tcp", "mqtt", weak_credentials=(WeakCredential("mqtt", "", "", anonymous=True),)),
        PortResult(
            8443,
            "tcp",
            "https",
            tls=TlsInfo(("TLSv1", "TLSv1.2"), "CN=cam", "CN=cam", NOW - dt.timedelta(days=1), True, True),
        ),
        PortResult(1900, "udp", "ssdp", "Linux UPnP/1.0"),
    ),
)
CLEAN = HostResult("10.0.0.12", (PortResult(8883, "tcp", "mqtts", tls=TlsInfo(("TLSv1.2", "TLSv1.3"))),))


def _by_id(report: ScanReport) -> dict[str, dict]:
    return {r.info.id: r.to_dict() for r in scan_to_check_results(report)}


def test_a_weak_camera_fails_the_network_checks_with_the_right_severities() -> None:
    results = _by_id(_report((CAMERA, CLEAN)))
    assert set(results) == {info.id for info in NETWORK_CHECKS}
    assert all(r["part"] == "network" for r in results.values())

    creds = results["NETWORK_DEFAULT_CREDENTIALS"]
    assert creds["status"] == "fail" and creds["severity"] == "critical"
    assert [f["resource"] for f in creds["findings"]] == ["10.0.0.10:23/tcp (telnet)"]
    assert creds["references"]["etsi_en_303_645"].startswith("5.1")
    assert creds["references"]["owasp_iot_top10"].startswith("I1")

    anonymous = results["NETWORK_ANONYMOUS_ACCESS"]
    assert [f["resource"] for f in anonymous["findings"]] == ["10.0.0.10:1883/tcp (mqtt)"]
    assert results["NETWORK_INSECURE_SERVICE"]["findings"][0]["resource"] == "10.0.0.10:23/tcp (telnet)"
    assert results["NETWORK_INSECURE_SERVICE"]["references"]["etsi_en_303_645"].startswith("5.6")

    plaintext = {f["resource"]: f["severity"] for f in results["NETWORK_PLAINTEXT_PROTOCOL"]["findings"]}
    assert plaintext == {"10.0.0.10:23/tcp (telnet)": "high", "10.0.0.10:1883/tcp (mqtt)": "high"}
    assert results["NETWORK_PLAINTEXT_PROTOCOL"]["references"]["owasp_iot_top10"].startswith("I7")

    tls = results["NETWORK_WEAK_TLS"]
    assert {f["resource"] for f in tls["findings"]} == {"10.0.0.10:8443/tcp (https)"}  # not the clean MQTTS
    assert sorted(f["severity"] for f in tls["findings"]) == ["high", "medium", "medium"]
    assert tls["references"]["etsi_en_303_645"].startswith("5.5")

    ports = {f["resource"]: f["message"] for f in results["NETWORK_OPEN_PORTS"]["findings"]}
    assert ports["10.0.0.12"] == "open: 8883/tcp mqtts"
    assert "1900/udp ssdp" in ports["10.0.0.10"]


def test_no_password_reaches_the_audit_report() -> None:
    results = scan_to_check_results(_report((CAMERA,)))
    text = json.dumps(build_report(results, NOW))
    assert "xc3511" not in text
    assert "'root'" in text  # the user is named, so the owner knows which account to fix


def test_a_clean_network_passes_and_unchecked_logins_are_not_applicable() -> None:
    results = _by_id(_report((CLEAN,), credentials_checked=False))
    assert results["NETWORK_DEFAULT_CREDENTIALS"]["status"] == "not_applicable"
    assert "--credentials" in results["NETWORK_DEFAULT_CREDENTIALS"]["note"]
    for check in ("NETWORK_ANONYMOUS_ACCESS", "NETWORK_INSECURE_SERVICE", "NETWORK_PLAINTEXT_PROTOCOL"):
        assert results[check]["status"] == "pass", check
    assert results["NETWORK_WEAK_TLS"]["status"] == "pass"
    assert results["NETWORK_OPEN_PORTS"]["status"] == "fail"  # the attack surface is listed, as low
    assert results["NETWORK_OPEN_PORTS"]["severity"] == "low"
