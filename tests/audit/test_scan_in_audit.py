"""A saved LAN scan joins the audit as its network part; a bad scan file is refused with where it is wrong."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thingward.audit.scanner.load import load_scan_report
from thingward.audit.scanner.model import HostResult, PortResult, ScanReport, TlsInfo, WeakCredential
from thingward.cli.main import app
from thingward.errors import InvalidInputError

STARTED = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def lab_scan() -> ScanReport:
    camera = HostResult(
        "10.9.9.2",
        (
            PortResult(23, "tcp", "telnet", "login:", weak_credentials=(WeakCredential("telnet", "root", "xc3511"),)),
            PortResult(1883, "tcp", "mqtt", weak_credentials=(WeakCredential("mqtt", "", "", anonymous=True),)),
            PortResult(
                8883,
                "tcp",
                "mqtts",
                tls=TlsInfo(("TLSv1.2", "TLSv1.3"), "CN=cam", "CN=lab", STARTED + dt.timedelta(days=90)),
            ),
        ),
    )
    return ScanReport(STARTED, 1.5, ("10.9.9.2",), 75, True, 21, (camera,))


def test_a_saved_scan_reads_back_to_the_same_report() -> None:
    report = lab_scan()
    assert load_scan_report(json.dumps(report.to_dict()).encode()) == report


@pytest.mark.parametrize(
    ("mutate", "says"),
    [
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.update(extra=True), "extra"),
        (lambda d: d["hosts"][0]["ports"][0].update(port=70000), "hosts.0.ports.0.port"),
        (lambda d: d["hosts"][0]["ports"][0].update(protocol="sctp"), "protocol"),
    ],
)
def test_a_bad_scan_file_says_where(mutate, says: str) -> None:
    document = lab_scan().to_dict()
    mutate(document)
    with pytest.raises(InvalidInputError, match="not a thingward scan report") as caught:
        load_scan_report(json.dumps(document).encode())
    assert says in str(caught.value)
    with pytest.raises(InvalidInputError, match="not a thingward scan report"):
        load_scan_report(b"nmap output, not json")


def test_audit_with_a_scan_report_has_the_network_part_without_passwords(tmp_path: Path) -> None:
    runner = CliRunner()
    data = str(tmp_path / "d")
    assert runner.invoke(app, ["init", "--data-dir", data]).exit_code == 0
    without = json.loads(runner.invoke(app, ["audit", "--data-dir", data, "--json"]).stdout)
    network = {c["id"]: c for c in without["checks"] if c["part"] == "network" and c["id"].startswith("NETWORK_")}
    assert network and all(c["status"] == "not_applicable" for c in network.values())

    scan_file = tmp_path / "scan.json"
    scan_file.write_text(json.dumps(lab_scan().to_dict()))
    out = runner.invoke(app, ["audit", "--data-dir", data, "--scan-report", str(scan_file), "--json"])
    assert out.exit_code == 0, out.stderr
    checks = {c["id"]: c for c in json.loads(out.stdout)["checks"]}
    creds = checks["NETWORK_DEFAULT_CREDENTIALS"]
    assert creds["status"] == "fail" and [f["severity"] for f in creds["findings"]] == ["critical"]
    assert checks["NETWORK_ANONYMOUS_ACCESS"]["status"] == "fail"
    assert checks["NETWORK_INSECURE_SERVICE"]["status"] == "fail"
    assert "xc3511" not in out.stdout  # the report travels (SARIF, HTML): it names the user, never the password
    gated = runner.invoke(app, ["audit", "--data-dir", data, "--scan-report", str(scan_file), "--fail-on", "critical"])
    assert gated.exit_code == 1
    missing = runner.invoke(app, ["audit", "--data-dir", data, "--scan-report", str(tmp_path / "nope.json")])
    assert missing.exit_code == 1 and "cannot read the scan report" in missing.stderr
